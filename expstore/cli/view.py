"""Commands to look at a pool: video (its frames) and report (one HTML page about it)."""

from __future__ import annotations

from contextlib import closing

import click

from ..backends.archive import is_archive
from ..errors import InvalidArgumentError
from ..inspect.frames import choose_frame_field
from ..inspect.report import report_path, write_report
from ..inspect.streaming import open_source, read_backend
from ..inspect.video import DEFAULT_FPS, choose_clips, video_path, write_clips
from ..maintenance.verify import verify as verify_pool
from .common import progress_bar


def parse_episode_ids(text: str, option: str) -> list[int]:
    """``"0,5,9"`` as [0, 5, 9]."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{option} {text!r} must be episode ids separated by commas, e.g. 0,5,9") \
            from None
    if not ids:
        raise InvalidArgumentError(f"{option} {text!r} names no episode; give ids separated by commas, e.g. 0,5,9")
    return ids


def parse_steps(text: str) -> tuple[int | None, int | None]:
    """``"A:B"`` (either side may be left out) as (A, B)."""
    start, colon, stop = text.partition(":")
    try:
        if not colon:
            raise ValueError
        return (int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise InvalidArgumentError(f"--steps {text!r} must be START:STOP step ids (end excluded), e.g. 100:400; "
                                   "either side may be left out") from None


def _default_video_name(episode: int | None, episodes: str | None, steps: str | None) -> str:
    if episode is not None:
        return f"episode-{episode}.mp4"
    if episodes is not None:
        return "episodes-" + "-".join(map(str, parse_episode_ids(episodes, "--episodes"))) + ".mp4"
    return "steps-" + (steps or "").replace(":", "-") + ".mp4"


@click.command()
@click.argument("path")
@click.option("--episode", type=int, default=None, help="Episode id (as `expstore episodes` lists them).")
@click.option("--episodes", default=None, help="Several episode ids, comma-separated: a grid, one cell each.")
@click.option("--steps", default=None, help="Step ids START:STOP (end excluded; either side may be left out).")
@click.option("-o", "--output", "out", default=None,
              help="Video to write: .mp4 (H.264) or .gif (exact for frames of at most 256 colours). "
                   "Default: episode-K.mp4, episodes-A-B.mp4 or steps-A-B.mp4 here.")
@click.option("--field", default=None, help="The image field (default: obs, else the first image field).")
@click.option("--fps", type=float, default=DEFAULT_FPS, show_default=True, help="Frames per second.")
@click.option("--overlay", is_flag=True, help="A strip under each frame with step id, reward and return so far.")
@click.option("--lossless", is_flag=True, help=".mp4 with every pixel exact (RGB H.264; not all browsers play it).")
def video(path: str, episode: int | None, episodes: str | None, steps: str | None, out: str | None,
          field: str | None, fps: float, overlay: bool, lossless: bool) -> None:
    """Encode the frames of an episode, of a step range, or of several episodes as a grid.

    Every video frame is the stored frame at its own size (grayscale, channels-last and
    channels-first fields; a frame stack shows its newest frame), so the video compares with
    the pool.

    \b
    Examples:
      expstore video runs/atari/pool.h5 --episode 3 -o ep3.mp4
      expstore video runs/atari/pool.h5 --episodes 0,5,9 --overlay -o grid.mp4
      expstore video runs/atari/pool.h5 --steps 1000:1500 -o part.gif --fps 15
    """
    given = [name for name, value in (("--episode", episode), ("--episodes", episodes), ("--steps", steps))
             if value is not None]
    if len(given) != 1:
        raise InvalidArgumentError("choose what to show with exactly one of --episode K, --episodes A,B,C or "
                                   f"--steps START:STOP (got {', '.join(given) or 'none'})")
    target = video_path(out if out is not None else _default_video_name(episode, episodes, steps))
    ids = None if episodes is None else parse_episode_ids(episodes, "--episodes")
    step_range = None if steps is None else parse_steps(steps)
    with closing(open_source(path)) as source:
        name = choose_frame_field(source.schema, field, source.path)
        clips = choose_clips(source, episode, ids, step_range)
        with progress_bar(max(len(clip.rows) for clip in clips), "video") as progress:
            written = write_clips(source, clips, target, field=name, fps=fps, overlay=overlay, lossless=lossless,
                                  progress=progress)
    click.echo(f"wrote {written['path']} ({written['frames']} frames of {written['width']}x{written['height']} "
               f"from field {written['field']!r}: {', '.join(written['clips'])})")


@click.command()
@click.argument("path")
@click.option("-o", "--output", "out", required=True, help="The HTML file to write (one self-contained page).")
@click.option("--episodes", default=None,
              help="Episode ids to show as videos, comma-separated (image pools; default: best, worst, newest).")
@click.option("--field", default=None, help="The image field of thumbnails and videos (default: obs or the first).")
@click.option("--fps", type=float, default=DEFAULT_FPS, show_default=True, help="Frames per second of the videos.")
def report(path: str, out: str, episodes: str | None, field: str | None, fps: float) -> None:
    """Write one HTML page about a pool: info, schema, commit, health, the episode table
    (sortable, filterable), plots, field statistics, age, duplicates, frames and videos.

    The page is self-contained: it opens offline and fetches nothing.

    \b
    Example:
      expstore report data/demo_pool.h5 -o demo-report.html
    """
    report_path(out)  # a bad output fails before the pool is read
    ids = None if episodes is None else parse_episode_ids(episodes, "--episodes")
    health = None
    if not is_archive(path):
        with progress_bar(0, "verify") as progress:
            health = verify_pool(path, backend=read_backend(path), progress=progress)
    written = write_report(path, out, health=health, episodes=ids, field=field, fps=fps, progress_bar=progress_bar)
    click.echo(f"wrote {written['path']} ({written['nbytes'] / 2**20:.1f} MiB: {written['episodes']} episodes, "
               f"{written['rows']} rows, {written['videos']} videos, {written['thumbnails']} thumbnails)")


COMMANDS = [video, report]
