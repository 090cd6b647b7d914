"""bitaxe-bridge: poll Bitaxe miners, publish to MQTT + Home Assistant, store to InfluxDB/SQLite."""
