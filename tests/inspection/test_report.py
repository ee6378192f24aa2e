"""write_report without a browser: what the page holds for pools of every kind, the progress it
reports, and the limits it keeps (see test_report_browser.py for what a browser renders)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import expstore
from expstore.errors import InvalidArgumentError
from expstore.inspect.report import default_video_episodes, write_report
from tests.helpers.cli import make_pool, run
from tests.helpers.image_pools import EPISODE_LENGTHS, make_image_pool

pytest.importorskip("av", reason="the report's videos need PyAV: pip install 'expstore[video]'")


def table_rows(page: str) -> int:
    body = re.search(r'<table id="episodes">.*?<tbody>(.*?)</tbody>', page, re.DOTALL)
    assert body is not None
    return body.group(1).count("<tr>")


def test_every_pass_reports_its_rows(pool_path, tmp_path):
    make_image_pool(pool_path)
    seen: dict[str, list] = {}

    def bar(length: int, label: str):
        from contextlib import nullcontext

        seen[label] = [length, 0]
        return nullcontext(lambda rows: seen[label].__setitem__(1, seen[label][1] + rows))

    write_report(pool_path, tmp_path / "r.html", progress_bar=bar)
    rows = int(np.sum(EPISODE_LENGTHS))
    assert list(seen) == ["fields", "episodes", "rewards", "age", "duplicates", "videos"]
    assert seen["fields"] == [rows, rows] and seen["rewards"] == [rows, rows]
    assert seen["duplicates"][1] == 2 * rows  # exact duplicates, then clusters of the uint8 frames
    assert seen["videos"][1] == seen["videos"][0] > 0


def test_long_tables_list_the_newest_episodes(pool_path, tmp_path):
    make_image_pool(pool_path)
    written = write_report(pool_path, tmp_path / "r.html", max_table_episodes=2, thumbnails=3, video_max_frames=4)
    page = (tmp_path / "r.html").read_text()
    assert written["episodes"] == table_rows(page) == 2 and "the newest 2 of 6 are listed" in page
    assert written["thumbnails"] == 3 and "4 frames from step" in page
    assert '<td data-v="5.0">5</td>' in page and '<td data-v="0.0">0</td>' not in page.split("<tbody>")[1][:80]


def test_chosen_episodes_and_the_default_choice(pool_path, tmp_path):
    make_image_pool(pool_path)
    with expstore.open(pool_path) as pool:
        table = {name: np.asarray(values) for name, values in pool.episodes().items()}
    best, worst = int(np.argmax(table["return"])), int(np.argmin(table["return"]))
    assert default_video_episodes(table) == list(dict.fromkeys([best, worst, len(EPISODE_LENGTHS) - 1]))
    write_report(pool_path, tmp_path / "r.html", episodes=[2])
    page = (tmp_path / "r.html").read_text()
    assert page.count("<video") == 1 and "episode 2: return" in page and f"{EPISODE_LENGTHS[2]} frames" in page


def test_an_archive_reports_without_health(pool_path, tmp_path):
    make_image_pool(pool_path)
    archive = str(tmp_path / f"archive{os.path.splitext(pool_path)[1]}")
    run("convert", pool_path, archive, "--compress")
    run("report", archive, "-o", tmp_path / "a.html")
    page = (tmp_path / "a.html").read_text()
    assert "archive" in page and "not checked" in page and table_rows(page) == len(EPISODE_LENGTHS)
    assert page.count("<video") == 3  # episodes found from the flags: contiguous rows of the archive


def test_pools_without_rewards_or_rows(tmp_path, pool_path):
    with expstore.open(pool_path, "w", capacity=10, schema={"x": ((2,), "float32")}) as pool:
        pool.extend({"x": np.ones((4, 2), np.float32)})
    written = write_report(pool_path, tmp_path / "x.html", health=expstore.verify(pool_path))
    page = (tmp_path / "x.html").read_text()
    assert written["episodes"] == table_rows(page) == 1 and "1 episodes, 0 complete" in page  # one still open
    assert page.count("<img") == 4 and "<video" not in page
    empty = str(tmp_path / f"empty{os.path.splitext(pool_path)[1]}")
    expstore.open(empty, "w", capacity=10, schema={"obs": ((16, 16), "uint8")}).close()
    written = write_report(empty, tmp_path / "e.html")
    assert (written["rows"], written["episodes"], written["videos"], written["thumbnails"]) == (0, 0, 0, 0)


def test_bad_options_write_nothing(pool_path, tmp_path):
    make_pool(pool_path)
    out = tmp_path / "out"
    out.mkdir()
    for options in ({"thumbnails": -1}, {"video_max_frames": 0}, {"health": 3}):
        with pytest.raises(InvalidArgumentError):
            write_report(pool_path, out / "r.html", **options)
    assert os.listdir(out) == []


def test_heap_fields_are_shown_in_words_not_as_a_dict(pool_path, tmp_path):
    schema = {"obs": expstore.Field((8, 8), "uint8", codec="zstd"), "tokens": expstore.Field((None,), "int32"),
              "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
    frames = np.zeros((20, 8, 8), np.uint8)
    with expstore.open(pool_path, "w", capacity=32, schema=schema, heap_bytes=1 << 16) as pool:
        pool.extend({"obs": frames, "tokens": [np.arange(i % 5, dtype=np.int32) for i in range(20)],
                     "reward": np.zeros(20, np.float32), "terminated": np.arange(20) % 10 == 9,
                     "truncated": np.zeros(20, bool)})
    out = tmp_path / "r.html"
    write_report(pool_path, out)
    page = out.read_text()
    assert "{&#x27;" not in page and "heap_nbytes" not in page and "&#x27;codec&#x27;" not in page
    obs = re.search(r"<tr><th>heap obs</th><td>(.*?)</td></tr>", page)
    tokens = re.search(r"<tr><th>heap tokens</th><td>(.*?)</td></tr>", page)
    assert obs is not None and tokens is not None
    assert re.fullmatch(r"zstd:3, ratio [\d.]+x \(.* raw in .*\); heap .* of .* used \(\d+%\) by 20 rows", obs.group(1))
    assert tokens.group(1).startswith("raw, ratio 1.00x") and "by 20 rows" in tokens.group(1)
    assert "<td>Nx</td>" not in page and "<td>N</td><td>int32</td><td>raw</td>" in page  # the schema table
    text = run("info", pool_path).output
    assert f"  obs: {obs.group(1)}" in text  # the same words as expstore info
