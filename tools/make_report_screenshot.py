"""Make the README's report screenshots: `expstore report` of a pool, opened in headless Chromium.

    python tools/make_report_screenshot.py                      # data/demo_pool.h5 -> tools/report-demo.png
    python tools/make_report_screenshot.py --atari Pong         # also a Pong pool -> tools/report-atari.png

The page is opened and driven like the browser tests do (tests/helpers/browser.py: Chromium over
the DevTools protocol); the screenshot is taken once every image and video has loaded. The demo
shot shows the top of the page (info to plots); the Atari shot shows its frames: the thumbnail
strip and the episode videos. Needs Chromium (`apt-get install chromium`) and the video extra;
--atari also needs the atari extra (tools/atari_frames.py records the frames).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the checkout's expstore, tests and tools

import numpy as np  # noqa: E402

import expstore  # noqa: E402
from expstore.inspect.report import write_report  # noqa: E402
from tests.helpers.browser import Browser, missing_reason  # noqa: E402

WIDTH = 1280
_LOADED = """Promise.all([
  ...Array.from(document.images).map(img => img.decode().catch(() => 0)),
  ...Array.from(document.querySelectorAll("video")).map(v => v.readyState >= 2 ? 0 :
      new Promise(done => { v.addEventListener("loadeddata", done); v.addEventListener("error", done); })),
]).then(() => document.querySelectorAll("video").length)"""


def shoot(report: Path, out: Path, profile: str, top_of: str | None = None, height: int = 2150) -> None:
    """A PNG of ``height`` pixels of the page: from its top, or from the heading ``top_of``."""
    with Browser(profile, width=WIDTH, height=height) as browser:
        browser.open(report)
        browser.evaluate(_LOADED)
        if top_of is not None:
            browser.evaluate(f"window.scrollTo(0, document.getElementById({top_of!r}).offsetTop - 8)")
            browser.evaluate("Promise.all(Array.from(document.querySelectorAll('video')).map(v => "
                             "{ v.pause(); v.currentTime = Math.min(v.duration / 2, 3); "
                             "return new Promise(done => v.addEventListener('seeked', done, {once: true})); }))")
        errors = browser.errors()
        if errors:
            raise SystemExit(f"the report logged errors in the browser: {errors}")
        browser.screenshot(out, full_page=False)
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


def atari_pool(game: str, path: str, steps: int, cache_dir: str | None) -> str:
    """A pool of ``steps`` random-policy steps of ``game`` (84x84 grayscale frames)."""
    from tools.atari_frames import record

    recording = record(game, steps, seed=0, max_episode_steps=200, cache_dir=cache_dir)
    schema = {"obs": ((84, 84), "uint8"), "action": ((), "int64"), "reward": ((), "float32"),
              "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(path, "w", capacity=len(recording), schema=schema,
                       attrs={"env_id": f"ALE/{game}-v5", "recorded_by": "tools/atari_frames.py"}) as pool:
        pool.extend({"obs": recording.frames, "action": recording.actions, "reward": recording.rewards,
                     "terminated": recording.terminated, "truncated": recording.truncated})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="data/demo_pool.h5", help="The pool of the first shot (from the checkout).")
    parser.add_argument("--out", default=str(REPO / "tools" / "report-demo.png"))
    parser.add_argument("--atari", metavar="GAME", help="Also record GAME (e.g. Pong) and shoot its report's frames.")
    parser.add_argument("--atari-out", default=str(REPO / "tools" / "report-atari.png"))
    parser.add_argument("--atari-steps", type=int, default=800)
    parser.add_argument("--cache-dir", default=None, help="Where tools/atari_frames.py caches recordings.")
    args = parser.parse_args(argv)
    out, atari_out = Path(args.out).resolve(), Path(args.atari_out).resolve()
    reason = missing_reason()
    if reason:
        raise SystemExit(f"cannot take screenshots: {reason}")
    with tempfile.TemporaryDirectory(prefix="report-shot-") as scratch:
        # Pools are named relative to the working directory, so the pages name no machine's folders.
        os.chdir(REPO)
        report = Path(scratch) / "report.html"
        write_report(args.pool, report, health=expstore.verify(args.pool))
        shoot(report, out, os.path.join(scratch, "profile"))
        if args.atari:
            os.chdir(scratch)
            pool = atari_pool(args.atari, f"{args.atari.lower()}.h5", args.atari_steps, args.cache_dir)
            report = Path(scratch) / "atari.html"
            write_report(pool, report, health=expstore.verify(pool))
            shoot(report, atari_out, os.path.join(scratch, "profile-atari"), top_of="frames", height=700)
            os.chdir(REPO)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
