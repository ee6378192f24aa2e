"""The HTML of ``expstore report``: sections drawn from what report.py gathered.

Every value from the pool goes through ``html.escape``. The page's policy (its
Content-Security-Policy) allows inline style and script and data: images and media only, so a
viewer fetches nothing, whatever the page holds.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os

from .._version import __version__
from .summary import heap_line, nbytes_text

_POLICY = ("default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'; "
           "script-src 'unsafe-inline'")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 48px; color: #222; }
h1 { margin: 20px 0 2px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.sub, .note { color: #666; } nav a { margin-right: 12px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: right; font-variant-numeric: tabular-nums; }
th:first-child, td:first-child, table.kv td, table.kv th { text-align: left; }
#episodes thead th { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky; top: 0; }
#episodes thead th[aria-sort=ascending]::after { content: " \\25B2"; }
#episodes thead th[aria-sort=descending]::after { content: " \\25BC"; }
.scroll { max-height: 420px; overflow: auto; display: inline-block; border: 1px solid #ddd; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; } .plots img { border: 1px solid #eee; }
.ok { color: #17702b; font-weight: bold; } .bad { color: #b00020; font-weight: bold; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; } figure { margin: 0; text-align: center; }
.strip img { height: 88px; image-rendering: pixelated; border: 1px solid #ccc; }
.videos video { image-rendering: pixelated; border: 1px solid #ccc; margin-right: 8px; }
figcaption { color: #666; font-size: 12px; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); column-gap: 32px; }
.filters input { width: 90px; margin-right: 10px; }
"""

