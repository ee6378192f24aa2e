"""expstore plot: the file it names is the file it writes; bad outputs fail before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import matplotlib.image

from tests.helpers.cli import assert_error, make_pool, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def out_dir(tmp_path):
    """A directory of its own for the images, so that listing it shows everything plot wrote."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def test_unsupported_extension_is_one_line_naming_the_supported_ones(tmp_path, pool_path):
    make_pool(pool_path)
    images = out_dir(tmp_path)
    result = run("plot", pool_path, "-o", images / "x.xyz", ok=False)
    assert_error(result, "'.xyz' is not an image format", ".png", ".svg", ".pdf")
    assert os.listdir(images) == []


def test_output_without_extension_reports_the_png_it_writes(tmp_path, pool_path):
    make_pool(pool_path)
    out = out_dir(tmp_path) / "noext"
    result = run("plot", pool_path, "-o", out)
    assert result.output.startswith(f"wrote {out}.png (")
    assert os.listdir(out.parent) == ["noext.png"] and (out.parent / "noext.png").read_bytes()[:8] == PNG_MAGIC


def test_output_keeps_the_extension_it_was_given(tmp_path, pool_path):
    make_pool(pool_path)
    out = out_dir(tmp_path) / "curves.svg"
    assert run("plot", pool_path, "-o", out).output.startswith(f"wrote {out} (")
    assert b"<svg" in out.read_bytes()[:500]
    assert os.listdir(out.parent) == ["curves.svg"]  # no temporary left beside it


def test_output_in_a_missing_directory_is_one_line(tmp_path, pool_path):
    make_pool(pool_path)
    assert_error(run("plot", pool_path, "-o", tmp_path / "nowhere" / "x.png", ok=False), "does not exist")


def test_plot_replaces_an_existing_image(tmp_path, pool_path):
    make_pool(pool_path)
    out = tmp_path / "pool.png"
    out.write_bytes(b"old")
    run("plot", pool_path, "-o", out)
    assert matplotlib.image.imread(out).shape[0] > 100


# READY is printed once the plot command runs (inside click's handler), so the signal can never
# land in the child's own lines before main() took over.
CHILD = """
import sys
from expstore.cli import main, plot as plot_module
open_source = plot_module.open_source
def announced(*args, **kwargs):
    print("READY", flush=True)
    return open_source(*args, **kwargs)
plot_module.open_source = announced
sys.argv = ["expstore", "plot", *sys.argv[1:]]
main()
"""


def test_ctrl_c_while_a_c_extension_initialises_is_one_line(tmp_path, pool_path, monkeypatch):
    """The signal can land inside matplotlib's first import, whose C extension then raises an
    ImportError caused by the KeyboardInterrupt: the same one line as any Ctrl-C."""
    from expstore.cli import plot as plot_module

    make_pool(pool_path, rows=30, capacity=30)

    def interrupted_import(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise ImportError("initialization failed") from interrupt

    monkeypatch.setattr(plot_module, "plot_pool", interrupted_import)
    result = run("plot", pool_path, "-o", tmp_path / "pool.png", ok=False)
    assert result.exit_code == 1 and result.output.strip() == "Aborted!", result.output
    assert not (tmp_path / "pool.png").exists()


def test_ctrl_c_during_plot_is_one_line_and_leaves_no_image(tmp_path, pool_path):
    make_pool(pool_path, rows=300, capacity=300)
    out = out_dir(tmp_path) / "pool.png"
    child = subprocess.Popen([sys.executable, "-c", CHILD, pool_path, "-o", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "READY\n"
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    if child.returncode == 0:  # the plot was done before the signal landed: a complete image
        assert out.read_bytes()[:8] == PNG_MAGIC and stdout.startswith("wrote ")
        return
    assert child.returncode == 1, stderr
    assert "Traceback" not in stderr and stderr.strip() == "Aborted!", stderr
    assert os.listdir(out.parent) == []  # no image, not even half of one
