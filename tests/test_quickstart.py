"""The README quickstart, run as written (both backends)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md lost its code block marked with <!-- {marker} -->"
    return match.group(1)


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_block("quickstart"), "README quickstart", "exec"), namespace)
    assert (tmp_path / "runs").exists()


def test_readme_plain_h5py_recipe_finds_the_committed_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("quickstart"), "README quickstart", "exec"), {})
    namespace: dict = {}
    exec(compile(readme_block("plain-h5py"), "README plain h5py", "exec"), namespace)
    assert namespace["head"] - namespace["tail"] == 1_500
    assert len(namespace["rewards"]) == 1_500
