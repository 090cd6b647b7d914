"""Writes the dashboards in this folder (Grafana for InfluxDB and for Prometheus, Chronograf) from one panel list.

Run `python dashboards/generate.py` after changing a panel; tests/observe/test_dashboards.py checks the
JSON files are what this writes and runs every query in them against real InfluxDB 1.6 and Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DB = "bitaxe"  # the InfluxDB database the Chronograf queries name (influxdb.database / bucket in the config)
RP = "autogen"


@dataclass(frozen=True, kw_only=True)
class Series:
    """One time-series panel: a field per miner (InfluxDB) and the matching Prometheus family."""

    title: str
    field: str
    family: str
    unit: str  # Grafana unit id
    scale: str = ""  # PromQL factor to the field's unit, e.g. "100 * " for a ratio shown in %


SERIES: tuple[Series, ...] = (
    Series(title="Hashrate", field="hashrate", family="bitaxe_hashrate_gigahashes_per_second", unit="suffix:GH/s"),
    Series(title="Power", field="power", family="bitaxe_power_watts", unit="watt"),
    Series(title="Efficiency (J/TH)", field="j_per_th", family="bitaxe_joules_per_terahash", unit="none"),
    Series(title="ASIC temperature", field="asic_temp", family="bitaxe_asic_temperature_celsius", unit="celsius"),
    Series(title="VR temperature", field="vr_temp", family="bitaxe_vr_temperature_celsius", unit="celsius"),
    Series(title="ASIC error rate", field="error_pct", family="bitaxe_error_ratio", unit="percent", scale="100 * "),
    Series(title="Fan", field="fan_pct", family="bitaxe_fan_ratio", unit="percent", scale="100 * "),
)

# ---- Grafana ------------------------------------------------------------------------------------------

MINER_RE = '"miner" =~ /^$miner$/'


def _grid(i: int, w: int, h: int, per_row: int, y0: int) -> dict[str, int]:
    return {"x": (i % per_row) * w, "y": y0 + (i // per_row) * h, "w": w, "h": h}


def _row(title: str, y: int, pid: int) -> dict[str, Any]:
    return {"type": "row", "title": title, "id": pid, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "panels": []}


def _panel(pid: int, kind: str, title: str, grid: dict[str, int], ds: dict[str, str], targets: list[dict[str, Any]],
           unit: str = "none", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "type": kind, "title": title, "gridPos": grid, "datasource": ds,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "targets": targets, **extra}


def _overview(ds: dict[str, str], stats: list[tuple[str, dict[str, Any], str]]) -> list[dict[str, Any]]:
    """The "Fleet overview" row: one stat panel per (title, target, unit), four in a row."""
    panels: list[dict[str, Any]] = [_row("Fleet overview", 0, 1)]
    for i, (title, target, unit) in enumerate(stats):
        panels.append(_panel(i + 2, "stat", title, _grid(i, 6, 4, 4, 1), ds, [target], unit))
    return panels


def _influx(query: str, ref: str = "A", fmt: str = "time_series", alias: str = "") -> dict[str, Any]:
    target = {"refId": ref, "rawQuery": True, "query": query, "resultFormat": fmt}
    if alias:
        target["alias"] = alias
    return target


def _prom(expr: str, ref: str = "A", legend: str = "", instant: bool = False) -> dict[str, Any]:
    return {"refId": ref, "expr": expr, "legendFormat": legend, "instant": instant, "range": not instant,
            "format": "table" if instant else "time_series"}


def _dashboard(title: str, uid: str, ds_type: str, miner_var: dict[str, Any], panels: list[dict[str, Any]],
               annotations: list[dict[str, Any]], extra_vars: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {
        "title": title, "uid": uid, "tags": ["bitaxe", "bitaxe-bridge"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": annotations},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": ds_type,
             "current": {}, "hide": 0},
            *extra_vars,
            miner_var,
        ]},
        "panels": panels,
    }


def grafana_influxql() -> dict[str, Any]:
    ds = {"type": "influxdb", "uid": "${datasource}"}
    latest = (f'SELECT last("hashrate") AS "ghs", last("power") AS "w" FROM "bitaxe" WHERE $timeFilter AND '
              f'{MINER_RE} GROUP BY "miner"')
    stats = [
        ("Fleet hashrate", f'SELECT sum("ghs") FROM ({latest})', "suffix:GH/s"),
        ("Fleet power", f'SELECT sum("w") FROM ({latest})', "watt"),
        ("Fleet efficiency (J/TH)", f'SELECT 1000 * sum("w") / sum("ghs") FROM ({latest})', "none"),
        ("Miners reporting", f'SELECT count("ghs") FROM ({latest})', "none"),
    ]
    panels = _overview(ds, [(title, _influx(query), unit) for title, query, unit in stats])
    pid = len(panels) + 1
    now = ('SELECT last("hashrate") AS "GH/s", last("expected_hashrate") AS "expected GH/s", last("power") AS "W", '
           'last("j_per_th") AS "J/TH", last("asic_temp") AS "chip °C", last("vr_temp") AS "VR °C", '
           'last("error_pct") AS "errors %", last("fan_pct") AS "fan %", last("frequency") AS "MHz", '
           f'last("core_voltage") AS "mV", last("uptime") AS "uptime s" FROM "bitaxe" WHERE $timeFilter AND {MINER_RE} '
           'GROUP BY "miner"')
    panels.append(_panel(pid, "table", "Miners now", {"x": 0, "y": 5, "w": 24, "h": 7}, ds,
                         [_influx(now, fmt="table")]))
    pid += 1
    panels.append(_row("Per miner", 12, pid))
    pid += 1
    for i, s in enumerate(SERIES):
        query = (f'SELECT mean("{s.field}") FROM "bitaxe" WHERE $timeFilter AND {MINER_RE} '
                 'GROUP BY time($__interval), "miner" fill(none)')
        panels.append(_panel(pid, "timeseries", s.title, _grid(i, 12, 8, 2, 13), ds,
                             [_influx(query, alias="$tag_miner")], s.unit))
        pid += 1
    y = 13 + 8 * ((len(SERIES) + 1) // 2)
    panels.append(_row("By clock config", y, pid))
    pid += 1
    by_config = (f'SELECT mean("hashrate") FROM "bitaxe" WHERE $timeFilter AND {MINER_RE} '
                 'GROUP BY time($__interval), "miner", "config" fill(none)')
    panels.append(_panel(pid, "timeseries", "Hashrate by clock config", {"x": 0, "y": y + 1, "w": 24, "h": 8}, ds,
                         [_influx(by_config, alias="$tag_miner $tag_config")], "suffix:GH/s"))
    pid += 1
    # J/TH as total energy over total hashes (not the mean of per-reading ratios), hashing readings only.
    per_config = ('SELECT 1000 * sum("power") / sum("hashrate") AS "J/TH", mean("hashrate") AS "GH/s", '
                  'mean("power") AS "W", mean("asic_temp") AS "chip °C", max("asic_temp") AS "chip max °C", '
                  'mean("error_pct") AS "errors %", count("hashrate") AS "readings" FROM "bitaxe" '
                  f'WHERE $timeFilter AND {MINER_RE} AND "not_hashing" = 0 GROUP BY "miner", "config"')
    panels.append(_panel(pid, "table", "J/TH per clock config", {"x": 0, "y": y + 9, "w": 24, "h": 8}, ds,
                         [_influx(per_config, fmt="table")]))
    pid += 1
    events = ('SELECT "kind", "message" FROM "bitaxe_event" WHERE $timeFilter AND '
              f'{MINER_RE} ORDER BY time DESC LIMIT 200')
    panels.append(_panel(pid, "table", "Events (config changes, restarts, safety, commands)",
                         {"x": 0, "y": y + 17, "w": 24, "h": 8}, ds, [_influx(events, fmt="table")]))
    miner_var = {"name": "miner", "label": "Miner", "type": "query", "datasource": ds,
                 "query": 'SHOW TAG VALUES FROM "bitaxe" WITH KEY = "miner"', "multi": True, "includeAll": True,
                 "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1, "hide": 0}
    annotations = [{"name": "Clock config changes", "datasource": ds, "enable": True, "iconColor": "orange",
                    "query": 'SELECT "message" FROM "bitaxe_event" WHERE $timeFilter AND "kind" = \'config_change\' '
                             f'AND {MINER_RE}', "textColumn": "message", "tagsColumn": "miner"}]
    return _dashboard("Bitaxe fleet (InfluxDB)", "bitaxe-fleet-influxql", "influxdb", miner_var, panels, annotations)


def grafana_prometheus() -> dict[str, Any]:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    sel = '{miner=~"$miner"}'
    rate, power = f"bitaxe_hashrate_gigahashes_per_second{sel}", f"bitaxe_power_watts{sel}"
    stats = [
        ("Fleet hashrate", f"sum({rate})", "suffix:GH/s"),
        ("Fleet power", f"sum({power})", "watt"),
        ("Fleet efficiency (J/TH)", f"1000 * sum({power}) / sum({rate})", "none"),
        ("Miners up", f"sum(bitaxe_miner_up{sel})", "none"),
    ]
    panels = _overview(ds, [(title, _prom(expr), unit) for title, expr, unit in stats])
    pid = len(panels) + 1
    now_targets = [_prom(f"{s.scale}{s.family}{sel}", ref=chr(ord("A") + i), instant=True)
                   for i, s in enumerate(SERIES)]
    now_targets.append(_prom(f"bitaxe_miner_up{sel}", ref="U", instant=True))
    panels.append(_panel(pid, "table", "Miners now", {"x": 0, "y": 5, "w": 24, "h": 7}, ds, now_targets,
                         transformations=[{"id": "merge", "options": {}}]))
    pid += 1
    panels.append(_row("Per miner", 12, pid))
    pid += 1
    for i, s in enumerate(SERIES):
        panels.append(_panel(pid, "timeseries", s.title, _grid(i, 12, 8, 2, 13), ds,
                             [_prom(f"{s.scale}{s.family}{sel}", legend="{{miner}} {{frequency}}@{{core_voltage}}")],
                             s.unit))
        pid += 1
    y = 13 + 8 * ((len(SERIES) + 1) // 2)
    panels.append(_row("By clock config, and the bridge", y, pid))
    pid += 1
    cfg = "miner, frequency, core_voltage"
    per_config = (f"1000 * avg by ({cfg}) (avg_over_time(bitaxe_power_watts{sel}[$__range])) / avg by ({cfg}) "
                  f"(avg_over_time(bitaxe_hashrate_gigahashes_per_second{sel}[$__range]))")
    panels.append(_panel(pid, "table", "J/TH per clock config", {"x": 0, "y": y + 1, "w": 12, "h": 8}, ds,
                         [_prom(per_config, instant=True)]))
    pid += 1
    panels.append(_panel(pid, "timeseries", "Shares accepted per minute", {"x": 12, "y": y + 1, "w": 12, "h": 8}, ds,
                         [_prom(f"60 * rate(bitaxe_shares_accepted_total{sel}[$__rate_interval])",
                                legend="{{miner}}")]))
    pid += 1
    bridge = [
        ("Poll failures per minute", "60 * rate(bitaxe_bridge_poll_failures_total{miner=~\"$miner\"}"
                                     "[$__rate_interval])", "{{miner}}"),
        ("Sink queues", "bitaxe_bridge_sink_queue_items", "{{sink}}"),
        ("Commands by outcome", "sum by (code, source) (increase(bitaxe_bridge_commands_total[$__range]))",
         "{{source}} {{code}}"),
        ("Store spool backlog", "bitaxe_bridge_spool_backlog_points", "{{sink}}"),
    ]
    for i, (title, expr, legend) in enumerate(bridge):
        panels.append(_panel(pid, "timeseries", title, _grid(i, 6, 7, 4, y + 9), ds, [_prom(expr, legend=legend)]))
        pid += 1
    miner_var = {"name": "miner", "label": "Miner", "type": "query", "datasource": ds,
                 "query": {"query": "label_values(bitaxe_miner_up, miner)", "refId": "miner"},
                 "definition": "label_values(bitaxe_miner_up, miner)", "multi": True, "includeAll": True,
                 "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1, "hide": 0}
    annotations = [{"name": "Clock config changes", "datasource": ds, "enable": True, "iconColor": "orange",
                    # A clock change starts a new series (frequency and core_voltage are labels): two series of
                    # one miner inside the window mean its config (or firmware) changed there.
                    "expr": f"count by (miner) (count_over_time(bitaxe_power_watts{sel}[2m])) > 1",
                    "titleFormat": "{{miner}} clock change",
                    "step": "1m"}]
    return _dashboard("Bitaxe fleet (Prometheus)", "bitaxe-fleet-prometheus", "prometheus", miner_var, panels,
                      annotations)


def _flux(fields: tuple[str, ...], measurement: str = "bitaxe") -> str:
    """The start of every Flux query: the bucket, the dashboard's time range, the fields, the chosen miners."""
    wanted = " or ".join(f'r._field == "{f}"' for f in fields)
    return (f'from(bucket: "${{bucket}}")\n'
            "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
            f'  |> filter(fn: (r) => r._measurement == "{measurement}" and ({wanted}) '
            "and r.miner =~ /^${miner:regex}$/)\n")


