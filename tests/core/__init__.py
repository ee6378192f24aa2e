"""Tests of the core store (expstore/core, expstore/backends)."""
