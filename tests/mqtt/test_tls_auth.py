"""MQTT over TLS with a private CA, and username/password auth, against a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from bridge.cli import main
from bridge.config import BridgeConfig, MqttConfig, parse_config
from bridge.daemon import Bridge, make_session
from bridge.mqtt import MqttBridge, check_mqtt
from bridge.reading import Event
from tests.mqtt.broker import Watcher, running
from tests.mqtt.readings import reading
from tests.support.certs import ServerCert, make_ca, make_server_cert
from tests.support.fixture_miner import FixtureMiner
from tests.support.servers import Mosquitto

FIX = Path(__file__).parent.parent / "fixtures" / "firmware"


@pytest.fixture
def certs(tmp_path: Path) -> ServerCert:
    return make_server_cert(tmp_path / "certs")


@pytest.fixture
def tls_broker(tmp_path: Path, certs: ServerCert) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto-tls", tls=certs)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto-auth", users={"bridge": "s3cret", "watcher": "w"})
    server.start()
    yield server
    server.stop()


def config(port: int, **mqtt: Any) -> BridgeConfig:
    return parse_config({"miners": [{"name": "garage-1", "host": "127.0.0.1:1"}],
                         "mqtt": {"host": "127.0.0.1", "port": port, **mqtt}})


async def test_tls_with_private_ca_publishes_state(tls_broker: Mosquitto, certs: ServerCert) -> None:
    cfg = config(tls_broker.port, tls=True, ca_file=str(certs.ca_file))
    assert cfg.mqtt is not None
    assert await check_mqtt(cfg.mqtt) == f"connected to 127.0.0.1:{tls_broker.port} (TLS)"
    async with running(MqttBridge(cfg)) as bridge:
        r = reading("garage-1")
        # The observer uses the broker's plain listener: same broker, so it sees what the TLS client sent.
        async with Watcher(tls_broker.plain_port, "bitaxe/garage-1/#") as w:
            await bridge.handle(Event("garage-1", r.time, "online", "answers"))
            await bridge.handle(r)
            await w.wait(lambda: w.on("bitaxe/garage-1/state"), what="state over TLS")
        assert json.loads(w.on("bitaxe/garage-1/state")[0].payload)["config_tag"] == r.config_tag
        assert [s.payload for s in w.on("bitaxe/garage-1/availability")][-1] == b"online"


async def test_tls_with_the_wrong_ca_is_a_clear_error(tls_broker: Mosquitto, tmp_path: Path) -> None:
    wrong, _, _ = make_ca(tmp_path / "other-ca", "some other CA")
    m = MqttConfig(host="127.0.0.1", port=tls_broker.port, tls=True, ca_file=str(wrong))
    with pytest.raises(RuntimeError) as err:
        await check_mqtt(m)
    msg = str(err.value)
    assert "not trusted" in msg and str(wrong) in msg and "mqtt.ca_file" in msg
    # A CA file that is not there: named, not a FileNotFoundError traceback.
    missing = m.model_copy(update={"ca_file": str(tmp_path / "nope.pem")})
    with pytest.raises(RuntimeError, match=r'mqtt\.ca_file ".*nope.pem" cannot be used: No such file'):
        await check_mqtt(missing)
    # Plain MQTT against the TLS listener: the hint says to turn TLS on.
    with pytest.raises(RuntimeError, match=r"set mqtt\.tls: true"):
        await check_mqtt(MqttConfig(host="127.0.0.1", port=tls_broker.port))


def test_check_config_wrong_ca_has_no_traceback(tls_broker: Mosquitto, tmp_path: Path) -> None:
    wrong, _, _ = make_ca(tmp_path / "other-ca", "some other CA")
    p = tmp_path / "config.yaml"
    p.write_text("miners:\n  - {name: a, host: '127.0.0.1:1'}\nhttp: {timeout: 1}\n"
                 f"mqtt: {{host: 127.0.0.1, port: {tls_broker.port}, tls: true, ca_file: '{wrong}'}}\n")
    res = CliRunner().invoke(main, ["check-config", str(p)])
    assert res.exit_code != 0
    assert "FAIL mqtt: cannot connect to MQTT broker" in res.output and "not trusted" in res.output
    assert "Traceback" not in res.output


async def test_password_auth(auth_broker: Mosquitto) -> None:
    good = MqttConfig(host="127.0.0.1", port=auth_broker.port, username="bridge", password="s3cret")
    assert await check_mqtt(good) == f"connected to 127.0.0.1:{auth_broker.port} as bridge"
    with pytest.raises(RuntimeError) as err:
        await check_mqtt(good.model_copy(update={"password": SecretStr("wrong")}))
    assert 'refused user "bridge"' in str(err.value) and "mqtt.password" in str(err.value)
    with pytest.raises(RuntimeError, match=r"refused anonymous login"):
        await check_mqtt(good.model_copy(update={"username": None, "password": None}))


async def test_wrong_password_retries_with_backoff_while_polling_goes_on(
        auth_broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    miner = await FixtureMiner(json.loads((FIX / "info-v2.12.0.json").read_text()),
                               json.loads((FIX / "asic-v2.12.0.json").read_text())).start()
    cfg = parse_config({
        "miners": [{"name": "g1", "host": miner.host}], "poll_interval": 0.2, "sqlite": None,
        "mqtt": {"host": "127.0.0.1", "port": auth_broker.port, "username": "bridge", "password": "old"}})
    caplog.set_level(logging.WARNING, logger="bitaxe.mqtt")

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if 'refused user "bridge"' in r.getMessage()]

    try:
        async with make_session(cfg) as session:
            bridge = Bridge(cfg, session)
            assert bridge.mqtt is not None
            task = asyncio.create_task(bridge.run())
            async with asyncio.timeout(20):
                while len(refusals()) < 2:
                    await asyncio.sleep(0.05)
            assert not task.done()
            state = bridge.poller.miners["g1"]
            polls = state.polls
            async with asyncio.timeout(10):
                while state.polls < polls + 3:  # polling goes on while the broker refuses us
                    await asyncio.sleep(0.05)
            assert state.online and state.last is not None
            assert "reconnecting in 1 s" in refusals()[0] and "reconnecting in 2 s" in refusals()[1]
            # The password is fixed on the broker's side: the next retry gets in, nothing restarted.
            auth_broker.users["bridge"] = "old"
            await asyncio.to_thread(auth_broker.restart)
            async with asyncio.timeout(20):
                await bridge.mqtt.connected.wait()
            task.cancel()
            async with asyncio.timeout(20):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await miner.stop()



async def test_missing_ca_file_is_retried_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   tls_broker: Mosquitto, certs: ServerCert) -> None:
    # The config check refuses a missing ca_file at start; this is the file vanishing afterwards
    # (a secret remounted, a volume replaced): the bridge retries with the fix instead of dying.
    ca = tmp_path / "remounted.pem"
    ca.write_bytes(b"placeholder")
    bridge = MqttBridge(config(tls_broker.port, tls=True, ca_file=str(ca)))
    ca.unlink()
    caplog.set_level(logging.WARNING, logger="bitaxe.mqtt")
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(10):
            while not any("cannot be used: No such file" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.02)
        ca.write_bytes(certs.ca_file.read_bytes())
        async with asyncio.timeout(15):
            await bridge.connected.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bridge.aclose()
    assert task.cancelled()
