"""Maintenance: verify and repair, convert and merge, archives, the bookkeeping carried into
copies.
"""
