"""Quoting for InfluxQL statements, shared by the analyzer's InfluxDB source and the sink's rollup repair."""

from __future__ import annotations


def quote_ident(ident: str) -> str:
    """A measurement, field or tag name: "name"."""
    return '"' + ident.replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """A tag value or string literal: 'value'."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
