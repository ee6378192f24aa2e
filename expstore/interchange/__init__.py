"""Import and export of other tools' layouts, one registered format per module (base.Format):
D4RL HDF5 files (d4rl.py), Minari datasets (minari.py), Parquet files (parquet.py), LeRobot datasets (lerobot.py)."""

from __future__ import annotations

from .base import (
    FORMATS,
    ExportOption,
    ExportResult,
    Format,
    detect_format,
    directory_format,
    format_for_destination,
    format_names,
    get_format,
    register_format,
)
from .d4rl import D4RLFormat, export_d4rl, import_d4rl
from .lerobot import LeRobotFormat, export_lerobot, import_lerobot
from .minari import MinariFormat, export_minari, import_minari
from .parquet import ParquetFormat, export_parquet, import_parquet

register_format("d4rl", D4RLFormat())
register_format("minari", MinariFormat())
register_format("parquet", ParquetFormat())
register_format("lerobot", LeRobotFormat())

__all__ = [
    "FORMATS",
    "ExportOption",
    "ExportResult",
    "Format",
    "detect_format",
    "directory_format",
    "export_d4rl",
    "export_lerobot",
    "export_minari",
    "export_parquet",
    "format_for_destination",
    "format_names",
    "get_format",
    "import_d4rl",
    "import_lerobot",
    "import_minari",
    "import_parquet",
    "register_format",
]
