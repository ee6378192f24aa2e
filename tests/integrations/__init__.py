"""Tests of expstore/integrations."""
