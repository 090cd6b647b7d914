"""Markdown/HTML report with PNG plots: J/TH vs hashrate (Pareto frontier), time series, temperature."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import numpy as np

from analyzer.analysis import Analysis, MinerAnalysis, fmt_time, rank, recommend, ruled_out_by_tunes
from analyzer.data import Bins, empty_bins
from analyzer.segments import find_segments, steady_mask
from analyzer.sources import Store
from analyzer.stats import ConfigStats


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def pareto(stats: list[ConfigStats]) -> list[ConfigStats]:
    """Configs no other config beats on both hashrate (higher) and J/TH (lower), by ascending hashrate."""
    pts = [s for s in stats
           if math.isfinite(s.est["hashrate"].value) and math.isfinite(s.est["j_per_th"].value)]
    front = []
    for s in pts:
        h, j = s.est["hashrate"].value, s.est["j_per_th"].value
        dominated = any(o is not s and o.est["hashrate"].value >= h and o.est["j_per_th"].value <= j
                        and (o.est["hashrate"].value > h or o.est["j_per_th"].value < j) for o in pts)
        if not dominated:
            front.append(s)
    return sorted(front, key=lambda s: s.est["hashrate"].value)


def _colors(configs: list[str]) -> dict[str, tuple[float, float, float, float]]:
    cmap = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(sorted(configs))}


def plot_efficiency(m: MinerAnalysis, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for s in m.stats:
        h, j = s.est["hashrate"], s.est["j_per_th"]
        if not (math.isfinite(h.value) and math.isfinite(j.value)):
            continue
        ax.errorbar(h.value, j.value, xerr=h.half or 0, yerr=j.half or 0, fmt="o" if s.stable else "x",
                    color="tab:blue" if s.stable else "tab:red", capsize=3)
        ax.annotate(s.config, (h.value, j.value), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = pareto([s for s in m.stats if s.stable])
    if len(front) > 1:
        ax.plot([s.est["hashrate"].value for s in front], [s.est["j_per_th"].value for s in front], "--",
                color="tab:green", label="Pareto frontier (stable)")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("hashrate (GH/s)")
    ax.set_ylabel("efficiency (J/TH, lower is better)")
    ax.set_title(f"{m.miner}: efficiency vs hashrate (95 % intervals; x = unstable)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


PLOT_BINS = 50_000  # points per time-series plot; longer histories are plotted in wider bins


def plot_bins(a: Analysis, store: Store, miner: str) -> tuple[Bins, np.ndarray]:
    """The miner's bins for the plots, and which of them are steady: `--bin` wide up to PLOT_BINS of them,
    wider for long histories (a year of 30-s bins is a million points; the statistics use all of them)."""
    span = store.span(miner)
    if span is None:
        return empty_bins(miner, a.width), np.zeros(0, dtype=bool)
    lo = span[0] if a.since is None else a.since
    hi = span[1] + 1.0 if a.until is None else a.until
    width = a.width * max(1, math.ceil((hi - lo) / a.width / PLOT_BINS))
    b = store.bins(miner, a.since, a.until, width)
    segs = find_segments(b, store.events(miner, a.since, a.until), a.policy)
    return b, steady_mask(len(b), segs)


def plot_timeseries(miner: str, b: Bins, steady: np.ndarray, path: Path) -> None:
    colors = _colors(sorted({str(c) for c in b.config}))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5), dpi=100, sharex=True)
    span = float(b.start[-1] - b.start[0]) if len(b) else 0.0
    unit, scale = ("minutes", 60.0) if span < 2 * 3600 else ("hours", 3600.0) if span < 3 * 86400 else ("days", 86400.0)
    t = (b.start - b.start[0]) / scale if len(b) else b.start
    for cfg, col in colors.items():
        sel = (b.config == cfg) & steady
        if sel.any():  # a config seen only warming up (a tune's rejected candidate) is grey, not in the legend
            ax1.plot(t[sel], b.mean["hashrate"][sel], ".", ms=2, color=col, label=cfg)
            ax2.plot(t[sel], b.mean["asic_temp"][sel], ".", ms=2, color=col)
    if not steady.all():
        ax1.plot(t[~steady], b.mean["hashrate"][~steady], ".", ms=2, color="0.7", label="warm-up (excluded)")
        ax2.plot(t[~steady], b.mean["asic_temp"][~steady], ".", ms=2, color="0.7")
    ax1.set_ylabel("hashrate (GH/s)")
    ax2.set_ylabel("chip (°C)")
    ax2.set_xlabel(f"{unit} since {fmt_time(float(b.start[0])) if len(b) else ''}")
    ax1.legend(loc="best", fontsize=7, markerscale=4, ncol=2)
    ax1.set_title(f"{miner}: {b.width:g}-s bins coloured by clock config")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_temp_power(miner: str, b: Bins, steady: np.ndarray, path: Path) -> None:
    colors = _colors(sorted({str(c) for c in b.config}))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for cfg, col in colors.items():
        sel = (b.config == cfg) & steady
        if sel.any():
            ax.plot(b.mean["power"][sel], b.mean["asic_temp"][sel], ".", ms=3, color=col, label=cfg,
                    alpha=0.6)
    ax.set_xlabel("power (W)")
    ax.set_ylabel("chip temperature (°C)")
    ax.set_title(f"{miner}: chip temperature vs power (steady bins)")
    ax.legend(loc="best", fontsize=7, markerscale=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cell(e_value: float, half: float | None, d: int) -> str:
    if not math.isfinite(e_value):
        return "—"
    return f"{e_value:.{d}f} ± {half:.{d}f}" if half is not None else f"{e_value:.{d}f} (no CI)"


def _tables(a: Analysis, store: Store, tolerance: float) -> dict[str, tuple[list[str], list[list[str]], list[str]]]:
    from analyzer.cli import _fmt_pick, ruled_lines, stats_rows

    ruled = ruled_out_by_tunes(a, store)
    out = {}
    for name, m in a.miners.items():
        head, rows = stats_rows(rank(m.stats, "efficiency", include_unstable=True))
        picks = [_fmt_pick(p) for p in recommend(m.stats, tolerance)]
        if name in ruled:
            picks.append("\n".join(ruled_lines(ruled[name])))
        out[name] = (head, rows, picks)
    return out


def write_report(a: Analysis, store: Store, out_dir: Path, fmt: str, tolerance: float = 5.0) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, list[tuple[str, str]]] = {}
    for name, m in a.miners.items():
        if not m.bins:
            continue
        slug = _slug(name)
        imgs = [(f"{slug}-efficiency.png", "J/TH vs hashrate with the Pareto frontier"),
                (f"{slug}-timeseries.png", "hashrate and chip temperature over time, by config"),
                (f"{slug}-temp-power.png", "chip temperature vs power")]
        plot_efficiency(m, out_dir / imgs[0][0])
        b, steady = plot_bins(a, store, name)  # one miner's bins at a time
        plot_timeseries(name, b, steady, out_dir / imgs[1][0])
        plot_temp_power(name, b, steady, out_dir / imgs[2][0])
        del b, steady
        images[name] = imgs
    tables = _tables(a, store, tolerance)
    files = [out_dir / f for imgs in images.values() for f, _ in imgs]
    intro = (f"Source {a.store}; {a.range_text()}; {a.width:g}-s bins. Values are "
             f"means over steady time with 95 % intervals from batch means longer than the measured "
             f"autocorrelation time (5-s readings are not independent). J/TH is total energy over total "
             f"hashes. Warm-up after every change point is excluded. 'Best balance' = highest hashrate among "
             f"stable configs whose J/TH is within {tolerance:g} % of the best.")
    if fmt in ("md", "both"):
        lines = ["# bitaxe-analyze report", "", intro, ""]
        for name, (head, rows, picks) in tables.items():
            m = a.miners[name]
            lines += [f"## {name}", "", f"{len(m.segments)} segments, "
                      f"{sum(s.warmup_s for s in m.segments) / 60:.0f} min of warm-up excluded.", "",
                      "### Recommendations", ""]
            lines += [f"- {p.replace(chr(10), '<br>')}" for p in picks]
            lines += ["", "### All configs by efficiency", "", "| " + " | ".join(head) + " |",
                      "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines.append("")
            for f, alt in images.get(name, []):
                lines += [f"![{alt}]({f})", ""]
        p = out_dir / "report.md"
        p.write_text("\n".join(lines))
        files.insert(0, p)
    if fmt in ("html", "both"):
        e = html.escape
        parts = ["<!doctype html><html><head><meta charset='utf-8'><title>bitaxe-analyze report</title>",
                 "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:"
                 "collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
                 "td:nth-child(2),th{text-align:left}img{max-width:100%}</style></head><body>",
                 "<h1>bitaxe-analyze report</h1>", f"<p>{e(intro)}</p>"]
        for name, (head, rows, picks) in tables.items():
            parts += [f"<h2>{e(name)}</h2>", "<h3>Recommendations</h3><ul>"]
            parts += [f"<li>{e(pk).replace(chr(10), '<br>')}</li>" for pk in picks]
            parts += ["</ul><h3>All configs by efficiency</h3><table><tr>"
                      + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</table>")
            for f, alt in images.get(name, []):
                parts.append(f"<p><img src='{e(f)}' alt='{e(alt)}'></p>")
        parts.append("</body></html>")
        p = out_dir / "report.html"
        p.write_text("\n".join(parts))
        files.insert(0, p)
    return files
