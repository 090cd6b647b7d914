"""`bitaxe-bridge health`: judges the running bridge's heartbeat (`Bridge.state()`) against the config's limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.config import BridgeConfig


def _number(state: Mapping[str, Any], key: str) -> float | None:
    value = state.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summary(state: Mapping[str, Any], now: float) -> str:
    """One line for the healthcheck's log: heartbeat age, miners online, MQTT, spool."""
    parts = [f"heartbeat {now - float(state['time']):.1f} s old",
             f"{state.get('online')}/{state.get('miners')} miners online"]
    if isinstance(state.get("mqtt_connected"), bool):
        parts.append("MQTT connected" if state["mqtt_connected"] else "MQTT disconnected")
    points = _number(state, "spool_points")
    if points is not None:
        parts.append(f"InfluxDB spool {points:.0f} point(s)")
    return "; ".join(parts)


def problems(state: Mapping[str, Any], cfg: BridgeConfig, now: float, max_age: float) -> list[str]:
    """Every reason the bridge is unhealthy, each naming what is wrong, the limit and where to look."""
    found: list[str] = []
    age = now - float(state["time"])
    if age > max_age:
        found.append(f"heartbeat is {age:.0f} s old (limit {max_age:.0f} s): the bridge is stuck or down")
    limits = cfg.health
    since = _number(state, "mqtt_since")
    if (cfg.mqtt is not None and limits.max_mqtt_down is not None and state.get("mqtt_connected") is False
            and since is not None and now - since > limits.max_mqtt_down):
        found.append(f"MQTT: not connected to the broker {cfg.mqtt.host}:{cfg.mqtt.port} for {now - since:.0f} s "
                     f"(limit health.max_mqtt_down {limits.max_mqtt_down:g} s); is the broker running and "
                     "reachable? The bridge's log says why it cannot connect")
    if cfg.influxdb is not None:
        spool = f"the InfluxDB spool ({cfg.influxdb.spool_dir})"
        fix = f"is {cfg.influxdb.url} up and taking writes? The bridge's log says why they fail"
        points = _number(state, "spool_points")
        oldest = _number(state, "spool_oldest")
        mb = _number(state, "spool_mb")
        if limits.max_spool_age is not None and oldest is not None and now - oldest > limits.max_spool_age:
            found.append(f"InfluxDB: the oldest of {points or 0:.0f} point(s) waiting in {spool} is "
                         f"{now - oldest:.0f} s old (limit health.max_spool_age {limits.max_spool_age:g} s); {fix}")
        if limits.max_spool_points is not None and points is not None and points > limits.max_spool_points:
            found.append(f"InfluxDB: {points:.0f} points wait in {spool} (limit health.max_spool_points "
                         f"{limits.max_spool_points}); {fix}")
        if limits.max_spool_mb is not None and mb is not None and mb > limits.max_spool_mb:
            found.append(f"InfluxDB: {spool} holds {mb:.1f} MB (limit health.max_spool_mb "
                         f"{limits.max_spool_mb:g} MB); {fix}")
    return found
