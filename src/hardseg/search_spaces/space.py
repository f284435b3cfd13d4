"""The search space model: parameters, sweep settings, validation, sampling, HardsegConfigs.

See the package docstring for the YAML format. Parsing (:meth:`SearchSpace.from_dict`)
checks the file's shape; :meth:`SearchSpace.validate` checks every parameter and
boundary value against :class:`~hardseg.config.HardsegConfig` and the strategy registry,
so a bad space fails before any trial starts.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_origin

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from hardseg import keys
from hardseg.config import (HardsegConfig, _format_validation_error, apply_overrides, config_tree, load_config,
                            section, validate_config)
from hardseg.errors import ConfigError
from hardseg.strategies import available_strategies, get_strategy
from hardseg.strict import Strict

DISTRIBUTIONS = ("uniform", "loguniform", "int", "categorical")
_METRIC = re.compile(r"^[\w.-]+/[\w./-]+$")
_PRIMITIVE = (str, int, float, bool, type(None))


def _metric(v: str) -> str:
    if not _METRIC.match(v):
        raise ValueError("must look like <split>/<name>, e.g. val/miou")
    if v.startswith(keys.TEST_PREFIX):
        raise ValueError("sweeps optimise validation metrics; test/<name> (data.test_split) is reported, never optimised")
    return v


class AshaSettings(Strict):
    """ASHA early stopping (Ray Tune's ``ASHAScheduler``) on the trials' progress in their schedule's unit:
    epochs, or iterations when the base config sets ``train.iters``; ``max_t: None`` means the trial's length."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs or iterations (the schedule's unit) before a trial "
                              "can be stopped; with iterations, a multiple of train.eval_interval")
    reduction_factor: int = Field(2, ge=2)
    max_t: int | None = Field(None, ge=1, description="in the schedule's unit; None = the trial's length")
    # one bracket per sampled strategy combination: a trial is compared at each rung only with trials
    # of its own strategies (platform.sweep.StrategyASHAScheduler; benchmarks/asha_bias.py)
    per_strategy: bool = False


class SweepSettings(Strict):
    """How many trials, what to optimise, the scheduler and the sampler seed."""

    num_samples: int = Field(8, ge=1)
    metric: str = keys.VAL_MIOU
    mode: Literal["max", "min"] = "max"
    objectives: list[tuple[str, Literal["max", "min"]]] | None = Field(None, min_length=2)
    scheduler: AshaSettings | None = None
    seed: int = 0
    max_concurrent: int | None = Field(None, ge=1, description="None = derived from the cluster's resources")

    _check_metric = field_validator("metric")(_metric)

    @field_validator("objectives", mode="before")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        """Accept ``[{metric: val/miou, mode: max}, ...]`` as (metric, mode) pairs."""
        if not isinstance(v, list):
            return v
        for o in v:
            if isinstance(o, dict) and set(o) != {"metric", "mode"}:
                raise ValueError("each objective must be {metric: <split>/<name>, mode: max|min}")
        return [(o["metric"], o["mode"]) if isinstance(o, dict) else o for o in v]

    @field_validator("objectives")
    @classmethod
    def _objective_metrics(cls, v: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
        for m, _ in v or []:
            _metric(m)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SweepSettings:
        if self.is_multi_objective and self.scheduler is not None:
            raise ValueError("a scheduler needs a single metric: drop 'objectives' or set 'scheduler: null'")
        return self

    @property
    def is_multi_objective(self) -> bool:
        return bool(self.objectives)

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.objectives] if self.objectives else [self.metric]

    @property
    def modes(self) -> list[str]:
        return [m for _, m in self.objectives] if self.objectives else [self.mode]


class _SpaceFile(Strict):
    name: str | None = None
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    sweep: SweepSettings = SweepSettings()


