"""`bitaxe-bridge top`, headless with Textual's pilot: standalone on the simulator, and attached over real MQTT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import DataTable, OptionList

from bridge.reading import fmt_number
from bridge.top.app import COLUMNS, OptionsScreen, TopApp
from bridge.top.local import LocalSource, standalone
from bridge.top.model import FleetModel, Limits
from bridge.top.remote import MqttSource
from simulator.server import Fleet, SimMiner, SimMinerSpec
from tests.observe.support import bridge_running, fleet_config, wait_for
from tests.support.servers import Mosquitto

SPECS = [SimMinerSpec(board="Gamma", firmware="2.15.0"), SimMinerSpec(board="Supra", firmware="2.12.0"),
         SimMinerSpec(board="Max", firmware="2.6.0")]
SIZE = (200, 50)


def cell(app: TopApp, miner: str, column: str) -> str:
    return str(app.query_one(DataTable).get_cell(miner, column))


def rows(app: TopApp) -> list[str]:
    table = app.query_one(DataTable)
    return [str(table.coordinate_to_cell_key((i, 0)).row_key.value) for i in range(table.row_count)]


def patches(sim: SimMiner) -> list[Any]:
    return [body for method, path, body in sim.requests if method == "PATCH" and path == "/api/system"]


def shown_with_data(app: TopApp) -> bool:
    return all(cell(app, name, "hashrate") != "-" for name in rows(app)) and len(rows(app)) == len(SPECS)


async def pick(app: TopApp, pilot: Any, key: str, value: float) -> list[str]:
    """Open the picker with `key`, move to `value`, press Enter; returns the options it offered."""
    await pilot.press(key)
    await wait_for(lambda: isinstance(app.screen, OptionsScreen), what="the options dialog")
    app.refresh_view()  # what the refresh timer does while the dialog is open (it once crashed the app)
    options = app.screen.query_one(OptionList)
    offered = [str(options.get_option_at_index(i).id) for i in range(options.option_count)]
    options.highlighted = offered.index(fmt_number(value))
    await pilot.press("enter")
    await wait_for(lambda: not isinstance(app.screen, OptionsScreen), what="the dialog to close")
    return offered


async def test_standalone_lists_updates_sorts_filters_and_changes_the_clock_through_the_guard() -> None:
    async with Fleet(SPECS) as fleet:
        cfg = fleet_config(fleet, poll_interval=2.0)
        source = LocalSource(standalone(cfg))
        app = TopApp(source)
        async with app.run_test(size=SIZE) as pilot:
            assert rows(app) == ["m0", "m1", "m2"]  # the configured miners, before any answer
            await wait_for(lambda: shown_with_data(app), what="every miner with a reading")
            bridge = source.bridge
            assert bridge is not None
            # Within 2 poll intervals: no miner needed more than two polls before all were on screen.
            assert max(s.polls for s in bridge.poller.miners.values()) <= 2
            assert cell(app, "m0", "board") == "Gamma" and cell(app, "m0", "config") == "525@1150"
            assert cell(app, "m2", "board") == "Max" and cell(app, "m0", "status") == "online"

            uptime = app.model.miners["m0"].number("uptime")
            await wait_for(lambda: app.model.miners["m0"].number("uptime") != uptime, what="a newer reading")
            await wait_for(lambda: app.drawn["m0"] == app.model.miners["m0"].version, what="the row redrawn")
            assert len(app.model.miners["m0"].history) >= 2

            # Sort: s steps through the columns; GH/s sorts largest first, d reverses.
            while app.sort_key != "hashrate":
                await pilot.press("s")
            await pilot.pause()
            rates = {n: app.model.miners[n].number("hashrate") or 0.0 for n in ("m0", "m1", "m2")}
            assert rows(app) == sorted(rates, key=lambda n: -rates[n])
            await pilot.press("d")
            await pilot.pause()
            assert rows(app) == sorted(rates, key=lambda n: rates[n])

            # Filter by board.
            await pilot.press("slash")
            await pilot.press(*"supra", "enter")
            await pilot.pause()
            assert rows(app) == ["m1"]
            await pilot.press("escape")
            await pilot.pause()
            assert len(rows(app)) == 3

            # Clock change from the dashboard: only the Gamma's options are offered; it reaches the miner.
            app.query_one(DataTable).move_cursor(row=rows(app).index("m0"))
            await pilot.pause()
            assert app.selected == "m0"
            offered = await pick(app, pilot, "f", 490)
            assert offered == [fmt_number(f) for f in bridge.poller.miners["m0"].last.board.frequency_options]
            await wait_for(lambda: patches(fleet.miners[0]) == [{"frequency": 490}], what="the PATCH at the sim")
            await wait_for(lambda: app.outcomes and app.outcomes[-1][2].accepted, what="the guard's verdict")
            assert fleet.miners[0].model.frequency == 490
            await wait_for(lambda: cell(app, "m0", "config") == "490@1150", what="the new config on screen")
            assert any(e.kind == "command" for e in app.model.miners["m0"].events)
            offered = await pick(app, pilot, "v", 1100)
            assert offered == ["1000", "1060", "1100", "1150", "1200", "1250"]
            await wait_for(lambda: {"coreVoltage": 1100} in patches(fleet.miners[0]), what="the voltage PATCH")

            # A value outside the board's options cannot be sent, even bypassing the dialog.
            assert app.change_setting("m0", "frequency", 999) is False
            assert app.change_setting("m0", "core_voltage", 1166) is False  # a Supra option, not a Gamma one
            await pilot.pause(0.5)
            assert len(patches(fleet.miners[0])) == 2

            # Restart needs a confirmation; identify is sent at once.
            await pilot.press("r")
            await pilot.press("n")
            await pilot.press("i")
            await wait_for(lambda: fleet.miners[0].identify_count == 1, what="identify at the sim")
            assert fleet.miners[0].restart_count == 0
            await pilot.press("r")
            await pilot.press("y")
            await wait_for(lambda: fleet.miners[0].restart_count == 1, what="restart at the sim")

            # An unplugged miner shows as offline.
            await fleet.power_off(2)
            await wait_for(lambda: cell(app, "m2", "status") == "offline", what="m2 offline on screen")
        assert source.bridge is None  # quitting stopped the in-process bridge


async def test_attached_over_mqtt_shows_the_fleet_and_commands_reach_the_miner(mosquitto: Mosquitto) -> None:
    async with Fleet(SPECS[:2]) as fleet:
        cfg = fleet_config(fleet, mqtt={"host": "127.0.0.1", "port": mosquitto.port})
        async with bridge_running(cfg):
            assert cfg.mqtt is not None
            source = MqttSource(cfg.mqtt, Limits.of(cfg.safety))
            app = TopApp(source)
            async with app.run_test(size=SIZE) as pilot:
                await wait_for(lambda: sorted(rows(app)) == ["m0", "m1"]
                               and all(cell(app, n, "hashrate") != "-" for n in ("m0", "m1")),
                               what="both miners from the state topics")
                # Board and options come from the bridge's retained discovery.
                await wait_for(lambda: all(app.model.miners[n].board for n in ("m0", "m1")), what="boards")
                assert cell(app, "m1", "board") == "Supra"
                app.query_one(DataTable).move_cursor(row=rows(app).index("m1"))
                await pilot.pause()
                offered = await pick(app, pilot, "f", 550)
                assert offered == ["400", "425", "450", "475", "485", "490", "500", "525", "550", "575"]
                await wait_for(lambda: patches(fleet.miners[1]) == [{"frequency": 550}], what="the PATCH")
                await wait_for(lambda: app.outcomes, what="the bridge's result")
                assert app.outcomes[-1][2].accepted, app.outcomes[-1]
                await wait_for(lambda: cell(app, "m1", "config") == "550@1166", what="the new config")
                assert app.change_setting("m1", "frequency", 600) is False  # not a Supra option

                await fleet.power_off(0)
                await wait_for(lambda: cell(app, "m0", "status") == "offline", what="m0 offline via availability")


def test_status_follows_limits_flags_and_the_tuning_hook() -> None:
    model = FleetModel(Limits(max_chip_temp=68, max_vr_temp=90), ("a",))
    view = model.miners["a"]
    assert view.status(model.limits) == "waiting"
    model.reading("a", {"asic_temp": 60.0, "vr_temp": 70.0, "overheat": False}, 1.0)
    assert view.status(model.limits) == "online"
    model.event("a", 2.0, "tune", "tuning started", {"active": True})
    assert view.status(model.limits) == "tuning"
    model.reading("a", {"asic_temp": 68.5, "vr_temp": 70.0}, 3.0)
    assert view.status(model.limits) == "overheat"
    model.reading("a", {"asic_temp": 60.0, "not_hashing": True}, 4.0)
    assert view.status(model.limits) == "not hashing"
    model.availability("a", False)
    assert view.status(model.limits) == "offline"
    assert [c.key for c in COLUMNS][:3] == ["name", "board", "config"]


def test_top_command_line_errors_say_what_to_do(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bridge.cli import main

    res = CliRunner().invoke(main, ["top", "--mqtt", "127.0.0.1:1"])
    assert res.exit_code != 0 and "needs a terminal" in res.output
    config = tmp_path / "config.yaml"
    config.write_text("miners: [{name: a, host: 127.0.0.1}]\n")
    res = CliRunner().invoke(main, ["top", "--config", str(config), "--attach"])
    assert res.exit_code != 0 and "no mqtt section" in res.output and "without --attach" in res.output
