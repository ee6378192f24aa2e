"""Image fields in the row tables and JSON of ``head``/``tail``/``show``/``sample``: a frame is
shown as its layout, shape and a summary of its pixels, never as thousands of numbers."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..schema import Schema


def image_layouts(schema: Schema | None) -> dict[str, str]:
    """Field name -> image layout ("HW", "HWC", "CHW") of the schema's image fields."""
    if schema is None:
        return {}
    return {name: field.image_layout for name, field in schema.items() if field.image_layout is not None}


def summary(value: np.ndarray) -> dict:
    """The facts one frame is shown by."""
    value = np.asarray(value)
    return {"shape": list(value.shape), "dtype": str(value.dtype), "mean": round(float(value.mean()), 2),
            "min": value.min().item(), "max": value.max().item()}


def image_text(value: np.ndarray, layout: str) -> str:
    facts = summary(value)
    shape = "x".join(map(str, facts["shape"]))
    return f"<image {layout} {shape} mean {facts['mean']:.1f} min {facts['min']} max {facts['max']}>"


def summarised(batch: Mapping[str, np.ndarray], schema: Schema | None, as_json: bool = False) -> dict:
    """``batch`` with each image column replaced by one summary per row (text, or dicts for JSON)."""
    out = dict(batch)
    for name, layout in image_layouts(schema).items():
        if name in out:
            rows = [summary(frame) if as_json else image_text(frame, layout) for frame in out[name]]
            column = np.empty(len(rows), dtype=object)
            column[:] = rows
            out[name] = column
    return out
