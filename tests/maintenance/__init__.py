"""Tests of expstore/maintenance."""
