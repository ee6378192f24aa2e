"""``python -m expstore.train --offline-data POOL``: SAC samples every batch half from a prior
pool (opened read-only, never written) and half from its own; bad values are one-line errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gymnasium")

import expstore  # noqa: E402 (after the importorskip)
from expstore.training import online  # noqa: E402 (after the importorskip)
from expstore.training.main import main  # noqa: E402 (after the importorskip)
from tests.training.test_train import TINY, online_args, snapshot, the_error  # noqa: E402 (after the importorskip)


@pytest.fixture(scope="module")
def prior_pool(tmp_path_factory) -> str:
    """The pool of an earlier short run, the prior data of the runs below."""
    run_dir = tmp_path_factory.mktemp("prior")
    assert main(online_args(run_dir, "hdf5", 300)) == 0
    return os.path.join(run_dir, "pool.h5")


def test_a_run_mixes_the_prior_pool_into_every_batch_and_never_writes_it(tmp_path, prior_pool, monkeypatch):
    before = snapshot(os.path.dirname(prior_pool))
    shares = []
    real_mix = online.mix

    def counting_mix(weights, **kwargs):
        mixed = real_mix(weights, **kwargs)
        sample = mixed.sample

        def sample_and_count(*args, **options):
            batch = sample(*args, **options)
            shares.append(np.bincount(batch["source"], minlength=2).tolist())
            return batch

        mixed.sample = sample_and_count  # type: ignore[method-assign]
        return mixed

    monkeypatch.setattr(online, "mix", counting_mix)
    run_dir = tmp_path / "mixed"
    args = online_args(run_dir, "zarr", 160) + ["--offline-data", prior_pool, "--offline-ratio", "0.25"]
    assert main(args) == 0
    assert shares and all(share == [8, 24] for share in shares)  # batch 32: a quarter from the prior pool
    config = (run_dir / "config.json").read_text()
    assert os.path.abspath(prior_pool) in config and '"offline_ratio": 0.25' in config
    assert snapshot(os.path.dirname(prior_pool)) == before
    assert main(online_args(run_dir, "zarr", 200)) == 0  # a resume reopens the prior pool from the record


def test_bad_offline_data_options_are_one_line_errors(tmp_path, prior_pool, caplog):
    other = str(tmp_path / "other.h5")
    with expstore.open(other, "w", capacity=10, schema={"obs": ((5,), "float32"), "action": ((1,), "float32"),
                                                        "reward": ((), "float32"), "next_obs": ((5,), "float32"),
                                                        "terminated": ((), "bool")}) as pool:
        pool.extend({"obs": np.zeros((3, 5), np.float32), "action": np.zeros((3, 1), np.float32),
                     "reward": np.zeros(3, np.float32), "next_obs": np.zeros((3, 5), np.float32),
                     "terminated": np.zeros(3, bool)})
    cases = [
        (["--offline-ratio", "0.5"], "--offline-ratio needs --offline-data"),
        (["--offline-data", prior_pool, "--offline-ratio", "1.5"], "must lie in [0, 1]"),
        (["--offline-data", other], "has other shapes: obs (5,)"),
        (["--offline-data", str(tmp_path / "missing.h5")], "missing.h5"),
    ]
    for extra, message in cases:
        caplog.clear()
        run_dir = tmp_path / f"run{len(extra)}{message[:3]}"
        assert main(["--run-dir", str(run_dir), "--total-steps", "50", *TINY, *extra]) == 1
        assert message in the_error(caplog)
    caplog.clear()
    assert main(["--offline", "--pool", prior_pool, "--offline-data", prior_pool, "--run-dir",
                 str(tmp_path / "td3")]) == 1
    assert "only read by online runs" in the_error(caplog)
