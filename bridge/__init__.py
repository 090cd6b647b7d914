"""bitaxe-bridge: poll Bitaxe miners, publish to MQTT + Home Assistant, store to InfluxDB/SQLite."""

# The one place the version is written: pyproject.toml reads it (dynamic), and every CLI's --version shows
# it, also when run from a source checkout (`python3 -m bridge.cli`) where no package metadata exists.
__version__ = "0.1.0"
