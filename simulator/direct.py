"""One simulated miner read without HTTP: MinerModel → the firmware's JSON documents → the bridge's Reading.

For simulated-time drivers (bench/tune.py, tests): the same documents `bitaxe-sim` serves, parsed by
the same code the bridge's HTTP client uses, with the model stepped by the caller instead of a clock.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.boards import BoardSpec
from bridge.firmware import parse_asic, parse_info, to_reading
from bridge.reading import BoardInfo, ClockConfig, Reading
from simulator import firmware as fw
from simulator.physics import MinerModel


class DirectMiner:
    """A MinerModel behind its firmware documents; `time` is simulated seconds, stepped with advance()."""

    def __init__(self, board: BoardSpec, *, name: str = "sim", firmware: str = "2.15.0", seed: int = 0,
                 ambient: float = 25.0, quality: float = 1.0, start_time: float = 1.7e9) -> None:
        self.name = name
        self.model = MinerModel(board, seed=seed, ambient=ambient, quality=quality)
        self.model.warm_start()
        self.version = fw.resolve_version(firmware)
        self.settings = fw.default_settings(board, name)
        self.ctx = fw.DeviceContext(self.version, board, "24:58:7C:00:00:01", "127.0.0.1", self.settings)
        self.host = "127.0.0.1:80"
        self.time = start_time
        info = parse_info(self._info_bytes(), name, self.host)
        self.board: BoardInfo = parse_asic(json.dumps(fw.asic_document(board)).encode(), name, self.host, info)

    def _info_bytes(self) -> bytes:
        return json.dumps(fw.info_document(self.ctx, self.model, self.model.sample())).encode()

    def advance(self, seconds: float) -> None:
        self.model.step(seconds)
        self.time += seconds

    def read(self) -> Reading:
        return to_reading(parse_info(self._info_bytes(), self.name, self.host), self.board, self.name, self.host,
                          self.time)

    def patch(self, body: dict[str, Any]) -> None:
        """PATCH /api/system, applied like the firmware (no range check)."""
        fw.apply_settings(self.version, body, self.model, self.settings)

    def apply(self, config: ClockConfig) -> None:
        f = config.frequency
        self.patch({"frequency": int(f) if f == int(f) else f, "coreVoltage": config.core_voltage})

    def restart(self) -> None:
        self.model.restart()
