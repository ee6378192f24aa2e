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
    exec(compile(readme_block("quickstart"), "README quickstart", "exec"), namespace)  # the README's code
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]  # nothing else in the working directory


def test_readme_plain_h5py_recipe_finds_the_committed_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("quickstart"), "README quickstart", "exec"), {})  # the README's code
    namespace: dict = {}
    exec(compile(readme_block("plain-h5py"), "README plain h5py", "exec"), namespace)  # the README's code
    assert namespace["head"] - namespace["tail"] == 1_500
    assert len(namespace["rewards"]) == 1_500


_FILE_SUFFIXES = (".h5", ".hdf5", ".zarr", ".png", ".zip", ".pkl", ".json", ".jsonl", ".pt")


def _path_literals(code: str):
    """String literals of a code block that name files: plain strings and f-strings' outer pieces."""
    import ast

    nodes = list(ast.walk(ast.parse(code)))
    inside_f_strings = {id(value) for node in nodes if isinstance(node, ast.JoinedStr) for value in node.values}
    for node in nodes:
        if isinstance(node, ast.JoinedStr):
            pieces = [value.value for value in node.values if isinstance(value, ast.Constant)]
            if pieces and pieces[-1].endswith(_FILE_SUFFIXES):
                yield "{...}".join(pieces)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside_f_strings \
                and node.value.endswith(_FILE_SUFFIXES):
            yield node.value


def test_readme_python_examples_write_under_runs():
    """A user who pastes the README's examples into the repository gets only ignored files (runs/)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) >= 7
    paths = [path for block in blocks for path in _path_literals(block)]
    assert "runs/pool.h5" in paths and "runs/shards/shard{...}.h5" in paths
    outside = [path for path in paths if not path.startswith(("runs/", "data/", "/"))]
    assert not outside, f"README examples write outside runs/: {outside}"
    assert "runs/" in (README.parent / ".gitignore").read_text().split()


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
