"""Real servers for the tests: mosquitto, InfluxDB 1.x and VictoriaMetrics as plain processes on 127.0.0.1.

Each runs from a config in a temp dir on a free port, is stopped by PID, and can be stopped and
started again on the same port and data dir (broker/database outage tests).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.certs import ServerCert


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def find_binary(name: str, *extra: str) -> str | None:
    for cand in (shutil.which(name), *extra):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


class Server:
    """A server process with a fixed port and data dir, restartable."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return _port_open(self.port)

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready on 127.0.0.1:{self.port}:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Wait for the port to be released so a restart can bind it again.
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class Mosquitto(Server):
    """mosquitto on 127.0.0.1; optionally a TLS listener (`tls`) and password auth (`users`).

    With TLS, `port` is the TLS listener and `plain_port` an extra plain listener for test observers
    (same broker, same retained topics). Without TLS both are the same port.
    """

    name = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, *, tls: ServerCert | None = None,
                 users: Mapping[str, str] | None = None) -> None:
        super().__init__(workdir, port)
        self.tls = tls
        self.users = dict(users or {})
        self.plain_port = free_port() if tls is not None else self.port

    def command(self) -> list[str]:
        binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
        if binary is None:
            raise RuntimeError("mosquitto is not installed; run `make test` (it installs it) or "
                               "apt-get install mosquitto")
        conf = self.workdir / "mosquitto.conf"
        lines = [
            # Run as ourselves: as root mosquitto would switch to user "mosquitto", which cannot read
            # the key and password files in the test's private temp dir.
            f"user {getpass.getuser()}",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca_file}", f"certfile {self.tls.cert_file}",
                      f"keyfile {self.tls.key_file}", f"listener {self.plain_port} 127.0.0.1"]
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self._password_file()}"]
        else:
            lines.append("allow_anonymous true")
        lines += ["persistence false", "log_dest stdout",
                  "log_type error", "log_type warning", "log_type notice"]
        conf.write_text("\n".join(lines) + "\n")
        return [binary, "-c", str(conf)]

    def _password_file(self) -> Path:
        tool = find_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
        if tool is None:
            raise RuntimeError("mosquitto_passwd is not installed (it comes with mosquitto)")
        path = self.workdir / "passwords"
        path.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run([tool, *create, "-b", str(path), user, password], check=True,
                           capture_output=True, timeout=30)
        return path


class InfluxDB1(Server):
    """InfluxDB 1.x (Debian's influxdb): /write and InfluxQL /query, no auth."""

    name = "influxdb"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.bind_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = find_binary("influxd", "/usr/bin/influxd")
        if binary is None:
            raise RuntimeError("influxd is not installed; run `make test` or apt-get install influxdb")
        d = self.workdir
        conf = d / "influxdb.conf"
        conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.bind_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
            '  index-version = "inmem"\n'
            "[monitor]\n  store-enabled = false\n"
            f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{self.port}"\n'
            "  auth-enabled = false\n  log-enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
        )
        return [binary, "-config", str(conf)]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as r:
                return r.status == 204
        except (OSError, urllib.error.URLError):
            return False

    def query(self, q: str, db: str | None = None) -> dict:
        import json
        import urllib.parse

        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as r:
            return json.loads(r.read())


class VictoriaMetrics(Server):
    """VictoriaMetrics: accepts the InfluxDB v2 write API (/api/v2/write) that influxdb-client speaks."""

    name = "victoria-metrics"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = find_binary("victoria-metrics", "/usr/bin/victoria-metrics")
        if binary is None:
            raise RuntimeError("victoria-metrics is not installed; run `make test` or "
                               "apt-get install victoria-metrics")
        return [binary, f"-storageDataPath={self.workdir}/vmdata", f"-httpListenAddr=127.0.0.1:{self.port}",
                "-retentionPeriod=100y", "-search.disableCache", "-loggerLevel=ERROR"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def flush(self) -> None:
        """Make recently written points visible to exports (VictoriaMetrics buffers them for ~1 s)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10) as r:
            r.read()


class Prometheus(Server):
    """Prometheus (Debian's prometheus) scraping `targets` (host:port of /metrics) every `interval` seconds."""

    name = "prometheus"

    def __init__(self, workdir: Path, targets: list[str], port: int | None = None, interval: float = 1.0) -> None:
        super().__init__(workdir, port)
        self.targets = list(targets)
        self.interval = interval

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = find_binary("prometheus", "/usr/bin/prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed; run `make test` or apt-get install prometheus")
        import json

        conf = self.workdir / "prometheus.yml"
        # JSON is YAML: no YAML writer needed for this small file.
        conf.write_text(json.dumps({
            "global": {"scrape_interval": f"{self.interval:g}s", "scrape_timeout": f"{self.interval:g}s",
                       "evaluation_interval": f"{self.interval:g}s"},
            "scrape_configs": [{"job_name": "bitaxe-bridge", "static_configs": [{"targets": self.targets}]}],
        }))
        return [binary, f"--config.file={conf}", f"--storage.tsdb.path={self.workdir}/tsdb",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=0.5) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def query(self, promql: str, time: float | None = None) -> list[dict]:
        """The result vector of an instant query (raises on a PromQL error, with Prometheus's message)."""
        import json
        import urllib.parse

        params = {"query": promql}
        if time is not None:
            params["time"] = f"{time:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"PromQL {promql!r} failed: {exc.read().decode(errors='replace')}") from None
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def targets_up(self) -> list[dict]:
        import json

        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as r:
            return list(json.loads(r.read())["data"]["activeTargets"])
