"""expstore video and expstore report from the command line: what they write, and every user
mistake as one line and exit 1, with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import expstore
from expstore.backends.files import TEMP_MARK
from tests.helpers.cli import assert_error, make_pool, run
from tests.helpers.image_pools import EPISODE_LENGTHS, make_image_pool

av = pytest.importorskip("av", reason="videos need PyAV: pip install 'expstore[video]'")


@pytest.fixture
def out(tmp_path):
    """A directory of its own for what a command writes, so listing it shows everything."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_video_of_an_episode_with_the_default_name(pool_path, out, monkeypatch):
    make_image_pool(pool_path)
    monkeypatch.chdir(out)
    result = run("video", pool_path, "--episode", "1")
    assert result.output.startswith("wrote episode-1.mp4 (12 frames of 32x32 from field 'obs': episode 1)")
    assert os.listdir(out) == ["episode-1.mp4"] and frame_count(out / "episode-1.mp4") == EPISODE_LENGTHS[1]


def test_video_grid_steps_overlay_and_fps(pool_path, out):
    make_image_pool(pool_path)
    grid = run("video", pool_path, "--episodes", "0,2", "-o", out / "grid.gif", "--overlay", "--fps", "12")
    assert "2 frames" not in grid.output and "episode 0, episode 2" in grid.output
    assert frame_count(out / "grid.gif") == max(EPISODE_LENGTHS[0], EPISODE_LENGTHS[2])
    run("video", pool_path, "--steps", "3:10", "-o", out / "part.mp4", "--lossless")
    assert frame_count(out / "part.mp4") == 7
    run("video", pool_path, "--steps", ":4", "-o", out / "first.gif")
    assert frame_count(out / "first.gif") == 4


@pytest.mark.parametrize(("args", "words"), [
    ([], ["exactly one of --episode K, --episodes A,B,C or --steps START:STOP", "got none"]),
    (["--episode", "0", "--steps", "1:3"], ["exactly one of", "--episode, --steps"]),
    (["--episodes", "0,x"], ["--episodes '0,x' must be episode ids"]),
    (["--episodes", ","], ["names no episode"]),
    (["--steps", "4"], ["--steps '4' must be START:STOP"]),
    (["--steps", "5:2000"], ["not inside the pool's window"]),
    (["--episode", "42"], ["episode 42 has no row", "episode ids: 0..5"]),
    (["--episode", "0", "--field", "action"], ["field 'action'", "holds no frames", "['obs']"]),
    (["--episode", "0", "--fps", "-1"], ["fps -1"]),
    (["--episode", "0", "-o", "OUT/v.webp"], ["the extension must be one of .mp4"]),
    (["--episode", "0", "-o", "OUT/missing/v.mp4"], ["does not exist"]),
    (["--episode", "0", "-o", "OUT/v.gif", "--lossless"], ["lossless applies to .mp4 only"]),
])
def test_video_mistakes_are_one_line(pool_path, out, args, words):
    make_image_pool(pool_path)
    args = [str(a).replace("OUT", str(out)) for a in args]
    if "-o" not in args:
        args += ["-o", str(out / "v.mp4")]
    assert_error(run("video", pool_path, *args, ok=False), *words)
    assert os.listdir(out) == []


def test_video_of_a_pool_without_images_names_its_fields(pool_path, out):
    make_pool(pool_path)
    result = run("video", pool_path, "--episode", "0", "-o", out / "v.mp4", ok=False)
    assert_error(result, "has no image fields to show", "obs (3,) float32", "terminated () bool")
    assert os.listdir(out) == []


def test_video_of_a_missing_pool(tmp_path, out):
    assert_error(run("video", tmp_path / "none.h5", "--episode", "0", "-o", out / "v.mp4", ok=False), "no pool at")


