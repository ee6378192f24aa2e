"""Inspection: whole pools read in bounded slices; summaries, age statistics, duplicates, plots.
"""
