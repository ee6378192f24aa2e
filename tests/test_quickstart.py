"""The README quickstart, run as written (both backends)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text()
    match = re.search(r"<!-- quickstart -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its quickstart block (marked with <!-- quickstart -->)"
    return match.group(1)


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(quickstart_code(), "README quickstart", "exec"), namespace)
    assert (tmp_path / "runs").exists()
