"""Turn user values (numpy arrays, Python scalars, CPU torch tensors) into field rows.

A value is cast to the field's dtype only where no information is lost for the values at
hand: float64 rewards fit a float32 field unless they overflow, an int64 action fits an
int32 field while it is in range, 1.0 fits an integer field but 1.5 and NaN do not. Anything
else fails with a message that names the field and says how to fix the batch.
"""

from __future__ import annotations

import numpy as np

from ..errors import SchemaError
from ..schema import Field

_NUMERIC_KINDS = "biuf"


def to_numpy(name: str, value: object) -> np.ndarray:
    """The value as a numpy array, without a copy where possible."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        return _torch_to_numpy(name, value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise SchemaError(f"field {name!r}: cannot read {type(value).__name__} as an array ({exc})") from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise SchemaError(
            f"field {name!r}: got {type(value).__name__} of dtype {arr.dtype}; "
            "expstore stores numbers only (bool, int, uint, float)"
        )
    return arr


def _torch_to_numpy(name: str, tensor) -> np.ndarray:
    device = getattr(tensor, "device", None)
    if device is not None and device.type != "cpu":
        raise SchemaError(f"field {name!r}: tensor is on {device}; move it with .cpu() before appending")
    try:
        return tensor.detach().numpy()
    except (TypeError, RuntimeError) as exc:
        raise SchemaError(f"field {name!r}: cannot read the tensor as a numpy array ({exc})") from None


def as_rows(name: str, field: Field, value: object, n_rows: int | None) -> np.ndarray:
    """Validate and cast one field of a batch (``n_rows`` rows) or one row (``None``)."""
    arr = to_numpy(name, value)
    expected = field.shape if n_rows is None else (n_rows, *field.shape)
    if arr.shape != expected:
        what = "a row" if n_rows is None else f"a batch of {n_rows} rows"
        raise SchemaError(
            f"field {name!r} has shape {arr.shape}, the store expects {expected} for {what}; "
            "reshape the values or create a new store with another schema"
        )
    return cast_to(name, arr, field.dtype)


def cast_to(name: str, arr: np.ndarray, dst: np.dtype) -> np.ndarray:
    """``arr`` as ``dst``, or SchemaError when the cast would change a value."""
    src = arr.dtype
    if src == dst:
        return arr
    if src.kind not in _NUMERIC_KINDS:
        raise SchemaError(f"field {name!r}: dtype {src} cannot be stored as {dst}")
    if np.can_cast(src, dst, "safe"):
        return arr.astype(dst)
    if dst.kind == "b":
        return _to_bool(name, arr, dst)
    if dst.kind in "iu":
        return _to_integer(name, arr, dst)
    return _to_float(name, arr, dst)


def _to_bool(name: str, arr: np.ndarray, dst: np.dtype) -> np.ndarray:
    # No values at all (np.asarray([]) is float64) hold nothing but booleans.
    if arr.size == 0 or (arr.dtype.kind in "iu" and np.all((arr == 0) | (arr == 1))):
        return arr.astype(dst)
    raise SchemaError(
        f"field {name!r} is bool but got {arr.dtype} values other than 0 and 1; "
        "pass booleans (for example `values > 0`)"
    )


def _to_integer(name: str, arr: np.ndarray, dst: np.dtype) -> np.ndarray:
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise SchemaError(f"field {name!r} is {dst} but the values hold NaN; integers cannot be NaN: "
                              "replace the NaN (np.nan_to_num) or store the field as a float")
        if not np.isfinite(arr).all() or (arr != np.trunc(arr)).any():
            raise SchemaError(
                f"field {name!r} is {dst} but got {arr.dtype} values that are not whole numbers; "
                "round them first or store the field as a float"
            )
    _check_range(name, arr, dst)
    return arr.astype(dst)


def _check_range(name: str, arr: np.ndarray, dst: np.dtype) -> None:
    if arr.size == 0:
        return
    info = np.iinfo(dst)
    low, high = arr.min(), arr.max()
    if low < info.min or high > info.max:
        raise SchemaError(
            f"field {name!r} is {dst} (range {info.min}..{info.max}) but the values span "
            f"{low}..{high}; widen the field's dtype or clip the values"
        )


def _to_float(name: str, arr: np.ndarray, dst: np.dtype) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dst)
    if arr.dtype.kind == "f":
        if (np.isinf(out) & np.isfinite(arr)).any():
            raise SchemaError(
                f"field {name!r} is {dst} but some {arr.dtype} values overflow it; "
                "use a wider float dtype for the field"
            )
        return out
    if arr.dtype.kind in "iu" and not np.array_equal(out.astype(arr.dtype), arr):
        raise SchemaError(
            f"field {name!r} is {dst} but some {arr.dtype} values cannot be represented exactly; "
            "use a wider float dtype for the field"
        )
    return out
