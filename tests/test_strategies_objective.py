"""Composition rule, configuration errors, the registry's entry points, visuals."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import fresh_registry, write_plugin_distribution
from hardseg.errors import ConfigError
from hardseg.models import SegOutput
from hardseg.strategies import (Objective, Phase, PixelLoss, Strategy, StrategyContext, available_strategies,
                                get_strategy, register_strategy, validate_strategies)
from hardseg.strategies import functional as Fn
from hardseg.strategies import registry
from hardseg.strategies.base import MAIN_LOSS_HOOKS, TERMS_HOOKS
from hardseg.strategies.registry import contract_violation

IGN = 255
C = 5
BUILTINS = ["ce", "cb_ce", "focal", "ohem", "hl", "self_regulation", "coarse_to_fine"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def ctx() -> StrategyContext:
    return StrategyContext(num_classes=C, class_frequencies=np.array([500.0, 300, 100, 60, 40]),
                           hierarchy=((0, 0, 1, 1, 1), (0, 1, 2, 2, 3)))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 6, 6, generator=g)
    target = torch.randint(0, C, (2, 6, 6), generator=g)
    target[:, 0] = IGN
    return SegOutput(logits=logits, extras={"hl/logits": torch.randn(2, 1, 3, 3, generator=g)}), target


def test_builtins_are_registered():
    assert set(BUILTINS) <= set(available_strategies())
    hooks = {n: get_strategy(n).phase.hooks for n in BUILTINS}  # the phase alone decides the loss hooks called
    assert hooks == {"ce": MAIN_LOSS_HOOKS, "cb_ce": MAIN_LOSS_HOOKS, "focal": MAIN_LOSS_HOOKS, "ohem": MAIN_LOSS_HOOKS,
                     "hl": MAIN_LOSS_HOOKS, "self_regulation": TERMS_HOOKS, "coarse_to_fine": TERMS_HOOKS}
    assert MAIN_LOSS_HOOKS == ("base_loss", "shape", "reduce") and TERMS_HOOKS == ("terms",)


# -- composition rule --------------------------------------------------------------------
def test_ohem_selects_and_hl_weights_the_selected(ctx, batch):
    out, target = batch
    params = {"ohem": {"thresh": 0.9, "min_kept": 3}, "hl": {"lam": 0.1}}
    terms = Objective(["ohem", "hl"], params, ctx).losses(out, target, 0.5)
    keep = Fn.ohem_keep_mask(out.logits, target, 0.9, 3, IGN)
    l_seg, l_hl, _ = Fn.hl_losses(Fn.pixel_ce(out.logits, target) * keep, out.extras["hl/logits"], lam=0.1)
    assert set(terms) == {"hl/seg", "hl/hl", "loss"}
    torch.testing.assert_close(terms["hl/seg"], l_seg)
    torch.testing.assert_close(terms["hl/hl"], l_hl)
    torch.testing.assert_close(terms["loss"], l_seg + l_hl)


def test_composition_does_not_depend_on_list_order(ctx, batch):
    out, target = batch
    a = Objective(["hl", "ohem", "focal", "cb_ce"], {}, ctx).losses(out, target, 0.5)
    b = Objective(["cb_ce", "focal", "ohem", "hl"], {}, ctx).losses(out, target, 0.5)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_focal_defines_ell_then_class_weights_then_ohem_ranks_it(ctx, batch):
    out, target = batch
    params = {"focal": {"gamma": 1.0}, "ohem": {"thresh": None, "min_kept": 10}}
    terms = Objective(["focal", "cb_ce", "ohem"], params, ctx).losses(out, target, 0.5)
    w = Fn.class_balance_weights(ctx.class_frequencies, "median")
    ell = Fn.class_weighted_pixel_loss(Fn.focal_pixel_loss(out.logits, target, 1.0, 1.0), target, w)
    keep = Fn.ohem_keep_mask(out.logits, target, None, 10, IGN, pixel_loss=ell)
    assert set(terms) == {"seg", "loss"}  # several weightings, no HL
    torch.testing.assert_close(terms["seg"], (ell * keep).sum() / (target != IGN).sum())


def test_focal_then_hl(ctx, batch):
    out, target = batch
    terms = Objective(["focal", "hl"], {}, ctx).losses(out, target, 0.5)
    l_seg, _, _ = Fn.hl_losses(Fn.focal_pixel_loss(out.logits, target, 2.0, 1.0), out.extras["hl/logits"])
    torch.testing.assert_close(terms["hl/seg"], l_seg)


@pytest.mark.parametrize("names, key", [(["ce"], "ce"), (["cb_ce"], "cb_ce"), (["focal"], "focal"),
                                        (["ohem"], "ohem"), (["hl"], "hl/seg")])
def test_main_term_names(ctx, batch, names, key):
    out, target = batch
    terms = Objective(names, {}, ctx).losses(out, target, 0.5)
    assert key in terms and "loss" in terms


def test_single_strategies_reduce_to_their_formula(ctx, batch):
    out, target = batch
    t = Objective(["ce"], {}, ctx).losses(out, target, 0.0)
    torch.testing.assert_close(t["ce"], Fn.mean_ce(out.logits, target))
    t = Objective(["focal"], {"focal": {"gamma": 0.0}}, ctx).losses(out, target, 0.0)
    torch.testing.assert_close(t["focal"], Fn.mean_ce(out.logits, target))
    t = Objective(["ohem"], {"ohem": {"normalize": "kept", "min_kept": 4}}, ctx).losses(out, target, 0.0)
    keep = Fn.ohem_keep_mask(out.logits, target, 0.7, 4, IGN)
    torch.testing.assert_close(t["ohem"], (Fn.pixel_ce(out.logits, target) * keep).sum() / keep.sum())
    t = Objective(["ohem"], {"ohem": {"min_kept_fraction": 0.25}}, ctx).losses(out, target, 0.0)
    keep = Fn.ohem_keep_mask(out.logits, target, 0.7, 9, IGN)  # ceil(0.25 · 36) per image
    torch.testing.assert_close(t["ohem"], (Fn.pixel_ce(out.logits, target) * keep).sum() / (target != IGN).sum())


def test_aux_head_keeps_plain_ce_under_every_weighting(ctx, batch):
    out, target = batch
    out.aux = torch.randn_like(out.logits)
    for names in (["ce"], ["focal"], ["ohem"], ["hl"], ["cb_ce", "hl"]):
        terms = Objective(names, {}, ctx).losses(out, target, 0.5)
        torch.testing.assert_close(terms["aux_ce"], 0.4 * Fn.mean_ce(out.aux, target))


# -- rejected combinations and invalid settings: one line naming the key -----------------------------
@pytest.mark.parametrize("names, params, needle", [
    (["ce", "hl"], {}, "'ce'"),
    (["self_regulation", "ce"], {}, "'ce'"),
    (["hl", "ohem"], {"ohem": {"normalize": "kept"}}, "strategy_params.ohem.normalize"),
    ([], {}, "'strategies'"),
    (["hl", "hl"], {}, "'strategies'"),
    (["nope"], {}, "unknown strategy 'nope'"),
    (["hl"], {"ohem": {}}, "strategy_params.ohem"),
    (["hl"], {"hl": {"lamda": 0.1}}, "strategy_params.hl.lamda"),
    (["hl"], {"hl": {"lam": -1}}, "strategy_params.hl.lam"),
    (["hl"], {"hl": {"offset": "big"}}, "strategy_params.hl.offset"),
    (["ohem"], {"ohem": {"thresh": 1.5}}, "strategy_params.ohem.thresh"),
    (["ohem"], {"ohem": {"normalize": "mean"}}, "strategy_params.ohem.normalize"),
    (["hl", "ohem"], {"ohem": {"normalize": "valid"}}, "strategy_params.ohem.normalize"),
    (["hl", "ohem"], {"ohem": {"normalize": "all"}}, "strategy_params.ohem.normalize"),
    (["hl"], {"hl": {"lr_mult": 0}}, "strategy_params.hl.lr_mult"),
    (["cb_ce"], {"cb_ce": {"weights": "mapillary"}}, "strategy_params.cb_ce.weights"),
    (["ohem"], {"ohem": {"min_kept_fraction": 2}}, "strategy_params.ohem.min_kept_fraction"),
    (["focal"], {"focal": {"mode": "sigmoid", "alpha": 2.0}}, "strategy_params.focal.alpha"),
    (["focal"], {"focal": {"gamma": -1}}, "strategy_params.focal.gamma"),
    (["cb_ce"], {"cb_ce": {"mode": "log"}}, "strategy_params.cb_ce.mode"),
    (["self_regulation"], {"self_regulation": {"variant": "x"}}, "strategy_params.self_regulation.variant"),
    (["self_regulation"], {"self_regulation": {"warmup": 1.5}}, "strategy_params.self_regulation.warmup"),
    (["self_regulation"], {"self_regulation": {"exit_channels": 0}}, "strategy_params.self_regulation.exit_channels"),
    (["coarse_to_fine"], {"coarse_to_fine": {"hierarchy": [[0, 1], [0]]}}, "strategy_params.coarse_to_fine.hierarchy"),
    (["coarse_to_fine"], {"coarse_to_fine": {"level_weights": [-1]}}, "strategy_params.coarse_to_fine.level_weights"),
    (["hl"], {"hl": [1, 2]}, "strategy_params.hl"),
])
def test_invalid_configs_raise_one_line(names, params, needle):
    with pytest.raises(ConfigError) as err:
        validate_strategies(names, params, source="run.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("run.yaml: ")
    assert needle in msg


@pytest.mark.parametrize("names", [["hl", "ohem"], ["focal", "cb_ce", "ohem", "hl", "self_regulation", "coarse_to_fine"],
                                   ["self_regulation", "coarse_to_fine"], ["coarse_to_fine"], ["cb_ce", "focal"]])
def test_sensible_combinations_validate(names):
    validate_strategies(names, {})


def test_run_config_validation_reaches_strategy_params():
    from hardseg.config import validate_config

    cfg = validate_config({"strategies": ["hl", "ohem"], "strategy_params": {"hl": {"lam": 0.1}}})
    assert cfg.strategy_params["hl"].lam == 0.1  # typed: the strategy's own settings model
    with pytest.raises(ConfigError, match=r"strategy_params\.hl\.lam"):
        validate_config({"strategies": ["hl"], "strategy_params": {"hl": {"lam": "x"}}}, "run.yaml")


def test_errors_that_need_the_task(ctx):
    with pytest.raises(ConfigError, match="cb_ce"):
        Objective(["cb_ce"], {}, StrategyContext(num_classes=C))
    with pytest.raises(ConfigError, match=r"strategy_params\.coarse_to_fine\.hierarchy"):
        Objective(["coarse_to_fine"], {}, StrategyContext(num_classes=C))
    with pytest.raises(ConfigError, match=r"strategy_params\.coarse_to_fine\.hierarchy"):
        Objective(["coarse_to_fine"], {"coarse_to_fine": {"hierarchy": [[0, 1]]}}, ctx)
    with pytest.raises(ConfigError, match=r"strategy_params\.coarse_to_fine\.level_weights"):
        Objective(["coarse_to_fine"], {"coarse_to_fine": {"level_weights": [1.0]}}, ctx)


def test_hyperparameter_defaults_are_the_papers():
    d = {n: get_strategy(n).Config().model_dump() for n in BUILTINS}
    assert d["hl"] == {"lam": 0.01, "offset": 0.1, "lr_mult": 1.0}
    assert d["ohem"] == {"thresh": 0.7, "min_kept": 100000, "min_kept_fraction": None, "normalize": None}
    assert d["focal"] == {"mode": "softmax", "gamma": 2.0, "alpha": None}
    sr = d["self_regulation"]
    assert (sr["cls_weight"], sr["seg_weight"], sr["sr_l_weight"], sr["sr_f_weight"]) == (0.2, 0.8, 1.0, 1.0)
    assert (sr["warmup"], sr["exit_channels"], sr["variant"]) == (0.25, 256, "demo")
    assert d["coarse_to_fine"]["level_weights"] is None  # 1 per level


# -- visuals ---------------------------------------------------------------------------------------
def test_visuals_hl_panel_and_empty_for_others(ctx, batch):
    out, target = batch
    images = torch.randn(2, 3, 6, 6)
    vis = Objective(["hl"], {}, ctx).visuals(out, images, target)
    assert list(vis) == ["hl/panel"]
    img = vis["hl/panel"]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape == (2 * 6 + 2, 4 * 6 + 3 * 2, 3)  # 2 rows of image | truth | prediction | hardness
    assert Objective(["ohem"], {}, ctx).visuals(out, images, target) == {}


# -- entry points ----------------------------------------------------------------------------------
PLUGIN = '''
from hardseg.strategies import Phase, PixelLoss, Strategy, StrategyConfig


class ScaledCEConfig(StrategyConfig):
    scale: float = 0.5


class ScaledCE(Strategy):
    phase = Phase.CLASS_WEIGHTS
    Config = ScaledCEConfig

    def shape(self, px: PixelLoss) -> None:
        px.loss = self.cfg.scale * px.loss
'''


def _install_plugin(tmp_path, monkeypatch, request, module: str, source: str, entry: str) -> None:
    """A real distribution on sys.path, and a strategy registry that reads it."""
    monkeypatch.syspath_prepend(str(write_plugin_distribution(tmp_path, module, source, "hardseg.strategies", [entry])))
    fresh_registry(monkeypatch, registry.STRATEGIES)
    request.addfinalizer(lambda: sys.modules.pop(module, None))


def test_entry_point_plugin_is_registered_and_composes(tmp_path, monkeypatch, request, ctx, batch):
    _install_plugin(tmp_path, monkeypatch, request, "hardseg_plugin_demo", PLUGIN, "scaled_ce = hardseg_plugin_demo:ScaledCE")
    assert "scaled_ce" in available_strategies()
    validate_strategies(["scaled_ce", "hl"], {"scaled_ce": {"scale": 0.25}})
    with pytest.raises(ConfigError, match=r"strategy_params\.scaled_ce\.scale"):
        validate_strategies(["scaled_ce"], {"scaled_ce": {"scale": "x"}})
    out, target = batch
    terms = Objective(["scaled_ce"], {"scaled_ce": {"scale": 0.25}}, ctx).losses(out, target, 0.0)
    torch.testing.assert_close(terms["scaled_ce"], 0.25 * Fn.mean_ce(out.logits, target))


def test_entry_point_plugin_registration_is_undone():
    assert "scaled_ce" not in available_strategies()
    assert "hardseg_plugin_demo" not in sys.modules


def test_broken_plugin_is_one_line_config_error(tmp_path, monkeypatch, request):
    _install_plugin(tmp_path, monkeypatch, request, "hardseg_plugin_broken", "raise ImportError('missing dependency')",
                    "broken = hardseg_plugin_broken:Nothing")
    monkeypatch.setattr(registry.STRATEGIES, "broken", {})
    assert get_strategy("hl").name == "hl" and "broken" not in available_strategies()  # built-ins unaffected
    with pytest.raises(ConfigError, match="strategy plugin 'broken'.*missing dependency") as err:
        validate_strategies(["broken"], {}, source="run.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("run.yaml: ")



# -- the composition contract in code: a phase, and only the loss hooks it calls -----------------------
class _Scale(Strategy):
    """A weighting that halves ℓ (stands in for a third-party strategy)."""

    phase = Phase.CLASS_WEIGHTS

    def shape(self, px: PixelLoss) -> None:
        px.loss = 0.5 * px.loss


class _HalfCE(Strategy):
    """Defines ℓ itself, as focal does: BASE_LOSS calls base_loss."""

    phase = Phase.BASE_LOSS

    def base_loss(self, logits, target):
        return 0.5 * Fn.pixel_ce(logits, target)


class _ExtraShapes(Strategy):
    phase = Phase.EXTRA_TERMS

    def shape(self, px: PixelLoss) -> None:  # never called in EXTRA_TERMS
        px.loss = 0 * px.loss


class _WeightingTerms(Strategy):
    phase = Phase.CLASS_WEIGHTS

    def terms(self, out, target, progress):  # never called in CLASS_WEIGHTS
        return {"mine": out.logits.sum()}


class _ReplaceReduces(Strategy):
    phase = Phase.REPLACE_PREDICTION

    def reduce(self, px, out, main_key):  # never called in REPLACE_PREDICTION
        return None


class _NoPhase(Strategy):
    pass


class _NotAStrategy:
    phase = Phase.EXTRA_TERMS


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's state, undone after the test."""
    fresh_registry(monkeypatch, registry.STRATEGIES)


