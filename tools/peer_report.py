"""Markdown tables of a bench_peers.py run: per workload, ratios, the larger-than-RAM run, targets."""

from __future__ import annotations

import datetime

import bench_common as bc
from peer_systems import SYSTEMS

MAIN = "expstore-hdf5"


def render(args, results, skipped, memcpy, imports, big, wall_s) -> str:
    out = [f"## expstore vs peers ({datetime.date.today().isoformat()})", "",
           (f"Machine: {bc.machine()}. memcpy (np.copyto, 256 MiB): {bc.human(memcpy[0], 'B/s')} at the start, "
            f"{bc.human(memcpy[1], 'B/s')} at the end (% memcpy uses the higher). Wall time {wall_s / 60:.1f} min."),
           "Versions: " + bc.versions(["numpy", "h5py", "zarr", "torch", "torchrl", "tensordict",
                                       "stable_baselines3", "cpprb"]) + ".",
           f"Command: `{bc.command_line()}`", ""]
    for system, why in skipped.items():
        out.append(f"- {system}: skipped, {why}")
    out += ["", _NOTES, ""]
    reference = max(memcpy)  # the physical limit: the better of the two, a busy machine lowers one
    for workload in args.workloads:
        rows = {s: r for (s, w), r in results.items() if w == workload}
        if rows:
            out += workload_tables(workload, rows, reference, imports)
    if big:
        out += larger_than_ram_table(big)
    out += targets(args, results, reference, big)
    return "\n".join(out)


_NOTES = """Append: single transitions into the full pool (ring), numpy arrays plus a Python float and bools.
Extend: 1,000-row batches into the full pool (fill: the first pass, page first-touch included).
Sample: uniform batch from the full pool, hot page cache, index drawing included; h5py and zarr read
sorted unique indices (their APIs need them). Reopen: open the saved pool in a new process and sample
256 (imports excluded); cold: after posix_fadvise(DONTNEED) of every file; cold sample: the next
batches of 256 after a cold reopen. expstore-hdf5/-zarr commit without fsync (kill -9 safe);
expstore-hdf5-fsync uses the defaults (fsync'ed commit every 10,000 rows, power-loss safe).
Peak RSS counts mapped file pages (page cache) too. SB3 extends are adds to an n_envs=1000 buffer.
The torch-based peers (TorchRL, SB3) run with torch.set_num_threads(--torch-threads, default 1)."""


def workload_tables(workload: str, rows: dict, memcpy: float, imports: dict) -> list[str]:
    ok = {s: r for s, r in rows.items() if "error" not in r}
    memmap = ok.get("memmap", {})
    first = next(iter(ok.values()), {})
    out = [f"### {workload}-like: {first.get('row_nbytes', 0)} B per transition", ""]
    speed = []
    for system, r in ok.items():
        row_nbytes = r["row_nbytes"]
        speed.append([system, bc.human(r["append"], "/s"), bc.ratio(r["append"], memmap.get("append")),
                      bc.human(r["extend"], " rows/s"), bc.human(r["extend"] * row_nbytes, "B/s"),
                      f"{100 * r['extend'] * row_nbytes / memcpy:.1f}%", bc.human(r["extend_fill"], " rows/s"),
                      bc.human(r["sample32"], "/s"), bc.human(r["sample256"], "/s"),
                      bc.human(r["sample256"] * 256 * row_nbytes, "B/s"),
                      f"{100 * r['sample256'] * 256 * row_nbytes / memcpy:.1f}%",
                      bc.ratio(r["sample256"], memmap.get("sample256")), f"{r.get('other_load_cores', 0):.2f}"])
    out += [bc.markdown_table(["system", "append", "vs memmap", "extend x1000", "extend B/s", "% memcpy",
                               "extend (fill)", "sample 32 (batch/s)", "sample 256 (batch/s)", "sample 256 B/s",
                               "% memcpy", "sample 256 vs memmap", "other load (cores)"], speed), ""]
    out += [bc.markdown_table(["system", "persistence", "save", "on disk", "reopen hot", "reopen cold",
                               "cold sample 256 (batch/s)", "peak RSS run", "peak RSS reopen", "import"],
                              persistence_rows(ok, imports)), ""]
    out += peer_ratio_table(ok)
    for system, r in rows.items():
        if "error" in r:
            out.append(f"- {system} failed: {r['error']}")
    return out + [""]


def persistence_rows(ok: dict, imports: dict) -> list[list]:
    table = []
    for system, r in ok.items():
        cold = r.get("cold", {})
        table.append([system, SYSTEMS[system].persistence, f"{r['save_s']:.2f} s", f"{r['disk_mb']:.0f} MB",
                      _ms(r.get("reopen_hot_s")), _ms(cold.get("reopen_s")), _rate(cold.get("cold_rate")),
                      f"{r['peak_rss_mb']:.0f} MB", f"{r.get('reopen_peak_rss_mb', 0):.0f} MB",
                      f"{imports.get(system, float('nan')):.2f} s"])
        for key, variant in r.items():
            if key.startswith("cold:"):
                table.append([f"{system} ({key[5:]})", "cold reopen only", "", "", "", _ms(variant.get("reopen_s")),
                              _rate(variant.get("cold_rate")), "", f"{variant.get('peak_rss_mb', 0):.0f} MB", ""])
    return table


