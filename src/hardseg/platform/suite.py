"""Nightly suites: which strategies, models, datasets and seeds ``hardseg nightly`` runs, and how it judges them.

One YAML file is one suite (the shipped ones live in ``platform/suites/``)::

    name: nightly                       # previous nightly = latest FINISHED one with this name
    description: one line
    config: null                        # run config YAML the trials start from (null: embedded default;
                                        # a relative path is relative to the suite file)
    strategies: [ce, hl, ohem, focal]   # names or '+'-joined combinations
    models:                             # label -> run-config overrides (dotted keys, as --set)
      tiny: {model.name: tiny_seg, model.width: 16}
    datasets:                           # label -> run-config overrides
      synthetic: {data.dataset: synthetic, data.root: data/synthetic}
    seeds: [0, 1, 2]                    # at least 2: the noise rule needs a seed spread
    budget:                             # run-config overrides for every trial (epochs, sizes, workers)
      train.epochs: 6
    watch:                              # metrics compared with the previous nightly
      - {metric: val/miou, mode: max}
    noise: {alpha: 0.05, correction: holm}   # hardseg.reports.regression (holm, bh or none)
    max_concurrent: null                # at most this many trials at once (null: what fits)

Each (model, dataset) cell is one ablation grid (strategies × seeds, identical
budgets) nested under the nightly's MLflow parent run: models and datasets are
sets of overrides (a dataset also needs its data prepared), which one grid
dimension could not carry.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from hardseg import keys
from hardseg.platform.shipped import DistinctSeeds, available_shipped, load_shipped
from hardseg.search_spaces.space import _metric
from hardseg.strict import Strict

SUITES_DIR = "suites"  # hardseg/platform/suites/*.yaml
LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,29}$"  # part of sweep names (sweep.check_name)


class Watch(Strict):
    metric: str
    mode: Literal["max", "min"] = "max"

    _check_metric = field_validator("metric")(_metric)


class NoiseRule(Strict):
    alpha: float = Field(0.05, gt=0, lt=1, description="false-alarm rate (per nightly with holm)")
    # the reports' corrections (hardseg.reports.stats.adjust_p); "bonferroni", the old default, reads as holm
    correction: Literal["holm", "bh", "none", "bonferroni"] = "holm"


class Suite(Strict):
    name: str = Field(pattern=LABEL)
    description: str = ""
    config: str | None = None
    strategies: list[str] = Field(min_length=1)
    models: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"tiny_seg": {}}, min_length=1)
    datasets: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"synthetic": {}}, min_length=1)
    seeds: DistinctSeeds = Field(min_length=2)
    budget: dict[str, Any] = Field(default_factory=dict)
    watch: list[Watch] = Field(default_factory=lambda: [Watch(metric=keys.VAL_MIOU)], min_length=1)
    noise: NoiseRule = NoiseRule()
    max_concurrent: int | None = Field(None, ge=1)

    @field_validator("models", "datasets")
    @classmethod
    def _labels(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for label in v:
            if not re.match(LABEL, label):
                raise ValueError(f"label {label!r}: use up to 30 letters, digits, '.', '_' or '-'")
        return v

    @property
    def modes(self) -> dict[str, str]:
        return {w.metric: w.mode for w in self.watch}

    def cells(self) -> list[tuple[str, str]]:
        """(model, dataset) labels: one ablation grid each."""
        return [(m, d) for m in self.models for d in self.datasets]

    def overrides(self, model: str, dataset: str, extra: list[str]) -> list[str]:
        """``--set`` strings of a cell: budget, then model, then dataset, then the command line's."""
        items = {**self.budget, **self.models[model], **self.datasets[dataset]}
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in items.items()] + list(extra)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def available_suites() -> list[str]:
    return available_shipped(SUITES_DIR)


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """A shipped suite (by name) or a YAML file; ``config`` is resolved against the file's folder.

    Raises:
        ConfigError: missing file, bad YAML, unknown key or invalid value (one line).
    """
    return load_shipped(name_or_path, SUITES_DIR, Suite, what="nightly suite", label="suite",
                        keys="name, strategies, seeds, models, datasets, budget, watch, noise")