def test_builtin_phases_give_the_documented_order(ctx):
    assert [get_strategy(n).phase for n in ["coarse_to_fine", "focal", "cb_ce", "ohem", "hl", "self_regulation"]] == \
        sorted(Phase)  # steps 1, 2a, 2b, 2c, 2d, 4 of the objective's docstring, one built-in each
    assert get_strategy("ce").phase is Phase.BASE_LOSS
    for name in BUILTINS:
        cls = get_strategy(name)
        assert contract_violation(cls) is None and isinstance(cls.phase, Phase), name
        assert not hasattr(cls, "order") and not hasattr(cls, "kind"), name  # one axis: the phase
    listed = ["self_regulation", "hl", "ohem", "cb_ce", "focal", "coarse_to_fine"]
    objective = Objective(listed, {}, ctx)
    assert [s.name for s in objective.strategies] == listed[::-1]
    assert [s.name for s in objective.weighting] == ["focal", "cb_ce", "ohem", "hl"]


def test_phase_ties_keep_the_list_order(scratch_registry, ctx):
    register_strategy("scale")(_Scale)
    assert [s.name for s in Objective(["scale", "cb_ce"], {}, ctx).strategies] == ["scale", "cb_ce"]
    assert [s.name for s in Objective(["hl", "cb_ce", "scale"], {}, ctx).strategies] == ["cb_ce", "scale", "hl"]


