"""Search spaces: presets, one-line errors for invalid spaces, Optuna sampling, HardsegConfigs."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import yaml

from hardseg.config import HardsegConfig
from hardseg.errors import ConfigError
from hardseg.search_spaces import SearchSpace, available_presets, load_space, preset_path

STRATEGIES = ["ce", "cb_ce", "hl", "ohem", "focal", "self_regulation", "coarse_to_fine"]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def space(params: dict, base: dict | None = None, sweep: dict | None = None, **top) -> SearchSpace:
    data = {"name": "t", "params": params, **({"base": base} if base else {}), **({"sweep": sweep} if sweep else {}), **top}
    return SearchSpace.from_dict(data)


# -- presets ---------------------------------------------------------------------------


def test_available_presets():
    assert set(available_presets()) >= {"quickstart", *STRATEGIES}
    assert preset_path("hl").is_file()


@pytest.mark.parametrize("name", available_presets())
def test_preset_loads_and_validates(name):
    s = load_space(name)
    s.validate()
    assert s.name == name and s.description and s.params
    assert s.sweep.metric == "val/miou" and s.sweep.scheduler is not None
    if name in STRATEGIES:  # one strategy, fixed by base
        assert s.base["strategies"] == [name] and s.base["train.epochs"] == 4 and s.sweep.num_samples == 8


@pytest.mark.parametrize("name", available_presets())
def test_presets_search_an_hl_knob_that_acts_under_their_optimiser(name):
    """λ only scales the HL branch's gradient: it acts under SGD, AdamW cancels it; lr_mult acts under both."""
    s = load_space(name)
    if not {"strategy_params.hl.lam", "strategy_params.hl.lr_mult"} & set(s.params):
        return
    opt = s.params["train.optimizer"].choices if "train.optimizer" in s.params else \
        (s.base.get("train.optimizer") or s.base.get("train", {}).get("optimizer") or "adamw",)
    for o in opt:
        knob = "strategy_params.hl.lam" if o == "sgd" else "strategy_params.hl.lr_mult"
        assert knob in s.params, f"{name}: under {o} search {knob}"
    if "adamw" in opt:
        assert "strategy_params.hl.lam" not in s.params, f"{name}: λ is searched under AdamW, where it does not act"


def test_quickstart_contents():
    s = load_space("quickstart")
    assert s.params["strategies"].choices == ("ce", "hl", "ohem", "focal")
    assert s.params["strategy_params.hl.lr_mult"].when == ("hl",)  # AdamW: λ would not act (docs/strategies.md §1)
    assert (s.sweep.num_samples, s.sweep.seed, s.sweep.scheduler.grace_period, s.sweep.scheduler.reduction_factor) == (6, 0, 1, 2)
    assert s.sweep.metrics == ["val/miou"] and s.sweep.modes == ["max"] and not s.sweep.is_multi_objective


def test_load_by_path(tmp_path):
    path = write(tmp_path, "params: {train.lr: {loguniform: [1e-3, 1e-2]}}\n", "mine.yaml")
    s = load_space(path)
    assert s.name == "mine" and s.source == str(path) and s.sweep.scheduler is None
    assert s.params["train.lr"].low == pytest.approx(1e-3)  # YAML's string '1e-3' is read as a number
    s.validate()


# -- invalid spaces ----------------------------------------------------------------------

LR = {"train.lr": {"loguniform": [1e-3, 1e-2]}}

