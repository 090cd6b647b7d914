"""InfluxDB 1.x request pieces shared by the analyzer's InfluxDB source and the sink (no HTTP client here):
InfluxQL quoting, basic auth, and telling a server that runs no InfluxQL."""

from __future__ import annotations

import base64


def quote_ident(ident: str) -> str:
    """A measurement, field or tag name: "name"."""
    return '"' + ident.replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """A tag value or string literal: 'value'."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def basic_auth_header(username: str | None, password: str | None) -> dict[str, str]:
    """HTTP basic auth for the 1.x API; {} without a user. InfluxDB 1.x reads credentials from this header
    or the URL's query string, never from a POSTed form body."""
    if not username:
        return {}
    raw = f"{username}:{password or ''}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


# VictoriaMetrics (and other write-API-only servers) answer every /query with the database list, for
# Grafana's data-source test: a series named "databases" where a statement's own answer was expected.
NO_INFLUXQL = "answers /query without running InfluxQL (VictoriaMetrics does)"


def lists_databases(series_name: object) -> bool:
    """Whether a /query answer's series (by its name) is that stand-in: never a genuine answer to a SELECT
    or SHOW MEASUREMENTS, whose series are named after the measurement or "measurements"."""
    return series_name == "databases"
