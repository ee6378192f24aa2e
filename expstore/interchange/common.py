"""What the interchange formats share: field names, the required fields, the refusal of ragged
fields, the saved schema."""

from __future__ import annotations

import json

from ..errors import SchemaError
from ..schema import Field, Schema, check_field_name

# Pool field -> name in the D4RL layout. Pools recorded by expstore use the left names.
D4RL_NAMES = {"obs": "observations", "action": "actions", "reward": "rewards",
              "next_obs": "next_observations", "terminated": "terminals", "truncated": "timeouts"}
REQUIRED = ("obs", "action", "reward", "terminated", "truncated")


def check_required(schema: Schema, path: str, what: str, required=REQUIRED) -> None:
    missing = [name for name in required if name not in schema]
    if missing:
        raise SchemaError(f"{path} lacks the fields {missing} that {what} needs (it stores {list(schema)}); "
                          "export a pool with obs, action, reward, terminated and truncated fields")


def check_fixed(schema, path: str, what: str, why: str = "") -> None:
    """Refuse ragged fields (rows of varying length) for a format of fixed-size columns; ``why``
    says what in the format needs the fixed size."""
    ragged = [name for name, field in schema.items() if getattr(field, "ragged", False)]
    if ragged:
        reason = f" ({why})" if why else ""
        raise SchemaError(f"{path} has ragged fields {ragged}; {what} holds fixed-size rows only{reason}, so export "
                          "a pool without them (expstore convert can copy the other fields), or export to Parquet, "
                          "which keeps them as list columns")


def saved_json(schema: Schema, attrs: dict) -> str:
    return json.dumps({"schema": schema.to_json(), "attrs": attrs})


def restore(columns: dict[str, Field], saved: str | bytes | dict | None) -> tuple[Schema, dict]:
    """The pool schema for imported ``columns`` (name -> Field), in the saved order if any."""
    if isinstance(saved, (str, bytes)):
        saved = json.loads(saved)
    if not isinstance(saved, dict) or not saved:
        return Schema(columns), {}
    schema = Schema.from_json(saved["schema"])
    if set(schema) != set(columns):
        return Schema(columns), dict(saved.get("attrs", {}))
    return schema, dict(saved.get("attrs", {}))


def field_name(name: str) -> str | None:
    """``name`` as a pool field name, or None when it cannot be one."""
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name).lstrip("_")
    try:
        return check_field_name(clean)
    except SchemaError:
        return None
