"""Tests of expstore/inspect."""
