"""The import paths of the flat layout keep working: each re-export module gives the objects of
the module that now holds the code, and ``python -m expstore.train`` still runs the trainer."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import expstore

MOVED = {
    "expstore.sb3": "expstore.integrations.sb3_buffers",
    "expstore.torchrl": "expstore.integrations.torchrl_storage",
    "expstore.sharding": "expstore.integrations.sharding",
    "expstore.torch_feed": "expstore.integrations.torch_feed",
    "expstore.convert": "expstore.maintenance.convert",
    "expstore.recorder": "expstore.integrations.recorder",
    "expstore.spaces": "expstore.integrations.spaces",
    "expstore.verify": "expstore.maintenance.verify",
    "expstore.train": "expstore.training.main",
}


def _defined_names(module) -> list[str]:
    names = getattr(module, "__all__", None) or [
        name for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__]
    return [name for name in names if name in vars(module)]  # lazily loaded names: not imported here


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_import_path_gives_the_moved_objects(old, new):
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    names = _defined_names(new_module)
    assert names, f"{new} defines no public names"
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name), (old, name)


def test_importing_expstore_verify_keeps_the_function():
    importlib.import_module("expstore.verify")
    assert expstore.verify.__name__ == "verify" and callable(expstore.verify)
    from expstore import verify

    assert verify is expstore.verify


def test_python_m_expstore_train_runs_the_trainer_cli():
    done = subprocess.run([sys.executable, "-m", "expstore.train", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--offline" in done.stdout and "--total-steps" in done.stdout
