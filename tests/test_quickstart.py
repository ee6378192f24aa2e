"""The README quickstart, run as written (both backends)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README.md lost its code block marked with <!-- {marker} -->"
    return match.group(1)


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_block("quickstart"), "README quickstart", "exec"), namespace)  # noqa: S102 - the README's own code, run as written
    assert (tmp_path / "runs").exists()


def test_readme_plain_h5py_recipe_finds_the_committed_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("quickstart"), "README quickstart", "exec"), {})  # noqa: S102 - the README's own code, run as written
    namespace: dict = {}
    exec(compile(readme_block("plain-h5py"), "README plain h5py", "exec"), namespace)  # noqa: S102 - the README's own code, run as written
    assert namespace["head"] - namespace["tail"] == 1_500
    assert len(namespace["rewards"]) == 1_500


# A console script as pip's generated wrapper runs it: load the entry point, call it with argv.
_SCRIPT_LAUNCHER = """
import sys
from importlib.metadata import EntryPoint
name, target = sys.argv[1], sys.argv[2]
sys.argv = [name, *sys.argv[3:]]
sys.exit(EntryPoint(name, target, "console_scripts").load()())
"""


def declared_console_scripts() -> dict[str, str]:
    import tomllib

    with open(README.parent / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"].get("scripts", {})


def test_every_console_script_runs_its_help():
    """Each script pyproject.toml declares resolves to a function that answers --help."""
    import subprocess
    import sys

    scripts = declared_console_scripts()
    assert "expstore" in scripts
    for name, target in scripts.items():
        done = subprocess.run([sys.executable, "-c", _SCRIPT_LAUNCHER, name, target, "--help"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and "Usage" in done.stdout, f"{name} = {target}: {done.stderr[-2000:]}"


def test_installed_console_scripts_are_the_declared_ones():
    from importlib.metadata import distribution

    installed = {ep.name: ep.value for ep in distribution("expstore").entry_points if ep.group == "console_scripts"}
    assert installed == declared_console_scripts(), "the installed metadata is stale: run pip install -e ."
