"""Sampling: strategies that draw step ids from a read-only view of the committed window.

base.py holds the ``Sampler`` protocol and the ``WindowView``; one strategy per file (uniform.py,
prioritized.py over the sum tree of priorities.py, recency.py, age_window.py, and composed.py:
prioritized with recency); draws.py the pure chain arithmetic of n-step returns, sequences and
epochs. Nothing here touches files.
"""
