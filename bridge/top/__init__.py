"""`bitaxe-bridge top`: a live terminal dashboard of the fleet, standalone or attached to a bridge over MQTT."""