def grafana_flux() -> dict[str, Any]:
    ds = {"type": "influxdb", "uid": "${datasource}"}
    both = _flux(("hashrate", "power"))
    fleet = (f"{both}  |> last()\n  |> group(columns: [\"_field\"])\n  |> sum()\n"
             '  |> pivot(rowKey: [], columnKey: ["_field"], valueColumn: "_value")\n')
    stats = [
        ("Fleet hashrate", f'{_flux(("hashrate",))}  |> last()\n  |> group()\n  |> sum()', "suffix:GH/s"),
        ("Fleet power", f'{_flux(("power",))}  |> last()\n  |> group()\n  |> sum()', "watt"),
        ("Fleet efficiency (J/TH)", f"{fleet}  |> map(fn: (r) => ({{_value: 1000.0 * r.power / r.hashrate}}))",
         "none"),
        ("Miners reporting", f'{_flux(("hashrate",))}  |> last()\n  |> group()\n  |> count()', "none"),
    ]
    panels = _overview(ds, [(title, {"refId": "A", "query": query}, unit) for title, query, unit in stats])
    pid = len(panels) + 1
    now_fields = ("hashrate", "expected_hashrate", "power", "j_per_th", "asic_temp", "vr_temp", "error_pct",
                  "fan_pct", "frequency", "core_voltage", "uptime")
    now = (f"{_flux(now_fields)}  |> last()\n  |> group(columns: [\"miner\"])\n"
           '  |> pivot(rowKey: ["miner"], columnKey: ["_field"], valueColumn: "_value")\n  |> group()\n'
           f"  |> keep(columns: {json.dumps(['miner', *now_fields])})")
    panels.append(_panel(pid, "table", "Miners now", {"x": 0, "y": 5, "w": 24, "h": 7}, ds,
                         [{"refId": "A", "query": now}]))
    pid += 1
    panels.append(_row("Per miner", 12, pid))
    pid += 1
    for i, s in enumerate(SERIES):
        query = (f'{_flux((s.field,))}  |> group(columns: ["miner"])\n'
                 "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)")
        panels.append(_panel(pid, "timeseries", s.title, _grid(i, 12, 8, 2, 13), ds, [{"refId": "A", "query": query}],
                             s.unit))
        pid += 1
    y = 13 + 8 * ((len(SERIES) + 1) // 2)
    panels.append(_row("By clock config", y, pid))
    pid += 1
    by_config = (f'{_flux(("hashrate",))}  |> group(columns: ["miner", "config"])\n'
                 "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)")
    panels.append(_panel(pid, "timeseries", "Hashrate by clock config", {"x": 0, "y": y + 1, "w": 24, "h": 8}, ds,
                         [{"refId": "A", "query": by_config}], "suffix:GH/s"))
    pid += 1
    # Total energy over total hashes per config, hashing readings only: the fields side by side first.
    per_config = (f'{_flux(("hashrate", "power", "asic_temp", "not_hashing"))}'
                  '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                  "  |> filter(fn: (r) => r.not_hashing == 0)\n"
                  '  |> group(columns: ["miner", "config"])\n'
                  "  |> reduce(identity: {w: 0.0, h: 0.0, t: 0.0, n: 0.0}, fn: (r, accumulator) => ({"
                  "w: accumulator.w + r.power, h: accumulator.h + r.hashrate, t: accumulator.t + r.asic_temp, "
                  "n: accumulator.n + 1.0}))\n"
                  '  |> map(fn: (r) => ({miner: r.miner, config: r.config, "J/TH": 1000.0 * r.w / r.h, '
                  '"GH/s": r.h / r.n, W: r.w / r.n, "chip °C": r.t / r.n, readings: r.n}))\n'
                  "  |> group()")
    panels.append(_panel(pid, "table", "J/TH per clock config", {"x": 0, "y": y + 9, "w": 24, "h": 8}, ds,
                         [{"refId": "A", "query": per_config}]))
    pid += 1
    events = (f'{_flux(("message",), "bitaxe_event")}  |> group()\n  |> sort(columns: ["_time"], desc: true)\n'
              '  |> limit(n: 200)\n  |> keep(columns: ["_time", "miner", "kind", "_value"])')
    panels.append(_panel(pid, "table", "Events (config changes, restarts, safety, commands)",
                         {"x": 0, "y": y + 17, "w": 24, "h": 8}, ds, [{"refId": "A", "query": events}]))
    bucket_var = {"name": "bucket", "label": "Bucket", "type": "textbox", "query": "bitaxe",
                  "current": {"text": "bitaxe", "value": "bitaxe"}, "hide": 0}
    miner_var = {"name": "miner", "label": "Miner", "type": "query", "datasource": ds,
                 "query": 'import "influxdata/influxdb/schema"\n\nschema.tagValues(bucket: "${bucket}", tag: "miner")',
                 "multi": True, "includeAll": True, "current": {"text": "All", "value": "$__all"}, "refresh": 2,
                 "sort": 1, "hide": 0}
    changes = (f'{_flux(("message",), "bitaxe_event")}  |> filter(fn: (r) => r.kind == "config_change")\n'
               '  |> group()\n  |> rename(columns: {_value: "text"})')
    annotations = [{"name": "Clock config changes", "datasource": ds, "enable": True, "iconColor": "orange",
                    "query": changes, "textColumn": "text", "tagsColumn": "miner"}]
    return _dashboard("Bitaxe fleet (InfluxDB 2.x, Flux)", "bitaxe-fleet-flux", "influxdb", miner_var, panels,
                      annotations, (bucket_var,))


# ---- Chronograf ---------------------------------------------------------------------------------------

FROM = f'"{DB}"."{RP}"."bitaxe"'


def _cell(i: int, name: str, query: str, kind: str = "line", w: int = 6, h: int = 4, x: int | None = None,
          y: int | None = None) -> dict[str, Any]:
    return {
        "i": f"00000000-0000-4000-8000-{i:012d}", "x": (i % 2) * 6 if x is None else x,
        "y": (i // 2) * 4 if y is None else y, "w": w, "h": h, "name": name, "type": kind,
        "queries": [{"query": query, "queryConfig": {"database": DB, "measurement": "bitaxe", "retentionPolicy": RP,
                                                     "rawText": query, "fields": [], "tags": {}, "groupBy": {},
                                                     "areTagsAccepted": False},
                     "source": "", "type": "influxql"}],
        "axes": {"x": {"bounds": ["", ""], "label": "", "prefix": "", "suffix": "", "base": "10", "scale": "linear"},
                 "y": {"bounds": ["", ""], "label": "", "prefix": "", "suffix": "", "base": "10", "scale": "linear"}},
        "colors": [], "legend": {}, "tableOptions": {"verticalTimeAxis": True, "sortBy": {}, "wrapping": "truncate",
                                                    "fixFirstColumn": True},
        "fieldOptions": [], "timeFormat": "YYYY-MM-DD HH:mm:ss", "decimalPlaces": {"isEnforced": True, "digits": 2},
        "note": "", "noteVisibility": "default",
    }


def chronograf() -> dict[str, Any]:
    time_filter = "time > :dashboardTime: AND time < :upperDashboardTime:"
    cells = []
    for i, s in enumerate(SERIES):
        query = (f'SELECT mean("{s.field}") AS "{s.field}" FROM {FROM} WHERE {time_filter} '
                 'GROUP BY time(:interval:), "miner" FILL(none)')
        cells.append(_cell(i, f"{s.title} per miner", query))
    y = 4 * ((len(SERIES) + 1) // 2)
    latest = (f'SELECT last("hashrate") AS "ghs", last("power") AS "w" FROM {FROM} WHERE {time_filter} '
              'GROUP BY "miner"')
    cells.append(_cell(100, "Fleet J/TH", f'SELECT 1000 * sum("w") / sum("ghs") AS "J/TH" FROM ({latest})',
                       "single-stat", w=3, x=0, y=y))
    cells.append(_cell(101, "Fleet hashrate GH/s", f'SELECT sum("ghs") AS "GH/s" FROM ({latest})', "single-stat",
                       w=3, x=3, y=y))
    by_config = (f'SELECT mean("hashrate") AS "hashrate" FROM {FROM} WHERE {time_filter} AND "miner" = :miner: '
                 'GROUP BY time(:interval:), "config" FILL(none)')
    cells.append(_cell(102, "Selected miner: hashrate by clock config", by_config, w=6, x=6, y=y))
    per_config = ('SELECT 1000 * sum("power") / sum("hashrate") AS "J/TH", mean("hashrate") AS "GH/s", '
                  'mean("power") AS "W", mean("asic_temp") AS "chip °C", count("hashrate") AS "readings" '
                  f'FROM {FROM} WHERE {time_filter} AND "not_hashing" = 0 GROUP BY "miner", "config"')
    cells.append(_cell(103, "J/TH per clock config", per_config, "table", w=12, x=0, y=y + 4))
    events = (f'SELECT "kind", "message" FROM "{DB}"."{RP}"."bitaxe_event" WHERE {time_filter} '
              'AND "miner" = :miner: ORDER BY time DESC LIMIT 100')
    cells.append(_cell(104, "Selected miner: events", events, "table", w=12, x=0, y=y + 8))
    template = {"tempVar": ":miner:", "id": "00000000-0000-4000-8000-000000000999", "type": "tagValues",
                "label": "miner", "values": [],
                "query": {"influxql": "SHOW TAG VALUES ON :database: FROM :measurement: WITH KEY=:tagKey:",
                          "db": DB, "measurement": "bitaxe", "tagKey": "miner", "fieldKey": ""}}
    return {"meta": {"chronografVersion": "1.9.4", "sources": {}},
            "dashboard": {"id": 0, "name": "Bitaxe fleet", "cells": cells, "templates": [template]}}


FILES = {
    "grafana-influxdb.json": grafana_influxql,
    "grafana-influxdb-flux.json": grafana_flux,
    "grafana-prometheus.json": grafana_prometheus,
    "chronograf-influxdb.json": chronograf,
}


def render(name: str) -> str:
    return json.dumps(FILES[name](), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    for name in FILES:
        (HERE / name).write_text(render(name), encoding="utf-8")
        print(f"wrote dashboards/{name}")
