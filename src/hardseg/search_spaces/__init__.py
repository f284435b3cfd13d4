"""Search spaces and presets for sweeps (YAML files + their loader)."""