INVALID = {
    "unknown path": ({"train.lrr": {"uniform": [0.1, 0.2]}}, {}, "unknown parameter 'train.lrr'"),
    "unknown section": ({"trian.lr": {"uniform": [0.1, 0.2]}}, {}, "unknown parameter 'trian.lr' (check the top-level"),
    "section": ({"train": {"uniform": [0.1, 0.2]}}, {}, "'train' is a section"),
    "unknown strategy key": ({"strategy_params.hl.lamb": {"uniform": [0.1, 0.2]}}, {}, "'strategy_params.hl.lamb'"),
    "empty range": ({"train.lr": {"uniform": [0.01, 0.01]}}, {}, "'train.lr' has an empty range"),
    "low > high": ({"train.lr": {"uniform": [0.1, 0.01]}}, {}, "'train.lr' has low > high"),
    "log low <= 0": ({"train.lr": {"loguniform": [0.0, 0.1]}}, {}, "'train.lr': a loguniform range must be > 0"),
    "int log low <= 0": ({"train.epochs": {"int": [0, 4], "log": True}}, {}, "'train.epochs': a log range must be > 0"),
    "int floats": ({"train.epochs": {"int": [1.5, 4]}}, {}, "'train.epochs': int needs [low, high] with two integers"),
    "empty categorical": ({"train.optimizer": {"categorical": []}}, {}, "'train.optimizer': categorical needs at least one"),
    "two kinds": ({"train.lr": {"uniform": [0.1, 0.2], "loguniform": [0.1, 0.2]}}, {}, "'train.lr' needs exactly one"),
    "unknown param key": ({"train.lr": {"uniform": [0.1, 0.2], "logg": True}}, {}, "'train.lr': unknown key 'logg'"),
    "value out of bounds": ({"train.lr": {"uniform": [-0.1, 0.2]}}, {}, "(train.lr=-0.1)"),
    "bad choice": ({"train.optimizer": {"categorical": ["adamw", "rmsprop"]}}, {}, "train.optimizer='rmsprop'"),
    "unknown strategy": ({"strategies": {"categorical": ["ce", "hll"]}, **LR}, {}, "unknown strategy 'hll'"),
    "bad combo": ({"strategies": {"categorical": ["hl", "ce+hl"]}, **LR}, {}, "strategies='ce+hl'"),
    "impossible when": ({"strategies": {"categorical": ["ce", "ohem"]}, "strategy_params.hl.lam": {"uniform": [0.1, 0.2]}},
                        {}, "'strategy_params.hl.lam' has when: hl, which no trial"),
    "impossible explicit when": ({"train.lr": {"uniform": [0.1, 0.2], "when": ["hl", "ohem"]}}, {"strategies": ["hl"]},
                                 "'train.lr' has when: hl+ohem"),
    "when on fixed strategies": ({"strategy_params.focal.gamma": {"uniform": [0.5, 2.0]}}, {"strategies": ["hl"]},
                                 "'strategy_params.focal.gamma' has when: focal"),
    "strategy value": ({"strategy_params.focal.gamma": {"uniform": [-1.0, 2.0]}}, {"strategies": ["focal"]},
                       "strategy_params.focal.gamma=-1.0"),
    "strategies not categorical": ({"strategies": {"uniform": [0.1, 0.2]}}, {}, "'strategies' must be categorical"),
    "base typo": (LR, {"train.epoch": 3}, "space t (base): unknown key 'train.epoch'"),
    "base strategy_params": (LR, {"strategy_params.ohem.thresh": 0.5}, "base sets 'strategy_params.ohem.thresh'"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_space(case):
    params, base, message = INVALID[case]
    with pytest.raises(ConfigError) as err:
        space(params, base).validate()
    assert message in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("space t")


BAD_SWEEPS = {
    "metric": ({"metric": "miou"}, "'sweep.metric'"),
    "mode": ({"mode": "maximise"}, "'sweep.mode'"),
    "scheduler type": ({"scheduler": {"type": "hyperband"}}, "'sweep.scheduler.type'"),
    "grace period": ({"scheduler": {"grace_period": 0}}, "'sweep.scheduler.grace_period'"),
    "reduction factor": ({"scheduler": {"reduction_factor": 1}}, "'sweep.scheduler.reduction_factor'"),
    "num samples": ({"num_samples": 0}, "'sweep.num_samples'"),
    "unknown key": ({"samples": 3}, "unknown key 'sweep.samples'"),
    "one objective": ({"objectives": [{"metric": "val/miou", "mode": "max"}]}, "'sweep.objectives'"),
    "objective metric": ({"objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "band", "mode": "max"}]},
                         "'sweep.objectives': Value error, must look like <split>/<name>"),
    "objective key": ({"objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "val/x", "sense": "max"}]},
                      "{metric: <split>/<name>, mode: max|min}"),
    "objectives + scheduler": ({"objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "val/x", "mode": "min"}],
                                "scheduler": {"type": "asha"}}, "a scheduler needs a single metric"),
}


@pytest.mark.parametrize("case", BAD_SWEEPS, ids=list(BAD_SWEEPS))
def test_invalid_sweep(case):
    sweep, message = BAD_SWEEPS[case]
    with pytest.raises(ConfigError, match="^space t: ") as err:
        space(LR, sweep=sweep)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_multi_objective():
    objectives = [{"metric": "val/miou", "mode": "max"}, {"metric": "val/band_iou", "mode": "max"}]
    s = space(LR, sweep={"objectives": objectives})
    assert s.sweep.is_multi_objective and s.sweep.metrics == ["val/miou", "val/band_iou"] and s.sweep.modes == ["max", "max"]
    assert s.to_dict()["sweep"]["objectives"] == objectives


@pytest.mark.parametrize("text, message", [
    ("params: {train.lr: {uniform: [0.1, 0.2]}}\nextra: 1\n", "unknown key 'extra'"),
    ("params: {train.lr: {uniform: [0.1, 0.2]}\n", "not valid YAML"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("description: nothing to sample\n", "'params' is empty"),
    ("params: {train.lr: 0.1}\n", "'params.train.lr'"),
])
def test_invalid_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match="space|not valid|top level") as err:
        load_space(write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_preset(tmp_path):
    with pytest.raises(ConfigError, match=r"file not found: .*nope.yaml .*quickstart"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"unknown search space preset 'quickstrat'; available: .*quickstart"):
        load_space("quickstrat")


# -- sampling -----------------------------------------------------------------------------

MIXED = {
    "strategies": {"categorical": ["ce", "hl", "ohem+hl", ["focal", "coarse_to_fine"]]},
    "train.lr": {"loguniform": [1e-3, 1e-2]},
    "train.batch_size": {"int": [8, 32], "step": 8},
    "train.epochs": {"int": [1, 8], "log": True},
    "train.optimizer": {"categorical": ["adamw", "sgd"]},
    "strategy_params.hl.lam": {"loguniform": [1e-3, 1e-1]},
    "strategy_params.focal.gamma": {"uniform": [0.5, 3.0]},
    "train.warmup_epochs": {"uniform": [0.0, 1.0], "when": ["hl", "ohem"]},
}


def sample(s: SearchSpace, n: int = 30, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), direction="maximize")
    out = []
    for i in range(n):
        trial = study.ask()
        s.define_by_run(trial)
        study.tell(trial, float(i % 7))
        out.append(dict(trial.params))
    return out


def test_define_by_run_conditional_params():
    s = space(MIXED)
    s.validate()
    assert s.params["strategies"].choices == ("ce", "hl", "ohem+hl", "focal+coarse_to_fine")
    trials = sample(s)
    seen = {t["strategies"] for t in trials}
    assert len(seen) >= 3
    for t in trials:
        names = t["strategies"].split("+")
        assert ("strategy_params.hl.lam" in t) == ("hl" in names)
        assert ("strategy_params.focal.gamma" in t) == ("focal" in names)
        assert ("train.warmup_epochs" in t) == ({"hl", "ohem"} <= set(names))
        assert 1e-3 <= t["train.lr"] <= 1e-2 and t["train.optimizer"] in ("adamw", "sgd")
        assert t["train.batch_size"] in (8, 16, 24, 32) and isinstance(t["train.epochs"], int) and 1 <= t["train.epochs"] <= 8
        if "hl" in names:
            assert 1e-3 <= t["strategy_params.hl.lam"] <= 1e-1
        if "focal" in names:
            assert 0.5 <= t["strategy_params.focal.gamma"] <= 3.0
        assert isinstance(s.run_config(t), HardsegConfig)  # every sampled combination is a valid run
    assert sample(s, 12) == trials[:12]  # same seed, same sequence


def test_define_by_run_log_scale():
    s = space({"train.lr": {"loguniform": [1e-6, 1.0]}})
    lrs = [t["train.lr"] for t in sample(s, 40, seed=1)]
    assert sum(math.log10(x) < -3 for x in lrs) >= 10  # uniform would put ~0.1 % there


def test_define_by_run_fixed_strategies_samples_everything():
    s = load_space("hl")
    for t in sample(s, 5):
        assert set(t) == set(s.params)


# -- run configs -------------------------------------------------------------------------

def test_run_config():
    s = load_space("quickstart")
    cfg = s.run_config({"strategies": "ohem", "train.lr": 0.004, "strategy_params.ohem.thresh": 0.6},
                       extra_overrides=["seed=7", "tracking.experiment=sweep"])
    assert cfg.strategies == ["ohem"] and cfg.train.lr == 0.004 and cfg.train.epochs == 3
    assert cfg.model_dump()["strategy_params"] == {"ohem": {"min_kept_fraction": 0.1, "thresh": 0.6}}
    assert cfg.seed == 7 and cfg.tracking.experiment == "sweep"
    # base strategy_params of a strategy the trial lacks are dropped
    cfg = s.run_config({"strategies": "hl", "train.lr": 0.004, "strategy_params.hl.lr_mult": 5.0},
                       extra_overrides={"ray.num_workers": 1, "data.eval_domains": ["fog-3", "night-1"]})
    assert cfg.strategies == ["hl"] and cfg.model_dump()["strategy_params"] == {"hl": {"lr_mult": 5.0}}
    assert cfg.ray.num_workers == 1 and cfg.data.eval_domains == ["fog-3", "night-1"]


def test_run_config_fixed_strategies_and_config_file(tmp_path):
    config = write(tmp_path, "train: {epochs: 9, batch_size: 4}\nstrategies: [focal]\n", "run.yaml")
    s = load_space("self_regulation")
    s.validate(str(config))
    cfg = s.run_config({"strategy_params.self_regulation.warmup": 0.3}, config_path=str(config))
    assert cfg.strategies == ["self_regulation"] and cfg.train.epochs == 4 and cfg.train.batch_size == 4
    assert cfg.model_dump()["strategy_params"]["self_regulation"] == {"exit_channels": 16, "warmup": 0.3}


def test_run_config_errors():
    s = load_space("quickstart")
    with pytest.raises(ConfigError, match="unknown parameter 'train.lrr'"):
        s.run_config({"train.lrr": 0.1})
    with pytest.raises(ConfigError, match="seed"):
        s.run_config({"strategies": "ce"}, extra_overrides=["seed=abc"])


# -- serialisation ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["quickstart", "cb_ce"])
def test_to_dict_round_trip(tmp_path, name):
    s = load_space(name)
    data = json.loads(json.dumps(s.to_dict()))
    assert SearchSpace.from_dict(data) == s
    again = load_space(write(tmp_path, yaml.safe_dump(data), f"{name}.yaml"))
    assert again == s and again.to_dict() == s.to_dict()


def test_mixed_round_trip():
    s = space(MIXED, sweep={"objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "val/band_iou", "mode": "max"}]})
    assert SearchSpace.from_dict(json.loads(json.dumps(s.to_dict()))) == s
