"""expstore report, opened in a real headless browser: what it renders, as a person would see it.

The page is loaded from disk with no server; the tests click the return header with real mouse
events, type filter bounds with real keystrokes, wait for every image and video to load, and
check the console stayed free of errors (the page's policy would log any fetch it tried).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import expstore
from expstore.inspect.report import write_report
from tests.helpers.browser import Browser, missing_reason
from tests.helpers.image_pools import EPISODE_LENGTHS, make_image_pool
from tests.helpers.pools import BACKENDS

pytest.importorskip("av", reason="the report's videos need PyAV: pip install 'expstore[video]'")
pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Resolves once every <img> has decoded and every <video> has its first frame (or failed).
MEDIA_STATE = """
Promise.all([
  ...Array.from(document.images).map(img => img.decode().then(() => 0, () => 0)),
  ...Array.from(document.querySelectorAll("video")).map(video => video.readyState >= 2 ? 0 :
      new Promise(done => { video.addEventListener("loadeddata", done); video.addEventListener("error", done);
                            setTimeout(done, 20000); })),
]).then(() => ({
  images: Array.from(document.images).map(img => [img.alt, img.complete, img.naturalWidth, img.naturalHeight]),
  videos: Array.from(document.querySelectorAll("video"))
    .map(v => [v.readyState, v.videoWidth, v.error && v.error.code]),
}))
"""
VISIBLE_RETURNS = """Array.from(document.querySelectorAll("#episodes tbody tr")).filter(row => !row.hidden)
  .map(row => parseFloat(row.cells[Array.from(document.querySelectorAll("#episodes thead th"))
  .findIndex(th => th.dataset.key === "return")].dataset.v))"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Browser(tmp_path_factory.mktemp("browser-profile")) as opened:
        yield opened


def report_of(pool: str, out, **options) -> str:
    write_report(pool, out, health=expstore.verify(pool), **options)
    return str(out)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_image_pool_report_renders_sorts_filters_and_plays(browser, tmp_path, backend):
    pool = make_image_pool(str(tmp_path / f"frames{BACKENDS[backend]}"))
    with expstore.open(pool) as opened:
        returns = np.asarray(opened.episodes()["return"], np.float64)
    assert len(returns) == len(EPISODE_LENGTHS) and not np.all(np.diff(returns) >= 0)  # sorting must reorder
    browser.events.clear()
    browser.open(report_of(pool, tmp_path / "report.html"))

    assert browser.evaluate("document.querySelectorAll('#episodes tbody tr').length") == len(returns)
    np.testing.assert_allclose(browser.evaluate(VISIBLE_RETURNS), returns, rtol=1e-6)
    browser.click("#episodes thead th[data-key=return]")
    np.testing.assert_allclose(browser.evaluate(VISIBLE_RETURNS), np.sort(returns), rtol=1e-6)
    browser.click("#episodes thead th[data-key=return]")
    np.testing.assert_allclose(browser.evaluate(VISIBLE_RETURNS), np.sort(returns)[::-1], rtol=1e-6)

    bound = float(np.median(returns))
    browser.type_into("#return-min", f"{bound}")
    kept = np.sort(returns[returns >= bound])[::-1]
    np.testing.assert_allclose(browser.evaluate(VISIBLE_RETURNS), kept, rtol=1e-6)
    assert browser.evaluate("document.getElementById('episodes-shown').textContent") == str(len(kept))
    browser.type_into("#length-max", f"{min(EPISODE_LENGTHS)}")
    shortest = returns[np.asarray(EPISODE_LENGTHS) == min(EPISODE_LENGTHS)]
    np.testing.assert_allclose(browser.evaluate(VISIBLE_RETURNS), shortest[shortest >= bound], rtol=1e-6)

    media = browser.evaluate(MEDIA_STATE)
    assert len(media["images"]) >= 4 + 12  # the plots and the thumbnail strip
    assert all(complete and width > 0 and height > 0 for _alt, complete, width, height in media["images"]), media
    assert len(media["videos"]) == 3 and all(state >= 2 and width > 0 for state, width, _e in media["videos"]), media
    assert browser.errors() == []
    png = browser.screenshot(tmp_path / "report.png")
    assert png[:8] == PNG_MAGIC and (tmp_path / "report.png").stat().st_size == len(png)
    assert _png_size(png)[1] > 900  # the whole page, not just the first screen


def test_low_dimensional_pool_report_has_every_section(browser, tmp_path, pool_path):
    from tests.helpers.cli import make_pool

    make_pool(pool_path, rows=300, capacity=200)
    browser.events.clear()
    browser.open(report_of(pool_path, tmp_path / "report.html"))
    with expstore.open(pool_path) as opened:
        episodes = len(opened.episodes())
    assert browser.evaluate("document.querySelectorAll('#episodes tbody tr').length") == episodes
    headings = browser.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    assert headings == ["Info", "Schema", "Commit", "Health", "Episodes", "Plots", "Field statistics",
                        "Age of the rows", "Duplicates"]
    assert browser.evaluate("document.querySelector('#health + p .ok').textContent") == "healthy"
    media = browser.evaluate(MEDIA_STATE)
    assert len(media["images"]) == 4 and all(width > 0 for _a, _c, width, _h in media["images"])
    assert media["videos"] == []
    assert browser.errors() == []
    browser.screenshot(tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG_MAGIC


def test_the_browser_reports_what_a_broken_page_does(browser, tmp_path):
    """The checks above can fail: a page that fetches from the network, and throws, is caught."""
    page = tmp_path / "broken.html"
    page.write_text('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'">'
                    '<img src="https://example.invalid/x.png"><script>throw new Error("boom")</script>')
    browser.events.clear()
    browser.open(page)
    media = browser.evaluate(MEDIA_STATE)
    assert media["images"][0][2] == 0  # never loaded
    errors = browser.errors()
    assert any("Content Security Policy" in error or "Refused" in error for error in errors), errors


def _png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.size
