"""``expstore.verify``, kept as an import path: the code lives in expstore/maintenance/verify.py."""

from .maintenance import verify as _moved
from .maintenance.verify import RepairReport, VerifyReport, leftover_temps, repair, verify, verify_store

__all__ = ["RepairReport", "VerifyReport", "leftover_temps", "repair", "verify", "verify_store"]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.maintenance.verify.
    return getattr(_moved, name)
