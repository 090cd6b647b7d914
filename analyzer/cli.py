"""bitaxe-analyze: rank clock configs by efficiency (honest intervals); compare, recommend, export, report."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from analyzer.analysis import (
    RANK_KEYS,
    Analysis,
    Pick,
    analyze,
    fmt_time,
    parse_duration,
    parse_time,
    rank,
    recommend,
    ruled_out_by_tunes,
    thin,
)
from analyzer.columns import label, unit
from analyzer.ledger import LedgerError, default_path
from analyzer.segments import WarmupPolicy
from analyzer.sources import InfluxStore, SqliteStore, Store, StoreError, open_source
from analyzer.stats import ConfigStats, Difference, Estimate, Gates, difference
from bridge import __version__
from bridge.reading import ClockConfig

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = """\b
Sources: --source sqlite:data/bitaxe.db | --source influxdb:http://127.0.0.1:8086/bitaxe
         --config config.yaml (the bridge's; its influxdb section wins over sqlite)
Times:   --since 7d | 12h | 2026-11-01 | 2026-11-01T08:00:00Z   (UTC)
"""


class Fail(click.ClickException):
    """A clear message and exit status 1, never a traceback."""


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _positive_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    seconds = _duration(ctx, param, value)
    if seconds is not None and seconds <= 0:
        raise click.BadParameter(f'"{value}" must be longer than 0, e.g. 30s')
    return seconds


def common(fn: F) -> F:
    """Options every command takes: the store, the time range, warm-up, gates and output."""
    opts = [
        click.option("--source", "-s", metavar="KIND:WHERE",
                     help="sqlite:PATH or influxdb:http://HOST:PORT/DATABASE  [default: the store of "
                          "--config, else data/bitaxe.db]"),
        click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
                     help="the bridge's config.yaml: its influxdb (preferred) or sqlite section is the "
                          "source"),
        click.option("--since", metavar="WHEN",
                     help="start: 7d, 12h (back from now) or ISO time; default all"),
        click.option("--until", metavar="WHEN", help="end: like --since; default now"),
        click.option("--warmup", default="auto", show_default=True, metavar="auto|DURATION",
                     help="discarded after every change point (config change, restart, overheat, firmware "
                          "change, gap, offline): 'auto' waits until the chip temperature settles "
                          "(|slope| < --settle-slope over 5 min), or a fixed duration like 300s"),
        click.option("--min-warmup", default="120s", show_default=True, callback=_duration,
                     metavar="DURATION",
                     help="auto warm-up: at least this long"),
        click.option("--max-warmup", default="15m", show_default=True, callback=_duration, metavar="DURATION",
                     help="auto warm-up: at most this long"),
        click.option("--settle-slope", default=0.15, show_default=True,
                     type=click.FloatRange(min=0, min_open=True),
                     help="auto warm-up: chip temperature slope (°C/min) that counts as settled"),
        click.option("--gap", default="120s", show_default=True, callback=_positive_duration, metavar="DURATION",
                     help="a hole in the data longer than this starts a new segment (with warm-up)"),
        click.option("--bin", "bin_width", default="30s", show_default=True, callback=_positive_duration,
                     metavar="DURATION",
                     help="aggregation bin; the database averages readings per bin and config"),
        click.option("--fetch", type=click.Choice(["db", "raw"]), default="db", show_default=True,
                     help="db: aggregate in the database (GROUP BY); raw: pull every reading into Python"),
        click.option("--max-error", default=2.0, show_default=True, type=click.FloatRange(0, 100),
                     help="unstable above this ASIC error rate (%)"),
        click.option("--min-hashrate", default=90.0, show_default=True, type=click.FloatRange(0, 100),
                     help="unstable below this % of the expected hashrate"),
        click.option("--cache", default="auto", show_default=True, metavar="auto|off|PATH",
                     help="analysis cache directory: a run over the whole history reads only what is new since "
                          "the last one (auto: <db>.analysis beside a SQLite store, else ~/.cache/bitaxe-analyze)"),
        click.option("--rebuild", is_flag=True, help="delete the analysis cache first and read everything again"),
        click.option("--json", "as_json", is_flag=True, help="machine-readable JSON on stdout"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _open(kw: dict[str, Any]) -> Store:
    try:
        return open_source(kw["source"], kw["config_path"])
    except StoreError as exc:
        raise Fail(str(exc)) from None


def _cache(kw: dict[str, Any], store: Store) -> Path | None:
    choice = kw["cache"]
    if choice == "off":
        return None
    path = Path(choice) if choice != "auto" else default_path(
        store.name, store.path if isinstance(store, SqliteStore) else None)
    if kw["rebuild"] and path.exists():
        try:
            shutil.rmtree(path)
        except OSError as exc:
            raise Fail(f"cannot delete the analysis cache {path} ({exc.strerror or exc}); delete it by hand") \
                from None
    return path


def _policy(kw: dict[str, Any]) -> WarmupPolicy:
    w = kw["warmup"]
    fixed = None
    if w != "auto":
        try:
            fixed = parse_duration(w)
        except ValueError as exc:
            raise click.BadParameter(f"{exc}, or 'auto'", param_hint="--warmup") from None
    if kw["min_warmup"] > kw["max_warmup"]:
        raise click.BadParameter("must not exceed --max-warmup", param_hint="--min-warmup")
    return WarmupPolicy(min_s=kw["min_warmup"], max_s=kw["max_warmup"], slope_c_per_min=kw["settle_slope"],
                        fixed_s=fixed, gap_s=kw["gap"])


def _times(kw: dict[str, Any]) -> tuple[float | None, float | None]:
    try:
        since = parse_time(kw["since"]) if kw["since"] else None
        until = parse_time(kw["until"]) if kw["until"] else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since/--until") from None
    if since is not None and until is not None and since >= until:
        raise Fail(f"--since {kw['since']} is not before --until {kw['until']}")
    return since, until


def _progress(items: list[str]) -> Iterable[str]:
    if not sys.stderr.isatty():
        return items
    if len(items) < 2:
        click.echo(f"querying {', '.join(items)} …", err=True)
        return items

    def gen() -> Iterator[str]:
        with click.progressbar(items, label="querying miners", file=sys.stderr) as bar:
            yield from bar

    return gen()


def run(kw: dict[str, Any], miner: str | None, *, since: float | None = None, until: float | None = None
        ) -> Analysis:
    store = _open(kw)
    try:
        policy = _policy(kw)
        s, u = _times(kw)
        since = since if since is not None else s
        until = until if until is not None else u
        known = store.miners()
        if not known:
            raise Fail(f"{store.name}: no readings at all; is the bridge writing to this store?")
        if miner is not None and miner not in known:
            raise Fail(f'miner "{miner}" has no readings in {store.name}; known miners: {", ".join(known)}')
        miners = [miner] if miner else known
        gates = Gates(max_error_pct=kw["max_error"], min_hashrate_ratio=kw["min_hashrate"] / 100.0)
        result = analyze(store, miners, since=since, until=until, width=kw["bin_width"], policy=policy,
                         gates=gates, fetch=kw["fetch"], cache=_cache(kw, store), progress=_progress)
        if not any(m.bins for m in result.miners.values()):
            raise Fail(_nothing_to_analyze(store, miner, miners, since, until))
    except (StoreError, LedgerError) as exc:
        raise Fail(str(exc)) from None
    finally:
        store.close()
    return result


def _nothing_to_analyze(store: Store, miner: str | None, miners: list[str], since: float | None,
                        until: float | None) -> str:
    """Why a time range gave no readings: there are none in it, or every one is flagged implausible."""
    between = f"between {fmt_time(since)} and {fmt_time(until)} in {store.name}"
    flagged = {m: n for m in miners if (n := store.flagged(m, since, until))}
    if flagged:
        counts = " and ".join(f'{n} of miner "{m}"' for m, n in flagged.items())
        total = sum(flagged.values())
        return (f"{total} reading{'s' if total > 1 else ''} ({counts}) {between}, all flagged implausible "
                "(a value outside its plausible range; the bridge logs which); flagged readings never enter an "
                "analysis. Choose a range where the miner reported sane values")
    who = f'miner "{miner}"' if miner else "any miner"
    spans = [(m, span) for m in miners if (span := store.span(m)) is not None]
    if not spans and isinstance(store, InfluxStore) and not store.retention_policy:
        # The miner tags are there (SHOW TAG VALUES spans policies), the readings are not: another policy.
        return (f"no readings for {who} in {store.name}'s default retention policy; if the bridge writes into "
                "another one (influxdb.retention_policy), add ?rp=POLICY to --source or use --config")
    held = "; ".join(f'"{m}" has readings from {fmt_time(a)} to {fmt_time(b)}' for m, (a, b) in spans[:5])
    return f"no readings for {who} {between}" + (f" ({held})" if held else "") + "; widen --since/--until"


# ------------------------------------------------------------------------------------------ formatting
def fmt_est(e: Estimate, digits: int = 2) -> str:
    if not math.isfinite(e.value):
        return "—"
    h = e.half
    if h is None:
        return f"{e.value:.{digits}f} (no CI)"
    return f"{e.value:.{digits}f} ±{h:.{digits}f}"


def fmt_hours(s: float) -> str:
    if s > 1000 * 3600:
        return "> 1000 h (practically equal)"
    if s < 90:  # a short (demo, time-scaled) visit read "0 min"
        return f"{s:.0f} s"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


COLUMNS: tuple[tuple[str, int], ...] = (("j_per_th", 2), ("hashrate", 1), ("power", 2), ("gh_per_w", 2),
                                       ("asic_temp", 1), ("vr_temp", 1), ("error_pct", 2), ("reject_pct", 2))


# Short table headers; the long names and units come from bridge.metrics.
SHORT = {"asic_temp": "chip", "vr_temp": "VR", "error_pct": "err", "reject_pct": "reject"}


def header(key: str) -> str:
    return f"{SHORT[key]} {unit(key)}" if key in SHORT else unit(key) or label(key)


def stats_rows(stats: list[ConfigStats]) -> tuple[list[str], list[list[str]]]:
    head = ["#", "config", "time", "samples", *(header(k) for k, _ in COLUMNS), "status"]
    rows = []
    for i, s in enumerate(stats, 1):
        status = "stable" if s.stable else "UNSTABLE: " + "; ".join(s.flags)
        if any(not s.est[k].has_interval for k, _ in COLUMNS[:2]):
            status += " (too little data for an interval)"
        rows.append([str(i), s.config, fmt_hours(s.time_s), str(s.samples),
                     *(fmt_est(s.est[k], d) for k, d in COLUMNS), status])
    return head, rows


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(x.rstrip() for x in out)


def _header(a: Analysis) -> str:
    w = a.policy
    warm = f"fixed {w.fixed_s:g} s" if w.fixed_s is not None else (
        f"auto (≥{w.min_s:g} s, ≤{w.max_s:g} s, until |dT/dt| < {w.slope_c_per_min:g} °C/min)")
    return (f"source {a.store}, {a.range_text()}, bins {a.width:g} s ({a.fetch}), "
            f"warm-up {warm}\nvalues are means over steady time ±95 % interval (batch means, autocorrelation-"
            f"aware); J/TH = total energy / total hashes")


def _emit(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _parse_cfg(text: str) -> str:
    try:
        return ClockConfig.parse(text).tag
    except ValueError as exc:
        raise Fail(str(exc)) from None


# --------------------------------------------------------------------------------------------- commands
@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bitaxe-analyze", message="%(prog)s %(version)s")
def main() -> None:
    """Rank a Bitaxe's clock configs (MHz@mV) by efficiency, with intervals you can trust.

    Readings are cut into segments (one miner, one config, one firmware, no gaps). After every change
    point the warm-up is discarded, so transients never enter a mean. Intervals use batch means longer
    than the measured autocorrelation time: 5-s readings are not independent samples.
    """


@main.command("rank", epilog=EPILOG, short_help="Clock configs per miner, best first, with 95 % intervals.")
@click.option("--miner", "-m", help="only this miner (configured name)")
@click.option("--by", type=click.Choice(list(RANK_KEYS)), default="efficiency", show_default=True,
              help="efficiency: lowest J/TH; hashrate: highest GH/s; temperature: coolest chip")
@click.option("--all", "include_all", is_flag=True,
              help="include unstable configs (listed after stable ones)")
@common
def rank_cmd(miner: str | None, by: str, include_all: bool, **kw: Any) -> None:
    """Table of clock configs per miner, best first, with 95 % intervals.

    Only stable configs unless --all: unstable means ASIC error rate above --max-error, an overheat, the
    hashrate below --min-hashrate % of expected, or not hashing more than 1 % of the time.
    """
    a = run(kw, miner)
    if kw["as_json"]:
        _emit({"source": a.store, "by": by, "miners": {
            name: [s.to_dict() for s in rank(m.stats, by, include_all)] for name, m in a.miners.items()}})
        return
    click.echo(_header(a))
    for name, m in a.miners.items():
        ranked = rank(m.stats, by, include_all)
        hidden = len([s for s in m.stats if not s.stable]) if not include_all else 0
        n_seg = f"{len(m.segments)} segment" + ("" if len(m.segments) == 1 else "s")
        click.echo(f"\nminer {name}: {n_seg}, ranked by {by}")
        if not ranked:
            if m.segments and all(seg.steady >= seg.hi for seg in m.segments):
                click.echo(f"  every segment is still in its warm-up ({n_seg}); collect "
                           "more data, or shorten it with --warmup 60s / --min-warmup")
            else:
                click.echo("  no stable config with data" + (" (try --all)" if hidden else ""))
            continue
        click.echo(table(*stats_rows(ranked)))
        if hidden:
            click.echo(f"({hidden} unstable config(s) hidden; --all shows them)")


def _fmt_pick(p: Pick) -> str:
    if p.best is None:
        return f"{p.title}: none ({p.rule})"
    e = p.best.est[p.key]
    u = unit(p.key)
    s = f"{p.title}: {p.best.config}  {fmt_est(e)} {u}  [{p.rule}]"
    if p.runner_up is None or p.diff is None:
        return s + "\n    no runner-up to compare with"
    d = p.diff
    h = d.half
    margin = f"{abs(d.diff):.2f} {u}" + (f" (95 % CI of the difference ±{h:.2f})" if h is not None else "")
    if d.significant is None:
        verdict = "too little data to say whether the difference is real"
    elif d.significant:
        verdict = "significant"
    else:
        verdict = "NOT significant: the two are statistically tied" + (
            f"; about {fmt_hours(d.more_time_s)} more at each would settle it" if d.more_time_s else "")
    return s + f"\n    runner-up {p.runner_up.config} by {margin}: {verdict}"


@main.command("recommend", epilog=EPILOG,
              short_help="Best efficiency, hashrate and balance per miner, with margins.")
@click.option("--miner", "-m", help="only this miner")
@click.option("--balance-tolerance", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="'balance' = the highest hashrate among stable configs whose J/TH is within this "
                   "many % of the best J/TH")
@common
def recommend_cmd(miner: str | None, balance_tolerance: float, **kw: Any) -> None:
    """Best efficiency, best hashrate and best balance among stable configs, with the margin to the runner-up.

    Only configs with enough steady data for an interval compete. Best balance is defined as:
    maximise hashrate subject to J/TH ≤ (1 + tolerance) × best J/TH.
    A margin is "significant" when the 95 % interval of the difference excludes zero.
    """
    a = run(kw, miner)
    picks = {name: recommend(m.stats, balance_tolerance) for name, m in a.miners.items()}
    store = _open(kw)  # the tunes' session events, for configs too thin to compete
    try:
        ruled = ruled_out_by_tunes(a, store)
    except StoreError as exc:
        raise Fail(str(exc)) from None
    finally:
        store.close()
    if kw["as_json"]:
        _emit({"source": a.store, "balance_tolerance_pct": balance_tolerance,
               "miners": {n: [p.to_dict() for p in ps] for n, ps in picks.items()},
               "ruled_out_by_tune": ruled})
        return
    click.echo(_header(a))
    for name, ps in picks.items():
        click.echo(f"\nminer {name}:")
        for p in ps:
            click.echo("  " + _fmt_pick(p).replace("\n", "\n  "))
        for line in ruled_lines(ruled.get(name, {})):
            click.echo("  " + line)
        rest = [c for c in thin(a.miners[name]) if c not in ruled.get(name, {})]
        if rest:
            click.echo(f"  not considered (too little data for an interval): {', '.join(rest)}")


def ruled_lines(ruled: dict[str, dict[str, str]]) -> list[str]:
    """The configs a tune ruled out, as `recommend` and the report show them."""
    if not ruled:
        return []
    return ["ruled out by an auto-tune (too little steady data here for an interval):",
            *(f"  {c:<10} {o['outcome']} (tune {o['tune']})" for c, o in ruled.items())]


@main.command("compare", epilog=EPILOG, short_help="A/B comparison of two clock configs of one miner.")
@click.option("--miner", "-m", required=True, help="the miner")
@click.argument("config_a")
@click.argument("config_b")
@common
def compare_cmd(miner: str, config_a: str, config_b: str, **kw: Any) -> None:
    """A/B comparison of two clock configs (e.g. 525@1150 600@1200): differences A − B with 95 % intervals.

    When a difference is not significant, estimates how much more time at each config (from the
    observed variance and correlation time) would make a difference of the observed size significant
    with 80 % probability.
    """
    ta, tb = _parse_cfg(config_a), _parse_cfg(config_b)
    a = run(kw, miner)
    stats = {s.config: s for s in a.miners[miner].stats}
    for t in (ta, tb):
        if t not in stats:
            raise Fail(f'miner "{miner}" has no steady data at config {t}; configs seen: '
                       f"{', '.join(sorted(stats)) or 'none'}")
    sa, sb = stats[ta], stats[tb]
    diffs = [difference(k, sa.est[k], sb.est[k], sa.time_s, sb.time_s)
             for k in ("j_per_th", "hashrate", "power", "asic_temp", "vr_temp", "error_pct")]
    if kw["as_json"]:
        _emit({"source": a.store, "miner": miner, "a": sa.to_dict(), "b": sb.to_dict(),
               "differences": [d.to_dict() for d in diffs], "verdict": _verdict(ta, tb, diffs[0])})
        return
    click.echo(_header(a))
    click.echo(f"\nminer {miner}: A = {ta} ({fmt_hours(sa.time_s)} steady, {sa.segments} segment(s), "
               f"{'stable' if sa.stable else 'UNSTABLE: ' + '; '.join(sa.flags)})")
    click.echo(f"{' ' * (len(miner) + 7)}B = {tb} ({fmt_hours(sb.time_s)} steady, {sb.segments} segment(s), "
               f"{'stable' if sb.stable else 'UNSTABLE: ' + '; '.join(sb.flags)})\n")
    rows = []
    for d in diffs:
        h = d.half
        sig = "—" if d.significant is None else ("yes" if d.significant else "no")
        more = fmt_hours(d.more_time_s) if d.more_time_s else ""
        rows.append([f"{label(d.key)} {unit(d.key)}", fmt_est(d.a), fmt_est(d.b),
                     f"{d.diff:+.2f}" + (f" ±{h:.2f}" if h is not None else " (no CI)"), sig, more])
    click.echo(table(["metric", "A", "B", "A − B", "significant", "more time at each"], rows))
    click.echo("\n" + _verdict(ta, tb, diffs[0]))


def _verdict(ta: str, tb: str, d: Difference) -> str:
    if d.significant is None:
        return "Verdict: too little steady data at one of the configs for an interval; run each longer."
    if d.significant:
        better, worse = (ta, tb) if d.diff < 0 else (tb, ta)
        return (f"Verdict: {better} is more efficient than {worse} by {abs(d.diff):.2f} J/TH "
                f"(95 % CI ±{d.half:.2f}).")
    more = f" About {fmt_hours(d.more_time_s)} more at each config would settle a difference this size." \
        if d.more_time_s else ""
    return f"Verdict: no significant efficiency difference between {ta} and {tb} (A − B = {d.diff:+.2f} " \
           f"±{d.half:.2f} J/TH).{more}"


def _session_range(kw: dict[str, Any], session: str) -> tuple[str | None, float, float | None]:
    store = _open(kw)
    try:
        events = store.events(None, None, None)
    except StoreError as exc:
        raise Fail(str(exc)) from None
    finally:
        store.close()
    starts = [e for e in events if e.kind == "session_start" and str(e.data.get("session")) == session]
    if not starts:
        known = sorted({str(e.data.get("session")) for e in events if e.kind == "session_start"})
        raise Fail(f'session "{session}" not found (no session_start event); known: '
                   f'{", ".join(known) or "none"}')
    st = starts[0]
    ends = [e for e in events if e.kind == "session_end" and str(e.data.get("session")) == session
            and e.time >= st.time]
    return st.miner, st.time, (ends[0].time if ends else None)


@main.command("export", epilog=EPILOG)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="output format (CSV flattens nested fields to name_subname columns)")
@click.option("--miner", "-m", help="only this miner")
@click.option("--clock", "config_tag", metavar="MHZ@MV",
              help="only this clock config, e.g. 575@1200 (--config is the bridge's config file)")
@click.option("--session", metavar="ID", help="only the time of this session (session_start … session_end)")
@click.option("--raw", is_flag=True, help="raw readings instead of per-config statistics")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="file to write (default stdout)")
@common
def export_cmd(fmt: str, miner: str | None, config_tag: str | None, session: str | None, raw: bool,
               out: str | None, **kw: Any) -> None:
    """Per-config statistics (or --raw readings) as CSV or JSON (--json is --format json)."""
    if kw["as_json"]:
        fmt = "json"
    tag = _parse_cfg(config_tag) if config_tag else None
    since = until = None
    if session:
        s_miner, since, until = _session_range(kw, session)
        miner = miner or s_miner
    if raw:
        records = _raw_records(kw, miner, tag, since, until)
    else:
        a = run(kw, miner, since=since, until=until)
        records = [s.to_dict() for m in a.miners.values() for s in m.stats if tag in (None, s.config)]
    if fmt == "json":
        text = json.dumps(records, indent=2, default=str) + "\n"
    else:
        records = [_flat(r) for r in records]
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for r in records for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(records)
        text = buf.getvalue()
    if out:
        try:
            Path(out).write_text(text)
        except OSError as exc:
            raise Fail(f"cannot write {out} ({exc.strerror or exc}); choose another --out") from None
        click.echo(f"wrote {len(records)} rows to {out}", err=True)
    else:
        click.echo(text, nl=False)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}_"))
        elif isinstance(v, list):
            out[prefix + k] = "; ".join(map(str, v))
        else:
            out[prefix + k] = v
    return out


def _raw_records(kw: dict[str, Any], miner: str | None, tag: str | None, since: float | None,
                 until: float | None) -> list[dict[str, Any]]:
    store = _open(kw)
    try:
        s0, u0 = _times(kw)
        since = since if since is not None else s0
        until = until if until is not None else u0
        known = store.miners()
        if miner is not None and miner not in known:
            raise Fail(f'miner "{miner}" has no readings in {store.name}; known miners: {", ".join(known)}')
        records: list[dict[str, Any]] = []
        names = [miner] if miner else known
        for name in names:
            s = store.samples(name, since, until)
            for i in range(len(s)):
                if tag is not None and s.config[i] != tag:
                    continue
                rec: dict[str, Any] = {"time": float(s.time[i]), "miner": name, "config": s.config[i],
                                       "firmware": s.firmware[i]}
                rec.update({k: (None if math.isnan(v[i]) else float(v[i])) for k, v in s.fields.items()})
                records.append(rec)
        if not records:
            flagged = sum(store.flagged(name, since, until) for name in names)
            raise Fail("no readings match the miner/config/session/time filters" + (
                f"; {flagged} reading(s) in that time range are flagged implausible and left out" if flagged
                else ""))
    except StoreError as exc:
        raise Fail(str(exc)) from None
    finally:
        store.close()
    return records


@main.command("report", epilog=EPILOG, short_help="Markdown/HTML report with tables and plots.")
@click.option("--format", "fmt", type=click.Choice(["md", "html", "both"]), default="both", show_default=True,
              help="report.md, report.html or both (the PNG plots are written either way)")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="report", show_default=True,
              help="directory for report.md / report.html and the PNG plots")
@click.option("--miner", "-m", help="only this miner")
@click.option("--balance-tolerance", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="see `recommend --help`")
@common
def report_cmd(fmt: str, out_dir: str, miner: str | None, balance_tolerance: float, **kw: Any) -> None:
    """Markdown and/or HTML report: ranking tables, recommendations and plots (J/TH vs hashrate with the
    Pareto frontier, time series coloured by config, chip temperature vs power)."""
    from analyzer.report import write_report

    out = Path(out_dir)
    try:  # before the analysis, which can take a while on a long history
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Fail(f"cannot create the report directory {out} ({exc.strerror or exc}); choose another --out") \
            from None
    a = run(kw, miner)
    store = _open(kw)  # the plots read the bins again, one miner at a time
    try:
        files = write_report(a, store, out, fmt, balance_tolerance)
    except OSError as exc:
        raise Fail(f"cannot write the report into {out} ({exc.strerror or exc}); choose another --out") from None
    except StoreError as exc:
        raise Fail(str(exc)) from None
    finally:
        store.close()
    if kw["as_json"]:
        _emit({"files": [str(f) for f in files]})
    else:
        for f in files:
            click.echo(str(f))


try:  # the storage engineer's `session` commands, when present
    from analyzer.sessions import session as _session_group

    main.add_command(_session_group)
except ImportError:
    pass


if __name__ == "__main__":
    main()
