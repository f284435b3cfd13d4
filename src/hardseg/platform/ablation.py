"""``hardseg ablate``: strategies × seeds as a grid sweep with identical budgets and data, no search."""

from __future__ import annotations

from pathlib import Path

from hardseg import keys
from hardseg.errors import ConfigError
from hardseg.platform.names import default_sweep_name
from hardseg.platform.sweep import SweepOutcome, run_sweep
from hardseg.search_spaces import SearchSpace


def ablation_space(strategies: list[str], seeds: list[int], name: str = "ablation",
                   max_concurrent: int | None = None) -> SearchSpace:
    """The grid of an ablation as a space: ``strategies`` × ``seed``, every trial with the same budget."""
    return SearchSpace.from_dict({
        "name": name, "description": f"ablation {strategies} x seeds {seeds}",
        "params": {"strategies": {"categorical": list(strategies)}, "seed": {"categorical": list(seeds)}},
        "sweep": {"num_samples": len(strategies) * len(seeds), "metric": keys.VAL_MIOU, "mode": "max",
                  "max_concurrent": max_concurrent},
    }, source=name)


def run_ablation(strategies: list[str], seeds: list[int], *, config_path: str | None = None,
                 overrides: list[str] | None = None, name: str | None = None, in_process: bool = True,
                 max_concurrent: int | None = None, workdir: Path | None = None) -> SweepOutcome:
    """Strategies × seeds with identical budgets and data: one MLflow parent, one child per cell."""
    if not strategies or not seeds:
        raise ConfigError("ablate needs at least one strategy (--strategies) and one seed (--seeds)")
    space = ablation_space(strategies, seeds, max_concurrent=max_concurrent)
    grid = {"strategies": [p for p in space.params["strategies"].choices], "seed": list(seeds)}
    return run_sweep(space, config_path=config_path, overrides=overrides, name=name or default_sweep_name("ablation"),
                     grid=grid, kind=keys.ABLATION, in_process=in_process, workdir=workdir)
