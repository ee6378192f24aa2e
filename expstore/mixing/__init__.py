"""Sampling across pools and relabelling samples: the layer right above the core.

mix.py draws one batch from several pools at fixed or scheduled ratios (offline-to-online
training); her.py relabels sampled goals in hindsight. Both take open Stores and use only
their public surface; neither writes to a pool.
"""
