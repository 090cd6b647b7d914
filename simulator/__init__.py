"""bitaxe-sim: a fleet of simulated ESP-Miner (AxeOS) miners serving the real firmware API."""