@dataclass(frozen=True)
class Param:
    """One sampled HardsegConfig value; ``when``: sampled only if ALL these strategies are in the trial's."""

    path: str
    distribution: Literal["uniform", "loguniform", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    when: tuple[str, ...] = ()

    def boundary_values(self) -> list[Any]:
        """The values :meth:`SearchSpace.validate` checks: low and high, or every choice."""
        return list(self.choices) if self.distribution == "categorical" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """Ask an ``optuna.trial.Trial`` for this parameter's value (named by its dotted path)."""
        if self.distribution == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.distribution == "int":
            return trial.suggest_int(self.path, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, step=self.step,
                                   log=self.distribution == "loguniform")

    def to_dict(self) -> dict[str, Any]:
        """The parameter in the YAML format (with ``when`` made explicit)."""
        values = list(self.choices) if self.distribution == "categorical" else [self.low, self.high]
        out: dict[str, Any] = {self.distribution: values}
        out.update({k: v for k, v in (("step", self.step), ("log", self.log)) if v})
        return out | ({"when": list(self.when)} if self.when else {})


def _number(x: Any, integer: bool) -> Any:
    """Numbers as given; strings such as '1e-3' (YAML reads them as strings) become floats."""
    if isinstance(x, str) and not integer:
        try:
            return float(x)
        except ValueError:
            return x
    return x


def _combo(choice: Any, where: str) -> str:
    """A strategies choice ('hl', 'hl+ohem' or [hl, ohem]) as the canonical '+'-joined string."""
    names = choice.split("+") if isinstance(choice, str) else choice if isinstance(choice, list) else None
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"{where}: each choice must be a strategy name, 'a+b' or a list of names, got {choice!r}")
    return "+".join(n.strip() for n in names)


def parse_param(path: str, raw: dict[str, Any], src: str) -> Param:
    """Check one ``params`` entry's shape (not yet its path or values) and build the Param."""
    where = f"{src}: '{path}'"
    dists = [k for k in DISTRIBUTIONS if k in raw]
    if len(dists) != 1:
        raise ConfigError(f"{where} needs exactly one of {', '.join(DISTRIBUTIONS)}, got keys {sorted(raw)}")
    dist = dists[0]
    allowed = {dist, "when"} | ({"step"} if dist in ("uniform", "int") else set()) | ({"log"} if dist == "int" else set())
    if extra := sorted(set(raw) - allowed):
        raise ConfigError(f"{where}: unknown key '{extra[0]}' for a {dist} parameter; allowed: {', '.join(sorted(allowed))}")
    when = raw.get("when")
    when = [when] if isinstance(when, str) else when
    if when is not None and (path == "strategies" or not isinstance(when, list) or not when
                             or not all(isinstance(w, str) for w in when)):
        raise ConfigError(f"{where}: 'when' must be a strategy name or a list of names (not on 'strategies' itself)")
    if when is None and path.startswith("strategy_params."):
        when = [path.split(".")[1]]
    when = tuple(when or ())
    if dist == "categorical":
        choices = raw[dist]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs at least one choice, e.g. {{categorical: [a, b]}}")
        if path == "strategies":
            choices = [_combo(c, where) for c in choices]
        elif not all(isinstance(c, _PRIMITIVE) for c in choices):
            raise ConfigError(f"{where}: categorical choices must be strings, numbers, booleans or null")
        return Param(path, dist, choices=tuple(choices), when=when)
    if path == "strategies":
        raise ConfigError(f"{where} must be categorical, e.g. {{categorical: [ce, hl, 'hl+ohem']}}")
    integer = dist == "int"
    rng = [_number(x, integer) for x in raw[dist]] if isinstance(raw[dist], list) else raw[dist]
    ok = (int,) if integer else (int, float)
    if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, ok) and not isinstance(x, bool) for x in rng)):
        raise ConfigError(f"{where}: {dist} needs [low, high] with two {'integers' if integer else 'numbers'}, got {raw[dist]!r}")
    low, high = rng if integer else map(float, rng)
    if low > high:
        raise ConfigError(f"{where} has low > high: [{low}, {high}]")
    if low == high:
        raise ConfigError(f"{where} has an empty range [{low}, {high}]")
    log, step = raw.get("log", False), raw.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false")
    if (dist == "loguniform" or log) and low <= 0:
        raise ConfigError(f"{where}: a {dist if dist == 'loguniform' else 'log'} range must be > 0, got [{low}, {high}]")
    if step is not None and (not isinstance(step, ok) or isinstance(step, bool) or step <= 0 or log):
        raise ConfigError(f"{where}: 'step' must be a positive {'integer' if integer else 'number'} (and not combined with log)")
    return Param(path, dist, low, high, step, log, when=when)


def _set(tree: dict[str, Any], dotted: str, value: Any, src: str) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = 'a.b.c'``, creating sections."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = section(node, part)
        if not isinstance(node, dict):
            raise ConfigError(f"{src}: cannot set '{dotted}': '{part}' is not a section")
    node[leaf] = value


