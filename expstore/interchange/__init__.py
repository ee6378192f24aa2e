"""Import and export of the common offline-RL layouts: D4RL HDF5 files and Minari datasets."""

from __future__ import annotations

from .common import detect_format
from .d4rl import export_d4rl, import_d4rl
from .minari import export_minari, import_minari

__all__ = ["detect_format", "export_d4rl", "export_minari", "import_d4rl", "import_minari"]