class _Page(HTMLParser):
    """What a report holds: episode table rows, sources of media, headings, external links."""

    def __init__(self):
        super().__init__()
        self.rows, self.media, self.headings, self.links, self._in = 0, [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in.append((tag, attrs.get("id")))
        if tag == "tr" and any(t == "table" and i == "episodes" for t, i in self._in) and \
                any(t == "tbody" for t, _ in self._in):
            self.rows += 1
        if tag in ("img", "video", "source", "script", "link", "iframe"):
            self.media.append((tag, attrs.get("src") or attrs.get("href") or ""))
        if attrs.get("href"):
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        while self._in:
            if self._in.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self._in and self._in[-1][0] == "h2":
            self.headings.append(data)


def parse(path) -> _Page:
    page = _Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    return page


def test_report_of_an_image_pool_is_self_contained(pool_path, out):
    make_image_pool(pool_path)
    result = run("report", pool_path, "-o", out / "report.html", "--episodes", "4,1")
    assert result.output.startswith(f"wrote {out / 'report.html'} (") and "6 episodes" in result.output
    assert "2 videos, 12 thumbnails" in result.output
    page = parse(out / "report.html")
    assert page.rows == len(EPISODE_LENGTHS)
    assert [src[:15] for tag, src in page.media if tag == "video"] == ["data:video/mp4;"] * 2
    assert all(src.startswith("data:") for tag, src in page.media if tag != "script")
    assert all(link.startswith("#") for link in page.links)
    assert "Frames of obs" in page.headings and os.listdir(out) == ["report.html"]
    text = (out / "report.html").read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text and "healthy" in text


def test_report_of_a_low_dimensional_pool(pool_path, out):
    make_pool(pool_path, rows=300, capacity=200)
    run("report", pool_path, "-o", out / "r.html")
    page = parse(out / "r.html")
    with expstore.open(pool_path) as pool:
        assert page.rows == len(pool.episodes())
    assert page.headings == ["Info", "Schema", "Commit", "Health", "Episodes", "Plots", "Field statistics",
                             "Age of the rows", "Duplicates"]
    assert [tag for tag, _src in page.media].count("img") == 4


def test_report_shows_findings_of_an_unhealthy_pool(pool_path, out):
    make_pool(pool_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = f"{pool_path}{TEMP_MARK}{dead.stdout.strip()}-deadbeef"
    leftover = os.path.join(os.path.dirname(pool_path), "." + os.path.basename(leftover))
    os.makedirs(leftover) if pool_path.endswith(".zarr") else open(leftover, "w").close()
    run("report", pool_path, "-o", out / "r.html")
    text = (out / "r.html").read_text()
    assert "1 finding(s)" in text and "leftover temporary" in text


@pytest.mark.parametrize(("args", "words"), [
    (["-o", "OUT/r.txt"], ["a report is an .html file"]),
    (["-o", "OUT/missing/r.html"], ["does not exist"]),
    (["-o", "OUT/r.html", "--episodes", "0"], ["has no image fields to show", "obs (3,) float32"]),
    (["-o", "OUT/r.html", "--field", "obs"], ["holds no frames"]),
    (["-o", "OUT/r.html", "--episodes", "a"], ["must be episode ids"]),
])
def test_report_mistakes_are_one_line(pool_path, out, args, words):
    make_pool(pool_path)
    assert_error(run("report", pool_path, *[a.replace("OUT", str(out)) for a in args], ok=False), *words)
    assert os.listdir(out) == []


def test_report_of_an_unknown_episode_and_of_a_missing_pool(pool_path, tmp_path, out):
    make_image_pool(pool_path)
    assert_error(run("report", pool_path, "-o", out / "r.html", "--episodes", "77", ok=False), "episode 77 has no row")
    assert_error(run("report", tmp_path / "none.h5", "-o", out / "r.html", ok=False), "no pool at")
    assert os.listdir(out) == []


def test_video_without_pyav_says_how_to_install_it(pool_path, out, monkeypatch):
    make_image_pool(pool_path)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now fails as if it were not installed
    result = run("video", pool_path, "--episode", "0", "-o", out / "v.mp4", ok=False)
    assert_error(result, "writing videos needs PyAV", "pip install 'expstore[video]'")
    assert "expstore[train]" not in result.output and os.listdir(out) == []