def _is_model(x: Any) -> bool:
    return get_origin(x) is None and isinstance(x, type) and issubclass(x, BaseModel)


def check_path(path: str, src: str) -> None:
    """A parameter path must name one value of HardsegConfig (or of a strategy's Config)."""
    parts = path.split(".")
    if parts[0] == "strategy_params":
        known = available_strategies()
        if len(parts) != 3 or parts[1] not in known:
            raise ConfigError(f"{src}: unknown parameter '{path}' (use strategy_params.<strategy>.<key>; "
                              f"strategies: {', '.join(known)})")
        fields = get_strategy(parts[1]).Config.model_fields
        if parts[2] not in fields:
            raise ConfigError(f"{src}: unknown parameter '{path}' (keys allowed under "
                              f"'strategy_params.{parts[1]}': {', '.join(fields) or 'none'})")
        return
    model: Any = HardsegConfig
    for i, part in enumerate(parts):
        if not _is_model(model) or part not in model.model_fields:
            where = f"the keys allowed under '{'.'.join(parts[:i])}'" if i else "the top-level keys"
            allowed = f": {', '.join(model.model_fields)}" if _is_model(model) else ""
            raise ConfigError(f"{src}: unknown parameter '{path}' (check {where}{allowed})")
        model = model.model_fields[part].annotation
    if _is_model(model):
        raise ConfigError(f"{src}: '{path}' is a section, not a value; name one of its keys")


