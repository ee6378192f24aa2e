"""Minari datasets in a test's own folder."""

from __future__ import annotations

import pytest


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    """The folder Minari keeps its datasets in (``MINARI_DATASETS_PATH``), under the test's
    ``tmp_path``, so an export by dataset id never touches the user's datasets."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root
