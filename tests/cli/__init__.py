"""Tests of the expstore command line (expstore/cli)."""
