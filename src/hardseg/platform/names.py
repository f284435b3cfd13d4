"""Names of sweeps and of their trials' runs (no Ray, no torch: ``--dry-run`` prints them)."""

from __future__ import annotations

import re
import time
from typing import Any

from hardseg.errors import ConfigError


def default_sweep_name(space_name: str) -> str:
    """``<space>-<YYYYmmdd-HHMMSS>``."""
    return f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_name(name: str) -> str:
    """``name`` if it can name a sweep or study (a folder, an MLflow tag value, an Optuna study), else a
    one-line ConfigError."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise ConfigError(f"invalid sweep name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


def trial_run_name(sampled: dict[str, Any]) -> str:
    """A child run's name in the MLflow UI: what differs between the trials, not the trial id.

    The strategies first, then each sampled parameter by its last path component with
    two significant digits, the seed last: ``hl · seed 1`` (an ablation cell),
    ``hl lam=0.03 lr=0.0031`` (a search trial). The trial id stays in ``hardseg.trial_id``.
    """
    strategies = sampled.get("strategies")
    if isinstance(strategies, (list, tuple)):
        strategies = "+".join(map(str, strategies))
    parts = [str(strategies)] if strategies is not None else []
    for key in sorted(k for k in sampled if k not in ("strategies", "seed")):
        value = sampled[key]
        parts.append(f"{key.split('.')[-1]}=" + (f"{value:.2g}" if isinstance(value, float) else str(value)))
    name = " ".join(parts) or "trial"
    return f"{name} · seed {sampled['seed']}" if "seed" in sampled else name
