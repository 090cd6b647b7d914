"""InfluxDB 1.x request pieces shared by the analyzer's InfluxDB source and the sink (no HTTP client here):
InfluxQL quoting, basic auth."""

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