# Sorts the episode table by the clicked column (again: the other way) and hides the rows
# outside the return and length bounds typed in. Cells carry their number in data-v.
_SCRIPT = """
(function () {
  const table = document.getElementById("episodes");
  if (!table) return;
  const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells);
  const value = (row, column) => {
    const v = parseFloat(row.cells[column].dataset.v);
    return Number.isNaN(v) ? -Infinity : v;
  };
  heads.forEach((head, column) => head.addEventListener("click", () => {
    const ascending = head.getAttribute("aria-sort") !== "ascending";
    heads.forEach(other => other.removeAttribute("aria-sort"));
    head.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const rows = Array.from(body.rows);
    rows.sort((a, b) => (value(a, column) - value(b, column)) * (ascending ? 1 : -1));
    rows.forEach(row => body.appendChild(row));
  }));
  const columnOf = name => heads.findIndex(head => head.dataset.key === name);
  const bounds = ["return", "length"].map(name => ({
    column: columnOf(name),
    low: document.getElementById(name + "-min"),
    high: document.getElementById(name + "-max"),
  }));
  const shown = document.getElementById("episodes-shown");
  const filter = () => {
    let count = 0;
    Array.from(body.rows).forEach(row => {
      const keep = bounds.every(b => {
        const v = value(row, b.column);
        return (b.low.value === "" || v >= parseFloat(b.low.value)) &&
               (b.high.value === "" || v <= parseFloat(b.high.value));
      });
      row.hidden = !keep;
      count += keep ? 1 : 0;
    });
    shown.textContent = count;
  };
  bounds.forEach(b => [b.low, b.high].forEach(input => input.addEventListener("input", filter)));
})();
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _kv_table(pairs) -> str:
    rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in pairs)
    return f'<table class="kv">{rows}</table>'


def _grid(columns: list[str], rows: list[list], table_id: str | None = None) -> str:
    head = "".join(f'<th data-key="{_e(c)}">{_e(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    id_attr = f' id="{table_id}"' if table_id else ""
    return f"<table{id_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    numeric = float(value) if isinstance(value, (bool, int, float)) else None
    data = "" if numeric is None else f' data-v="{_e(numeric)}"'
    return f"<td{data}>{_e(_number(value))}</td>"


def _info(sections: dict) -> str:
    info = sections["info"]
    skip = ("schema", "attrs", "path", "last_commit_unix", "last_commit", "writer", "episodes",  # Commit has those
            "heaps")  # one row per heap field, below
    pairs = [(key.replace("_", " "), f"{nbytes_text(value)} ({value} bytes)" if key.endswith("nbytes")
              else _number(value)) for key, value in info.items() if key not in skip]
    pairs += [(f"heap {name}", heap_line(heap)) for name, heap in (info.get("heaps") or {}).items()]
    pairs += [(f"attr {key}", json.dumps(value)) for key, value in (info.get("attrs") or {}).items()]
    return "<h2 id=info>Info</h2>" + _kv_table(pairs)


def _schema(sections: dict) -> str:
    rows = [[name, "x".join("N" if n is None else str(n) for n in f.shape) or "scalar", f.dtype.name,
             f.codec or ("raw" if f.ragged else "-"), f.image_layout or "-"]
            for name, f in sections["schema"].items()]
    return "<h2 id=schema>Schema</h2>" + _grid(["field", "shape", "dtype", "codec", "image"], rows)


def _commit(sections: dict) -> str:
    info, health = sections["info"], sections["health"] or {}
    pairs = [("last commit", info.get("last_commit") or "-"), ("commit seq", health.get("commit_seq", "-")),
             ("window", f"step ids {info['first_step_id']} to {info['next_step_id']} (end excluded)"),
             ("writer", info.get("writer") or "none")]
    return "<h2 id=commit>Commit</h2>" + _kv_table(pairs)


def _health(sections: dict) -> str:
    health = sections["health"]
    if health is None:
        return ("<h2 id=health>Health</h2><p class=note>not checked (verify checks pools, not archives; from "
                "Python pass health=expstore.verify(path), as <code>expstore report</code> does)</p>")
    verdict = '<span class="ok">healthy</span>' if health.get("ok") else \
        f'<span class="bad">{len(health.get("findings", []))} finding(s)</span>'
    findings = "".join(f"<li>{_e(f)}</li>" for f in health.get("findings", []))
    facts = [(k.replace("_", " "), _number(v)) for k, v in health.items() if k not in ("path", "ok", "findings")]
    return f"<h2 id=health>Health</h2><p>{verdict}</p>" + (f"<ul>{findings}</ul>" if findings else "") \
        + _kv_table(facts)


def _episodes(sections: dict) -> str:
    table, summary = sections["table"], sections["summary"]
    shown = len(table["rows"])
    limited = "" if shown == table["total"] else f" (the newest {shown} of {table['total']} are listed)"
    filters = "".join(f'<label>{what} from <input type=number step=any id="{what}-min"> to '
                      f'<input type=number step=any id="{what}-max"></label>' for what in ("return", "length"))
    lines = [f"{what}: mean {_number(summary[what]['mean'])}, min {_number(summary[what]['min'])}, "
             f"max {_number(summary[what]['max'])}" for what in ("return", "length")]
    return (f"<h2 id=episodes-section>Episodes</h2><p>{summary['episodes']} episodes, {summary['complete']} "
            f"complete{_e(limited)}. Complete episodes: {_e('; '.join(lines))}.</p>"
            f'<p class="filters">{filters} showing <span id="episodes-shown">{shown}</span> '
            f'<span class=note>(click a column header to sort)</span></p>'
            f'<div class="scroll">{_grid(table["columns"], table["rows"], "episodes")}</div>')


def _plots(sections: dict) -> str:
    images = "".join(f'<img alt="{_e(title)}" src="{data_uri("image/png", png)}">' for title, png in sections["plots"])
    return f'<h2 id=plots>Plots</h2><div class="plots">{images}</div>'


def _field_stats(sections: dict) -> str:
    keys = ["count", "min", "max", "mean", "std", "nan", "inf"]
    rows = [[name] + [stats[k] for k in keys] for name, stats in sections["stats"].items()]
    return "<h2 id=fields>Field statistics</h2>" + _grid(["field"] + keys, rows)


def _age(sections: dict) -> str:
    keys = ["rows", "mean", "min", "p10", "median", "p90", "max"]
    rows = [[unit.replace("_", " ")] + [summary.get(k) for k in keys]
            for unit, summary in sections["age"].items() if summary]
    return "<h2 id=age>Age of the rows</h2><p class=note>0: the newest row</p>" + _grid(["unit"] + keys, rows)


def _duplicates(sections: dict) -> str:
    exact, clusters = sections["duplicates"]["exact"], sections["duplicates"]["observation_clusters"]
    text = (f"exact duplicates over {', '.join(exact['fields'])}: {exact['duplicate_rows']} of {exact['rows']} rows "
            f"({100 * exact['duplicate_fraction']:.2f}%), {exact['distinct']} distinct, "
            f"{exact['groups_with_duplicates']} occur more than once, the most repeated {exact['largest_group']} times")
    if "skipped" in clusters:
        more = f"observation clusters: skipped, {clusters['skipped']}"
    else:
        more = (f"observation clusters of {clusters['field']!r}: {clusters['distinct']} distinct, "
                f"{clusters['rows_in_clusters']} rows share theirs with another row")
    return f"<h2 id=duplicates>Duplicates</h2><p>{_e(text)}</p><p>{_e(more)}</p>"


def _frames(sections: dict) -> str:
    if not sections["frames_field"]:
        return ""
    strip = "".join(f'<figure><img alt="step {t["step_id"]}" src="{t["uri"]}" width="{t["width"]}" '
                    f'height="{t["height"]}" style="width:auto"><figcaption>step {t["step_id"]}</figcaption></figure>'
                    for t in sections["thumbnails"])
    videos = "".join(f'<figure><video controls loop muted autoplay playsinline preload="auto" width="{v["width"] * 2}" '
                     f'src="{v["uri"]}"></video><figcaption>{_e(v["label"])}: return {_number(v["return"])}, '
                     f'{v["frames"]} frames from step {v["first_step_id"]}</figcaption></figure>'
                     for v in sections["videos"])
    return (f"<h2 id=frames>Frames of {_e(sections['frames_field'])!s}</h2>"
            f'<div class="strip">{strip}</div>'
            f"<h3>Episodes</h3><p class=note>the first frames of each (whole episodes: "
            f"<code>expstore video POOL --episode K</code>)</p>"
            f'<div class="strip videos">{videos or "<p>no episode with rows to show</p>"}</div>')


def data_uri(mime: str, payload: bytes) -> str:
    """``payload`` inline, as a ``data:`` URI the page's policy allows for images and media."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def render_page(sections: dict) -> str:
    """The whole page as one string."""
    info = sections["info"]
    name = os.path.basename(os.path.normpath(info["path"]))
    made = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in (
        ("info", "info"), ("schema", "schema"), ("commit", "commit"), ("health", "health"),
        ("episodes-section", "episodes"), ("plots", "plots"), ("fields", "fields"), ("age", "age"),
        ("duplicates", "duplicates"), *((("frames", "frames"),) if sections["frames_field"] else ())))
    body = "".join([
        f"<h1>{_e(name)}</h1><p class=sub>{_e(info['path'])} &middot; {_e(info['kind'])} &middot; "
        f"{info['length']} rows &middot; report made {made} by expstore {_e(__version__)}</p><nav>{nav}</nav>",
        '<div class="cols">', *(f"<section>{part}</section>" for part in (
            _info(sections), _schema(sections), _commit(sections), _health(sections))), "</div>",
        _episodes(sections),
        _plots(sections), _field_stats(sections), _age(sections), _duplicates(sections), _frames(sections),
    ])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(name)}: expstore report</title><style>{_STYLE}</style></head>"
            f"<body>{body}<script>{_SCRIPT}</script></body></html>")
