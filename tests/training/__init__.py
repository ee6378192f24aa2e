"""Tests of expstore/training."""
