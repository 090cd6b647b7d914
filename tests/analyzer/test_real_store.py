"""The analyzer reads what the bridge's own SQLite store (bridge/store/sqlite.py) writes from Readings."""

from __future__ import annotations

import json

from click.testing import CliRunner

from analyzer.cli import main
from analyzer.synthetic import simulated_history
from bridge.reading import Event
from bridge.store.sqlite import SqliteStore
from tests.store.factory import reading


def test_rank_on_the_bridge_sqlite_store(tmp_path):
    schedule = [(525, 1150, 3600), (600, 1200, 3600), (525, 1150, 3600), (600, 1200, 3600)]
    s, model = simulated_history("Gamma", schedule, seed=9, start=1.76e9, miner="garage-1")
    readings = []
    floats = ("hashrate", "power", "asic_temp", "vr_temp", "error_pct", "uptime")
    ints = ("shares_accepted", "shares_rejected")
    for i in range(len(s)):
        f, v = (float(x) for x in str(s.config[i]).split("@"))
        values: dict[str, object] = {k: float(s.fields[k][i]) for k in floats}
        values.update({k: int(s.fields[k][i]) for k in ints})
        readings.append(reading(0, miner="garage-1", t0=float(s.time[i]), frequency=f, core_voltage=int(v),
                                **values))
    events = [Event("garage-1", 1.76e9 + 3600 + 2, "config_change", "525@1150 -> 600@1200",
                    {"from": "525@1150", "to": "600@1200"})]
    path = tmp_path / "bitaxe.db"
    store = SqliteStore.open(path)
    store.write(readings, events)
    store.close()
    r = CliRunner().invoke(main, ["rank", "--source", f"sqlite:{path}", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ranked = json.loads(r.output)["miners"]["garage-1"]
    assert [x["config"] for x in ranked] == ["525@1150", "600@1200"]
    for x in ranked:
        f, v = x["config"].split("@")
        truth = model.truth(float(f), int(v))  # type: ignore[attr-defined]
        j = x["j_per_th"]
        assert abs(j["value"] - truth.j_per_th) < 1.5 * (j["hi"] - j["lo"]) / 2
        assert x["segments"] == 2
