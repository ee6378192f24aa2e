"""Tests of crashes, concurrent processes, damaged files and fuzzing."""
