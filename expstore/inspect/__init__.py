"""Inspection: whole pools read in bounded slices; summaries, age statistics, duplicates, plots,
episode videos (video.py, frames from frames.py) and the HTML report (report.py).
"""
