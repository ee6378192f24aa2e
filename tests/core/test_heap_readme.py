"""The README's heap-field examples, run as written."""

from __future__ import annotations

import numpy as np

from tests.test_quickstart import readme_block


def test_readme_heap_fields_and_plain_h5py_snippet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_block("heap-fields"), "README heap fields", "exec"), namespace)  # the README's code
    assert namespace["batch"]["obs"].shape == (32, 84, 84) and namespace["batch"]["next_obs"].dtype == np.uint8
    padded, listed = namespace["padded"], namespace["as_lists"]
    assert padded["response_ids"].shape[1] == padded["response_ids_length"].max()
    assert [len(row) for row in listed["response_ids"]] == list(listed["response_ids_length"])
    exec(compile(readme_block("heap-plain-h5py"), "README heap plain h5py", "exec"), namespace)
    assert namespace["codec"] == "zstd:3" and namespace["length"] == 1
    assert (namespace["frame"] == 0).all() and namespace["frame"].shape == (84, 84)
    exec(compile(readme_block("heap-plain-zarr"), "README heap plain zarr", "exec"), namespace)
    assert namespace["length"] == 300 and namespace["dtype"] == "int32"
    np.testing.assert_array_equal(namespace["tokens"], np.arange(300, dtype=np.int32))