@dataclass
class SearchSpace:
    """A named search space: base overrides, sampled parameters and sweep settings."""

    name: str
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    sweep: SweepSettings = field(default_factory=SweepSettings)
    source: str = field(default="<dict>", compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>", default_name: str = "space") -> SearchSpace:
        """Parse the YAML format (shape only; :meth:`validate` checks names and values)."""
        label = f"space {data.get('name') or default_name}"
        try:
            raw = _SpaceFile.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err, label)) from None
        if not raw.params:
            raise ConfigError(f"{label}: 'params' is empty; add at least one parameter to sample")
        params = {p: parse_param(p, spec, label) for p, spec in raw.params.items()}
        return cls(raw.name or default_name, raw.description, raw.base, params, raw.sweep, source)

    @property
    def label(self) -> str:
        return f"space {self.name}"

    def strategy_options(self, cfg: dict[str, Any]) -> list[list[str]]:
        """The strategy lists a trial can have (``cfg``: the config tree before base)."""
        if "strategies" in self.params:
            return [c.split("+") for c in self.params["strategies"].choices]
        fixed = self.base.get("strategies", cfg.get("strategies"))
        return [fixed.split("+") if isinstance(fixed, str) else list(fixed) if isinstance(fixed, list) else [str(fixed)]]

    def validate(self, config_path: str | None = None, *,
                 file_config: HardsegConfig | None = None) -> dict[str, HardsegConfig]:
        """Check every path and boundary value on top of the config file (None: the default; ``file_config``: its
        config, loaded already) + base.

        Returns the space's typed form on that file: each strategy option a trial can have (``a+b``) → its
        validated config (file + base + that option). Each boundary value is applied once to that config's typed
        tree (:func:`hardseg.config.config_tree`): only the strategy settings it reaches are validated again.

        Raises:
            ConfigError: one line naming the parameter to fix.
        """
        cfg = config_tree(file_config or load_config(config_path))
        options, known = self.strategy_options(cfg), available_strategies()
        if unknown := [s for combo in options for s in combo if s not in known]:
            raise ConfigError(f"{self.label}: unknown strategy '{unknown[0]}' in 'strategies'; allowed: {', '.join(known)}")
        if "strategies" in self.base and "strategies" in self.params:
            raise ConfigError(f"{self.label}: 'strategies' is both in base and params; keep one")
        possible = {s for combo in options for s in combo}
        for key in self.base:
            if key.startswith("strategy_params.") and key.split(".")[1] not in possible:
                raise ConfigError(f"{self.label}: base sets '{key}' but no trial can have '{key.split('.')[1]}'")
        bases: dict[str, HardsegConfig] = {}
        if "strategies" in self.params:  # every choice is validated with base, first
            check_path("strategies", self.label)
            for choice in self.params["strategies"].choices:
                bases[choice] = validate_config(self._tree(cfg, {"strategies": choice}),
                                                f"{self.label} (strategies={choice!r})")
        else:
            bases["+".join(options[0])] = validate_config(self._tree(cfg, {}), f"{self.label} (base)")
        for p in self.params.values():
            if p.path == "strategies":
                continue
            check_path(p.path, self.label)
            combos = [c for c in options if set(p.when) <= set(c)]
            if not combos:
                raise ConfigError(f"{self.label}: '{p.path}' has when: {'+'.join(p.when)}, which no trial's strategies "
                                  f"include; trials can have: {' | '.join('+'.join(c) for c in options)}")
            for combo, value in ((c, v) for c in combos for v in p.boundary_values()):
                validate_config(self._tree(config_tree(bases["+".join(combo)]), {p.path: value}, base=False),
                                f"{self.label} ({p.path}={value!r})")
        return bases

    def define_by_run(self, trial: Any) -> None:
        """Define-by-run function for ``OptunaSearch(space=...)``: ``strategies`` first, then
        every parameter whose ``when`` strategies are all in the sampled ones (all of them
        when ``strategies`` is fixed: :meth:`validate` made sure their conditions hold)."""
        chosen = None
        if "strategies" in self.params:
            chosen = set(self.params["strategies"].suggest(trial).split("+"))
        for p in self.params.values():
            if p.path != "strategies" and (chosen is None or set(p.when) <= chosen):
                p.suggest(trial)

    def _tree(self, cfg: dict[str, Any], sampled: dict[str, Any], base: bool = True) -> dict[str, Any]:
        """Config tree + base (unless ``base`` is False: ``cfg`` has it) + sampled values; drops strategy_params of
        strategies not in the trial."""
        tree = copy.deepcopy(cfg)
        for key, value in [*(self.base.items() if base else ()), *sampled.items()]:
            _set(tree, key, copy.deepcopy(value), self.label)
        if isinstance(tree.get("strategies"), str):
            tree["strategies"] = tree["strategies"].split("+")
        return _drop_unused_strategy_params(tree)

    def possible_strategies(self, config_path: str | None = None) -> set[str]:
        """Every strategy name some trial of this space can use."""
        cfg = load_config(config_path).model_dump(mode="json")
        return {name for option in self.strategy_options(cfg) for name in option}

    def run_config(self, sampled: dict[str, Any], config_path: str | None = None,
                   extra_overrides: list[str] | dict[str, Any] | None = None, *,
                   file_config: HardsegConfig | None = None) -> HardsegConfig:
        """The validated HardsegConfig of one trial: config file (None: default) + base + sampled + extras.

        ``extra_overrides``: ``KEY=VALUE`` strings (as ``--set``) or a ``{dotted key: value}`` mapping.
        ``file_config``: the file's config, loaded already (else it is loaded here). The values are applied once
        to its typed tree (:func:`hardseg.config.config_tree`): only the strategy settings they reach are
        validated again.
        """
        if unknown := sorted(set(sampled) - set(self.params)):
            raise ConfigError(f"{self.label}: sampled value for unknown parameter '{unknown[0]}'")
        tree = self._tree(config_tree(file_config or load_config(config_path)), sampled)
        if isinstance(extra_overrides, dict):
            for key, value in extra_overrides.items():
                _set(tree, key, copy.deepcopy(value), self.label)
        else:
            apply_overrides(tree, list(extra_overrides or []))
        # An override for every trial may set a strategy's params; trials without it drop them.
        return validate_config(_drop_unused_strategy_params(tree), f"{self.label} (trial {sampled})")

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML format (JSON-serialisable; ``from_dict`` reads it back)."""
        sweep = self.sweep.model_dump(mode="json")
        if sweep["objectives"]:
            sweep["objectives"] = [{"metric": m, "mode": mode} for m, mode in sweep["objectives"]]
        return {"name": self.name, "description": self.description, "base": copy.deepcopy(self.base),
                "params": {p.path: p.to_dict() for p in self.params.values()}, "sweep": sweep}


def _drop_unused_strategy_params(tree: dict[str, Any]) -> dict[str, Any]:
    """Remove ``strategy_params`` of strategies the trial does not use."""
    if isinstance(tree.get("strategy_params"), dict) and isinstance(tree.get("strategies"), list):
        tree["strategy_params"] = {k: v for k, v in tree["strategy_params"].items() if k in tree["strategies"]}
    return tree