def peer_ratio_table(ok: dict) -> list[str]:
    main = ok.get(MAIN)
    if not main:
        return []
    table = []
    for system, r in ok.items():
        if system == MAIN:
            continue
        reopen = (f"{r['reopen_hot_s'] / main['reopen_hot_s']:.1f}x faster"
                  if r.get("reopen_hot_s") and main.get("reopen_hot_s") else "n/a")
        table.append([system] + [bc.ratio(main[k], r[k]) for k in ("append", "extend", "sample32", "sample256")]
                     + [reopen, bc.ratio(main.get("cold", {}).get("cold_rate"), r.get("cold", {}).get("cold_rate"))])
    return [f"{MAIN} relative to each system (above 1x: {MAIN} is faster):", "",
            bc.markdown_table(["vs", "append", "extend x1000", "sample 32", "sample 256", "reopen hot",
                               "cold sample"], table), ""]


_SAMPLERS = {"auto": "expstore (cold reads auto, the default)", "off": "expstore, cold_reads.mode='off'",
             "random": "plain gather, mappings advised MADV_RANDOM"}


def larger_than_ram_table(big: dict) -> list[str]:
    out = [(f"### Larger than RAM: a {big['pool_mb']:.0f} MiB pool ({big['rows']:,} rows of 7 KB frames), "
            f"sampled under a {big['budget_mb']} MiB memory budget"), ""]
    rows = []
    for mode in [m for m in ("auto", "off", "random") if m in big]:
        r = big[mode]
        if "error" in r:
            rows.append([_SAMPLERS[mode], r.get("cap", ""), r["error"], "", "", "", "", "", "no"])
            continue
        rows.append([_SAMPLERS[mode], r["cap"], r["batches"], _rate(r["batches_per_s"]),
                     bc.human(r["batches_per_s"] * 256 * 7070, "B/s"), f"{r['peak_rss_mb']:.0f} MiB",
                     f"{r['rss_anon_mb']:.0f} MiB",
                     f"{r['cgroup_peak_mb']:.0f} MiB" if r.get("cgroup_peak_mb") is not None else "n/a",
                     "yes" if r["within_budget"] else "**no**"])
    note = ("Peak RSS counts the pool's mapped file pages and shared libraries (some charged to other "
            "cgroups); the cgroup's own peak, page cache included, is what the kernel holds to the budget "
            "by reclaiming pool pages. Anonymous RSS is the process's own memory.")
    return out + [bc.markdown_table(["sampler", "cap", "batches of 256", "batches/s", "B/s", "peak RSS",
                                     "anonymous RSS", "cgroup peak (incl. page cache)", "within budget, no OOM"],
                                    rows), "", note, ""]


def targets(args, results, memcpy, big) -> list[str]:
    checks = []

    def get(system, workload, key):
        r = results.get((system, workload), {})
        return r.get(key) if "error" not in r else None

    for workload in args.workloads:
        for main in ("expstore-hdf5", "expstore-zarr"):
            for n in ("32", "256"):
                mine = get(main, workload, f"sample{n}")
                for peer, goal in (("memmap", 0.8), ("torchrl", 2.0), ("h5py", 10.0), ("sb3", 1.0)):
                    _check(checks, f"{workload} {main} sample {n} >= {goal}x {peer}", mine, get(peer, workload,
                                                                                                 f"sample{n}"), goal)
            _check(checks, f"{workload} {main} single append >= 1x sb3 add", get(main, workload, "append"),
                   get("sb3", workload, "append"), 1.0)
            extend = get(main, workload, "extend")
            row_nbytes = get(main, workload, "row_nbytes")
            _check(checks, f"{workload} {main} extend bandwidth >= 0.5x memcpy",
                   extend * row_nbytes if extend else None, memcpy, 0.5)
            reopen, sb3 = get(main, workload, "reopen_hot_s"), get("sb3", workload, "reopen_hot_s")
            _check(checks, f"{workload} {main} reopen >= 100x faster than sb3 pickle load", sb3, reopen, 100)
        cold = results.get(("expstore-hdf5", workload), {})
        mine = cold.get("cold", {}).get("cold_rate")
        plain = results.get(("memmap", workload), {}).get("cold:random", {}).get("cold_rate")
        _check(checks, f"{workload} expstore-hdf5 cold sample >= 10x memmap+MADV_RANDOM", mine, plain, 10)
    if big:
        modes = [m for m in ("auto", "off", "random") if m in big]
        ok = all("error" not in big[m] and big[m]["within_budget"] for m in modes)
        checks.append(["larger than RAM: no OOM, peak within budget", "", "met" if ok else "**missed**"])
        rates = {m: big[m].get("batches_per_s") for m in modes}
        _check(checks, "larger than RAM (cold): expstore >= 10x plain gather advised MADV_RANDOM",
               rates.get("auto"), rates.get("random"), 10)
    return ["### Targets (issue 7)", "", bc.markdown_table(["target", "measured", ""], checks), ""]


def _check(checks: list, label: str, value, base, goal: float) -> None:
    if not value or not base:
        checks.append([label, "n/a", "not measured"])
        return
    measured = value / base
    checks.append([label, f"{measured:.2f}x", "met" if measured >= goal else "**missed**"])


def _ms(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _rate(value) -> str:
    return "n/a" if value is None else bc.human(value)