def test_the_phase_decides_the_hooks_called(scratch_registry, ctx, batch):
    """A BASE_LOSS strategy's base_loss defines ℓ (before: only if it also declared kind 'weighting')."""
    register_strategy("half_ce")(_HalfCE)
    out, target = batch
    terms = Objective(["half_ce", "ohem"], {"ohem": {"thresh": None, "min_kept": 10}}, ctx).losses(out, target, 0.5)
    ell = 0.5 * Fn.pixel_ce(out.logits, target)
    keep = Fn.ohem_keep_mask(out.logits, target, None, 10, IGN, pixel_loss=ell)
    torch.testing.assert_close(terms["seg"], (ell * keep).sum() / (target != IGN).sum())


@pytest.mark.parametrize("cls, match", [
    (_ExtraShapes, r"'bad' \(.*_ExtraShapes\) overrides shape\(\), which the objective calls only in phase "
                   r"Phase.BASE_LOSS or .*Phase.WEIGHT_AND_REDUCE, but its phase is EXTRA_TERMS; declare one of those "
                   r"phases or move it into terms\(\)"),
    (_WeightingTerms, r"overrides terms\(\), which the objective calls only in phase Phase.REPLACE_PREDICTION or "
                      r"Phase.EXTRA_TERMS, but its phase is CLASS_WEIGHTS; .* or move it into base_loss\(\)/shape\(\)/reduce\(\)"),
    (_ReplaceReduces, r"overrides reduce\(\).*but its phase is REPLACE_PREDICTION; .* or move it into terms\(\)"),
    (_NoPhase, r"'bad' \(.*_NoPhase\) declares no phase; declare phase = Phase.<step>, one of REPLACE_PREDICTION, "
               r"BASE_LOSS, .*, EXTRA_TERMS"),
    (_NotAStrategy, r"'bad' \(.*_NotAStrategy\) is not a hardseg Strategy subclass"),
])
def test_contract_is_checked_at_registration_and_for_plugins(scratch_registry, cls, match):
    with pytest.raises(ConfigError, match=match) as err:
        register_strategy("bad")(cls)
    assert "\n" not in str(err.value) and "bad" not in available_strategies()
    # the same check, when the entry-point loader hands the registry a plugin's class (test below: a real one)
    registry.STRATEGIES._add_plugin("bad", cls)
    with pytest.raises(ConfigError, match=match) as err:
        validate_strategies(["bad"], {}, source="run.yaml")
    assert str(err.value).startswith("run.yaml: strategy plugin 'bad' (") and "\n" not in str(err.value)


BAD_PLUGIN = '''
from hardseg.strategies import Phase, Strategy


class SneakyTerms(Strategy):
    phase = Phase.SELECT_PIXELS

    def terms(self, out, target, progress):
        return {"sneaky": out.logits.sum()}
'''


def test_plugin_that_breaks_the_contract_is_one_line_config_error(tmp_path, monkeypatch, request):
    _install_plugin(tmp_path, monkeypatch, request, "hardseg_plugin_sneaky", BAD_PLUGIN,
                    "sneaky = hardseg_plugin_sneaky:SneakyTerms")
    monkeypatch.setattr(registry.STRATEGIES, "broken", {})
    assert get_strategy("hl").name == "hl" and "sneaky" not in available_strategies()  # built-ins unaffected
    with pytest.raises(ConfigError, match=r"^run.yaml: strategy plugin 'sneaky' \(hardseg_plugin_sneaky.SneakyTerms\) "
                                          r"overrides terms\(\).*but its phase is SELECT_PIXELS; declare one of "
                                          r"those phases") as err:
        validate_strategies(["sneaky"], {}, source="run.yaml")
    assert "\n" not in str(err.value)
