"""Tests of expstore/sampling and the sample() front."""
