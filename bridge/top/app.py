"""The Textual app of `bitaxe-bridge top`: the fleet table, a detail pane, and keys for sort, filter and commands."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, OptionList, Sparkline, Static
from textual.widgets.option_list import Option

from bridge.reading import fmt_number
from bridge.top.model import FleetModel, FleetSource, Limits, MinerView, Outcome

REFRESH = 0.5  # s between looks at the model
SHUTDOWN_TIMEOUT = 20.0  # s for the in-process bridge to flush its sinks on quit
BAR = 8  # characters of a temperature bar
STATUS_STYLE = {"online": "green", "tuning": "cyan", "waiting": "dim", "offline": "bold red",
                "overheat": "bold red", "not hashing": "bold yellow", "implausible": "yellow"}


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def uptime_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    return (f"{days}d " if days else "") + f"{s // 3600:02d}:{s % 3600 // 60:02d}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def temp_bar(value: float | None, limit: float) -> Text:
    """`61.2 ██████░░` against the safety limit: green below 85 %, yellow below the limit, red at it."""
    if value is None:
        return Text("-")
    share = max(0.0, min(1.0, value / limit)) if limit > 0 else 0.0
    filled = round(share * BAR)
    style = "green" if share < 0.85 else ("yellow" if value < limit else "bold red")
    return Text.assemble((f"{value:5.1f} ", style), ("█" * filled, style), ("░" * (BAR - filled), "dim"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Column:
    """One table column, declared as data: how to render it and what to sort it by."""

    key: str
    title: str
    render: Callable[[MinerView, Limits], str | Text]
    sort: Callable[[MinerView, Limits], Any]
    width: int | None = None  # characters; None grows with the content (miner names)
    descending: bool = False  # the natural order when first chosen (largest hashrate first)


def _pct_expected(v: MinerView) -> float | None:
    rate, expected = v.number("hashrate"), v.number("expected_hashrate")
    return None if rate is None or not expected else 100.0 * rate / expected


def _num_sort(key: str) -> Callable[[MinerView, Limits], Any]:
    # Missing values sort last in either direction of a numeric column.
    return lambda v, _: (v.number(key) is not None, v.number(key) or 0.0)


def _status(v: MinerView, limits: Limits) -> Text:
    status = v.status(limits)
    return Text(status, style=STATUS_STYLE.get(status, ""))


COLUMNS: tuple[Column, ...] = (
    Column(key="name", title="Miner", render=lambda v, _: v.name, sort=lambda v, _: v.name),
    Column(key="board", title="Board", width=10, render=lambda v, _: v.board.device_model if v.board else "-",
           sort=lambda v, _: v.board.device_model if v.board else ""),
    Column(key="config", title="Config", width=9, render=lambda v, _: str(v.values.get("config_tag") or "-"),
           sort=lambda v, _: (v.number("frequency") or 0.0, v.number("core_voltage") or 0.0), descending=True),
    Column(key="hashrate", title="GH/s", width=7, render=lambda v, _: _fmt(v.number("hashrate")),
           sort=_num_sort("hashrate"), descending=True),
    Column(key="expected", title="% exp", width=5, render=lambda v, _: _fmt(_pct_expected(v), 0, "%"),
           sort=lambda v, _: (_pct_expected(v) is not None, _pct_expected(v) or 0.0), descending=True),
    Column(key="power", title="W", width=6, render=lambda v, _: _fmt(v.number("power")),
           sort=_num_sort("power"), descending=True),
    Column(key="jth", title="J/TH", width=6, render=lambda v, _: _fmt(v.number("j_per_th"), 2),
           sort=lambda v, _: (v.number("j_per_th") is None, v.number("j_per_th") or 0.0)),
    Column(key="chip", title="Chip °C", width=15,
           render=lambda v, lim: temp_bar(v.number("asic_temp"), lim.max_chip_temp),
           sort=_num_sort("asic_temp"), descending=True),
    Column(key="vr", title="VR °C", width=15, render=lambda v, lim: temp_bar(v.number("vr_temp"), lim.max_vr_temp),
           sort=_num_sort("vr_temp"), descending=True),
    Column(key="errors", title="Err %", width=6, render=lambda v, _: _fmt(v.number("error_pct"), 2),
           sort=_num_sort("error_pct"), descending=True),
    Column(key="fan", title="Fan %", width=5, render=lambda v, _: _fmt(v.number("fan_pct"), 0),
           sort=_num_sort("fan_pct"), descending=True),
    Column(key="uptime", title="Uptime", width=9, render=lambda v, _: uptime_text(v.number("uptime")),
           sort=_num_sort("uptime"), descending=True),
    Column(key="status", title="Status", width=11, render=_status, sort=lambda v, lim: v.status(lim)),
)
COLUMN_INDEX = {c.key: i for i, c in enumerate(COLUMNS)}


class OptionsScreen(ModalScreen[float | None]):
    """Pick one of the board's own options for a setting: nothing else can be entered."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, title: str, options: tuple[float, ...] | tuple[int, ...], current: float | None) -> None:
        super().__init__()
        self.title_text = title
        self.values = tuple(options)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text)
            yield OptionList(*(Option(fmt_number(o) + ("  (now)" if o == self.current else ""), id=fmt_number(o))
                               for o in self.values), id="options")
            yield Label("Enter: apply through the guard   Esc: cancel", classes="hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if self.current in self.values:
            options.highlighted = self.values.index(self.current)

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.values[event.option_index])

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", "Yes"),
                                             Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question)
            yield Label("y: yes   n / Esc: no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TopApp(App[None]):
    """htop for a Bitaxe fleet: one row per miner, a detail pane for the selected one."""

    TITLE = "bitaxe-bridge top"
    CSS = """
    #fleet { height: 1fr; }
    #detail { height: 14; border-top: solid $primary; }
    #facts { width: 44; padding: 0 1; }
    #charts { width: 1fr; padding: 0 1; }
    #charts Sparkline { height: 1; margin-bottom: 1; }
    #events { width: 1fr; padding: 0 1; }
    #filter { dock: bottom; display: none; }
    #filter.visible { display: block; }
    OptionsScreen, ConfirmScreen { align: center middle; }
    #dialog { width: 50; height: auto; max-height: 24; border: thick $primary; background: $surface; padding: 1; }
    #options { height: auto; max-height: 16; }
    .hint { color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q,ctrl+c", "quit", "Quit"),
        Binding("s", "sort(1)", "Sort"),
        Binding("S", "sort(-1)", "Sort back", show=False),
        Binding("d", "reverse", "Reverse"),
        Binding("slash", "filter", "Filter"),
        Binding("f", "pick('frequency')", "Frequency"),
        Binding("v", "pick('core_voltage')", "Voltage"),
        Binding("i", "identify", "Identify"),
        Binding("r", "restart", "Restart"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, source: FleetSource) -> None:
        super().__init__()
        self.source = source
        self.model = FleetModel(source.limits, source.miners())
        self.sort_key = "name"
        self.reverse = False
        self.filter_text = ""
        self.selected: str | None = None
        self.shown: list[str] = []  # row order on screen
        self.drawn: dict[str, int] = {}  # miner -> version drawn
        self.outcomes: list[tuple[str, dict[str, Any], Outcome]] = []  # commands sent, newest last
        self._source_task: asyncio.Task[None] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="fleet", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="detail"):
            with Vertical(id="facts"):
                yield Static(id="facts-text")
            with Vertical(id="charts"):
                yield Label("hashrate GH/s", id="hashrate-label")
                yield Sparkline([], id="hashrate-spark")
                yield Label("power W", id="power-label")
                yield Sparkline([], id="power-spark")
                yield Label("chip °C", id="temp-label")
                yield Sparkline([], id="temp-spark")
            yield Static(id="events")
        yield Input(placeholder="filter: miner, board, config or status (Enter to apply, Esc to clear)",
                    id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.source.description
        table = self.fleet_screen.query_one(DataTable)
        for c in COLUMNS:
            table.add_column(c.title, key=c.key, width=c.width)
        # A plain task, not a Textual worker: those are cancelled without waiting, and the in-process bridge
        # must get to flush its store on the way out (on_unmount waits for it).
        self._source_task = asyncio.create_task(self.source.run(self.model), name="top-source")
        self._source_task.add_done_callback(self._source_ended)
        self.set_interval(REFRESH, self.refresh_view)
        self.refresh_view()

    @property
    def fleet_screen(self) -> Screen[Any]:
        """The screen with the table: a dialog pushed on top of it must not hide its widgets from a refresh."""
        return self.screen_stack[0]

    # ---- drawing --------------------------------------------------------------------------------
    def ordered(self) -> list[str]:
        """Miner names as the table shows them: filtered, then sorted by the chosen column."""
        column = COLUMNS[COLUMN_INDEX[self.sort_key]]
        limits = self.model.limits
        views = [v for v in self.model.miners.values() if self._matches(v)]
        descending = column.descending != self.reverse
        views.sort(key=lambda v: v.name)  # ties in name order whatever the direction
        views.sort(key=lambda v: column.sort(v, limits), reverse=descending)
        return [v.name for v in views]

    def _matches(self, v: MinerView) -> bool:
        if not self.filter_text:
            return True
        text = self.filter_text.lower()
        haystack = (v.name, v.board.device_model if v.board else "", str(v.values.get("config_tag") or ""),
                    v.status(self.model.limits))
        return any(text in h.lower() for h in haystack)

    def refresh_view(self) -> None:
        if not self.screen_stack or not self.fleet_screen.query(DataTable):
            return  # closing: the widgets are gone before the timer is
        table = self.fleet_screen.query_one(DataTable)
        order = self.ordered()
        limits = self.model.limits
        if order != self.shown:
            table.clear()
            for name in order:
                view = self.model.miners[name]
                table.add_row(*(c.render(view, limits) for c in COLUMNS), key=name)
                self.drawn[name] = view.version
            self.shown = order
            if self.selected in order:
                table.move_cursor(row=order.index(self.selected))
        else:
            for name in order:
                view = self.model.miners[name]
                if self.drawn.get(name) != view.version:
                    for c in COLUMNS:
                        table.update_cell(name, c.key, c.render(view, limits), update_width=c.width is None)
                    self.drawn[name] = view.version
        if self.selected not in order:
            self.selected = order[0] if order else None
        self.refresh_detail()

    def refresh_detail(self) -> None:
        facts = self.fleet_screen.query_one("#facts-text", Static)
        events = self.fleet_screen.query_one("#events", Static)
        view = self.model.miners.get(self.selected) if self.selected else None
        if view is None:
            facts.update("no miner selected")
            events.update(self._log_text())
            return
        board = view.board
        status = view.status(self.model.limits)
        age = f"{time.time() - view.time:.0f} s ago" if view.time else "never"
        lines = [
            Text(view.name, style="bold"),
            Text(f"{board.device_model} ({board.asic_model})" if board else "board not known yet"),
            Text.assemble("status  ", (status, STATUS_STYLE.get(status, ""))),
            Text(f"config  {view.values.get('config_tag') or '-'}   firmware {view.values.get('firmware') or '-'}"),
            Text(f"read    {age}"),
            Text(f"expect  {_fmt(view.number('expected_hashrate'))} GH/s   fan {_fmt(view.number('fan_rpm'), 0)} rpm"),
            Text(f"limits  chip {self.model.limits.max_chip_temp:g} °C, VR {self.model.limits.max_vr_temp:g} °C"),
        ]
        facts.update(Text("\n").join(lines))
        history = list(view.history)
        for key, label, unit in (("hashrate", "hashrate", "GH/s"), ("power", "power", "W"),
                                 ("asic_temp", "chip", "°C")):
            data = [float(getattr(s, key)) for s in history if getattr(s, key) is not None]
            spark_id = "temp" if key == "asic_temp" else key
            self.fleet_screen.query_one(f"#{spark_id}-spark", Sparkline).data = data
            span = f"last {_duration(history[-1].time - history[0].time)}" if len(history) > 1 else "no history"
            shown = f"{min(data):.1f} … {max(data):.1f}" if data else "-"
            self.fleet_screen.query_one(f"#{spark_id}-label", Label).update(f"{label} {unit}: {shown} ({span})")
        recent = list(view.events)[-10:][::-1]
        lines = [Text("recent events", style="bold")]
        lines += [Text(f"{time.strftime('%H:%M:%S', time.localtime(e.time))} {e.kind:<13} {e.message}")
                  for e in recent]
        if not recent:
            lines.append(Text("none yet", style="dim"))
        text = Text("\n").join(lines)
        text.no_wrap, text.overflow = True, "ellipsis"  # one line per event, cut at the pane's edge
        events.update(text)

    def _log_text(self) -> Text:
        lines = [Text(f"{time.strftime('%H:%M:%S', time.localtime(e.time))} {e.message}")
                 for e in list(self.model.log)[-10:]]
        return Text("\n").join([Text("bridge", style="bold"), *lines])

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self.selected = str(event.row_key.value)
            self.refresh_detail()

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key == self.sort_key:
            self.reverse = not self.reverse
        else:
            self.sort_key, self.reverse = key, False
        self.refresh_view()

    # ---- keys -----------------------------------------------------------------------------------
    def action_sort(self, step: int) -> None:
        self.sort_key = COLUMNS[(COLUMN_INDEX[self.sort_key] + step) % len(COLUMNS)].key
        self.reverse = False
        self.notify(f"sorted by {COLUMNS[COLUMN_INDEX[self.sort_key]].title}", timeout=2)
        self.refresh_view()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.refresh_view()

    def action_filter(self) -> None:
        box = self.fleet_screen.query_one("#filter", Input)
        box.add_class("visible")
        box.focus()

    @on(Input.Submitted, "#filter")
    def _filter(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        event.input.remove_class("visible")
        self.fleet_screen.query_one(DataTable).focus()
        self.refresh_view()

    def action_clear_filter(self) -> None:
        box = self.fleet_screen.query_one("#filter", Input)
        box.value = ""
        box.remove_class("visible")
        self.filter_text = ""
        self.fleet_screen.query_one(DataTable).focus()
        self.refresh_view()

    def action_pick(self, setting: str) -> None:
        view = self.model.miners.get(self.selected) if self.selected else None
        if view is None or view.board is None:
            self.notify("the board's options are not known yet for this miner", severity="warning")
            return
        label = "frequency (MHz)" if setting == "frequency" else "core voltage (mV)"
        options = view.board.options(setting)

        def chosen(value: float | None) -> None:
            if value is not None:
                self.change_setting(view.name, setting, value)

        self.push_screen(OptionsScreen(f"{view.name}: {label}, {view.board.device_model} options", options,
                                       view.number(setting)), chosen)

    def change_setting(self, miner: str, setting: str, value: float) -> bool:
        """Send a clock change, only for a value from the board's own options; False when refused here."""
        view = self.model.miners.get(miner)
        if view is None or view.board is None:
            self.notify(f"{miner}: board options not known yet; nothing sent", severity="warning")
            return False
        options = view.board.options(setting)
        if value not in options:
            self.notify(f"{miner}: {setting} {fmt_number(value)} is not one of the {view.board.device_model}'s "
                        f"options ({' '.join(fmt_number(o) for o in options)}); nothing sent", severity="error")
            return False
        number = int(value) if value == int(value) else value
        self.send(miner, {setting: number})
        return True

    def action_identify(self) -> None:
        if self.selected:
            self.send(self.selected, {"identify": True})

    def action_restart(self) -> None:
        miner = self.selected
        if not miner:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.send(miner, {"restart": True})

        self.push_screen(ConfirmScreen(f"Restart {miner}? It stops hashing for a while."), answered)

    @work(group="commands")
    async def send(self, miner: str, settings: dict[str, Any]) -> Outcome:
        what = ", ".join(f"{k} {v}" for k, v in settings.items())
        self.notify(f"{miner}: sending {what} through the guard…", timeout=3)
        outcome = await self.source.command(miner, settings)
        verdict = "accepted" if outcome.accepted else f"refused ({outcome.code})"
        self.notify(f"{miner}: {what} {verdict}: {outcome.reason}",
                    severity="information" if outcome.accepted else "error", timeout=8)
        self.outcomes.append((miner, settings, outcome))
        return outcome

    def _source_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.exit(return_code=1, message=f"bitaxe-bridge top: the data source stopped: {exc!r}")

    async def on_unmount(self) -> None:
        task = self._source_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await task
