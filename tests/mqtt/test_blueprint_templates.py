"""The tune blueprint's templates rendered the way Home Assistant renders them, on a real tune's summary.

Home Assistant renders templates with jinja2's immutable sandbox and reads a variable's output back as a
Python literal when it is one (`parse_result`), variable after variable. No Home Assistant runs here: this
checks the templates' syntax, what they make of the bridge's actual payload, and that the command they
publish is one the bridge's guard parses; not Home Assistant's own handling of the automation.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.commands import parse_command
from bridge.mqtt import tune_summary_payload
from bridge.reading import Event
from bridge.tune.plan import Plan
from bridge.tune.tuner import Record
from tests.mqtt.test_homeassistant_assets import HA, Input, load
from tests.tune.scripted import Spec
from tests.tune.test_tuner import BASE, run

BLUEPRINT = HA / "blueprints" / "automation" / "bitaxe" / "tune_finished.yaml"
ENV = ImmutableSandboxedEnvironment()


def render(template: Any, variables: dict[str, Any]) -> Any:
    if not isinstance(template, str) or "{" not in template:
        return template
    out = ENV.from_string(template).render(**variables)
    try:
        return ast.literal_eval(out)
    except (ValueError, SyntaxError):
        return out


def with_inputs(node: Any, inputs: dict[str, Any]) -> Any:
    if isinstance(node, Input):
        return inputs[str(node)]
    if isinstance(node, dict):
        return {k: with_inputs(v, inputs) for k, v in node.items()}
    if isinstance(node, list):
        return [with_inputs(v, inputs) for v in node]
    return node


class Run:
    """The automation on one MQTT message: whether its condition passed, its variables, what it did."""

    def __init__(self, topic: str, payload: str, apply_winner: str = "never") -> None:
        doc = load(BLUEPRINT)
        inputs = {k: v.get("default") for k, v in doc["blueprint"]["input"].items()}
        doc = with_inputs(doc, {**inputs, "apply_winner": apply_winner})
        trigger: dict[str, Any] = {"platform": "mqtt", "topic": topic, "payload": payload}
        try:
            trigger["payload_json"] = json.loads(payload)
        except ValueError:
            pass
        self.vars: dict[str, Any] = {"trigger": trigger}
        self.passed = all(render(c["value_template"], self.vars) is True for c in doc["conditions"])
        self.notified: dict[str, Any] = {}
        self.published: dict[str, Any] = {}
        if not self.passed:
            return
        for name, template in doc["variables"].items():
            self.vars[name] = render(template, self.vars)
        for action in doc["actions"]:
            if action.get("action") == "persistent_notification.create":
                self.notified = {k: render(v, self.vars) for k, v in action["data"].items()}
            elif "if" in action and all(render(c["value_template"], self.vars) is True for c in action["if"]):
                for then in action["then"]:
                    assert then["action"] == "mqtt.publish"
                    self.published = {k: render(v, self.vars) for k, v in then["data"].items()}


@pytest.fixture(scope="module")
def summaries() -> dict[str, str]:
    """Result payloads of real tunes of a scripted miner, as the bridge publishes them."""
    out = {}
    for name, table, hook in (("done", {}, None), ("stopped", {}, _stop_at_first_candidate),
                              ("none stable", {k: Spec(error_pct=60.0) for k in BASE}, None),
                              ("tied", {"490@1000": Spec(error_pct=0.8, chip_temp=52, power_factor=1.05)}, None)):
        r, _ = run(table, Plan(), hook=hook)
        record = next(a for _, a in r.actions if isinstance(a, Record) and a.kind == "tune")
        out[name] = tune_summary_payload(Event("garage-1", 1.7e9, "tune", record.message, record.data))
    return out


def _stop_at_first_candidate(tuner: Any, t: float, reading: Any) -> list[Any]:
    return tuner.stop(t, "stopped from Home Assistant") if reading.config_tag == "400@1000" else []


def test_a_finished_tune_is_announced_with_its_winner_in_units(summaries: dict[str, str]) -> None:
    r = Run("bitaxe/garage-1/result", summaries["done"])
    assert r.passed and r.vars["winner"] == "400@1000" and r.vars["apply"] is False
    title, message = r.notified["title"], r.notified["message"]
    assert title == "Bitaxe garage-1: tune done"
    assert message.startswith("Best for efficiency: 400@1000, ") and " J/TH, " in message and " GH/s." in message
    assert "Significantly better than 525@1150." in message and message.endswith("Miner left at 525@1150.")
    assert "±" in message and "\n" not in message and "None" not in message
    assert r.notified["notification_id"] == "bitaxe_tune_garage-1"
    assert r.published == {}  # "never": nothing sent to the miner


@pytest.mark.parametrize("apply_winner", ["significant", "always"])
def test_the_winner_is_set_through_the_bridges_own_command_topic(summaries: dict[str, str], apply_winner: str) -> None:
    r = Run("bitaxe/garage-1/result", summaries["done"], apply_winner)
    assert r.published["topic"] == "bitaxe/garage-1/set"
    payload = r.published["payload"]
    assert isinstance(payload, dict)  # Home Assistant, too, reads the rendered JSON back as an object
    parsed = parse_command(None, json.dumps(payload))  # what the bridge's guard makes of it
    assert parsed.command.settings() == {"frequency": 400.0, "core_voltage": 1000}
    assert parsed.transaction is not None and parsed.transaction.startswith("tune-")
    assert r.notified["message"].endswith("Setting the miner to 400@1000.")


def test_significant_sets_no_winner_the_data_cannot_tell_from_the_runner_up(summaries: dict[str, str]) -> None:
    r = Run("bitaxe/garage-1/result", summaries["tied"], "significant")
    assert r.vars["winner"] == "400@1000" and r.published == {}
    assert "Not significantly better than 490@1000." in r.notified["message"]
    assert r.notified["message"].endswith("Miner left at 525@1150.")
    assert Run("bitaxe/garage-1/result", summaries["tied"], "always").published["topic"] == "bitaxe/garage-1/set"


def test_a_stopped_tune_is_announced_and_nothing_is_set(summaries: dict[str, str]) -> None:
    r = Run("bitaxe/garage-1/result", summaries["stopped"], "always")
    assert r.passed and r.notified["title"] == "Bitaxe garage-1: tune stopped"
    assert r.notified["message"] == ("Ended before a verdict (stopped from Home Assistant). Tuned for 5 min. "
                                     "Miner left at 525@1150.")
    assert r.published == {}


def test_a_tune_without_a_stable_config_says_so(summaries: dict[str, str]) -> None:
    r = Run("bitaxe/garage-1/result", summaries["none stable"], "always")
    assert r.notified["title"] == "Bitaxe garage-1: tune done"
    assert r.notified["message"].startswith("No stable config found within the limits. Tuned for ")
    assert r.notified["message"].endswith(" min. Miner left at 525@1150.") and r.published == {}


@pytest.mark.parametrize("payload", [
    '{"miner": "garage-1", "kind": "command", "accepted": true, "code": "ok"}',  # a guard result (retained)
    '{"miner": "garage-1", "kind": "tune", "request": "start", "accepted": true, "code": "ok"}',  # the ack
    "not json", '["tune"]', '{"kind": "tune", "summary": "x"}',
])
def test_other_results_do_not_trigger_it(payload: str) -> None:
    assert not Run("bitaxe/garage-1/result", payload, "always").passed


def test_every_blueprint_template_compiles_in_the_sandbox() -> None:
    # Home Assistant's own filters and functions are not jinja2's: stubs let the others compile
    env = ImmutableSandboxedEnvironment()
    env.filters.update(timestamp_custom=str, as_timestamp=float)
    env.globals.update(states=str, as_timestamp=float, now=str)
    found = 0
    for path in sorted(Path(BLUEPRINT.parent).glob("*.yaml")):
        for node in _strings(load(path)):
            if "{{" in node or "{%" in node:
                env.from_string(node)  # raises TemplateSyntaxError on a broken template
                found += 1
    assert found >= 10


def _strings(node: Any) -> list[str]:
    if isinstance(node, str) and not isinstance(node, Input):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []
