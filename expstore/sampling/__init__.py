"""Sampling: pure functions of integers and arrays that draw step ids; the priority tree; recency
weights.
"""
