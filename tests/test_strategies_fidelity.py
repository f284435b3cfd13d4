"""Fidelity to the reference code (docs/strategies.md): loss averaging, HL's knobs, SR's exits,
OHEM's normalisation and warning, cb_ce's weights, focal's mmsegmentation value, and the
gradient paths (detaches) that a wrong variant would break while keeping the loss value."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardseg.config import validate_config
from hardseg.errors import ConfigError
from hardseg.models import SegOutput, build_model
from hardseg.strategies import Objective, StrategyContext, TrainingModel, strategy_warnings
from hardseg.strategies import functional as Fn
from hardseg.strategies.cb_ce import CITYSCAPES_WEIGHTS
from hardseg.strategies.coarse_to_fine import C2FStages
from hardseg.strategies.ohem import OHEM

IGN = 255
C = 5
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ctx(average: str = "valid", **kw) -> StrategyContext:
    return StrategyContext(num_classes=C, class_frequencies=np.array([500.0, 300, 100, 60, 40]), average=average, **kw)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 6, 6, generator=g)
    target = torch.randint(0, C, (2, 6, 6), generator=g)
    target[:, :2] = IGN  # a third of the pixels ignored
    return SegOutput(logits=logits, aux=torch.randn(2, C, 6, 6, generator=g),
                     extras={"hl/logits": torch.zeros(2, 1, 3, 3)}), target


# -- item 2: loss.average ------------------------------------------------------------------------
def test_hl_with_uniform_weights_equals_ce_under_average_all(batch):
    out, target = batch
    ce_all = Objective(["ce"], {}, ctx("all")).losses(out, target, 0.5)
    ce_valid = Objective(["ce"], {}, ctx("valid")).losses(out, target, 0.5)
    hl = Objective(["hl"], {}, ctx("all")).losses(out, target, 0.5)  # zero HL logits: uniform w̃
    torch.testing.assert_close(hl["hl/seg"], ce_all["ce"])
    valid_fraction = (target != IGN).float().mean()
    torch.testing.assert_close(ce_valid["ce"] * valid_fraction, ce_all["ce"])  # under valid: fraction × CE
    torch.testing.assert_close(hl["aux_ce"], ce_all["aux_ce"])


def test_average_all_reaches_every_weighting_and_the_aux_head(batch):
    out, target = batch
    n_all, n_valid = target.numel(), int((target != IGN).sum())
    for names, params, key in [(["ce"], {}, "ce"), (["focal"], {}, "focal"), (["cb_ce"], {}, "cb_ce"),
                               (["ohem"], {"ohem": {"min_kept": 5}}, "ohem"), (["focal", "cb_ce"], {}, "seg")]:
        t_all = Objective(names, params, ctx("all")).losses(out, target, 0.5)
        t_valid = Objective(names, params, ctx("valid")).losses(out, target, 0.5)
        torch.testing.assert_close(t_all[key] * n_all, t_valid[key] * n_valid)
        torch.testing.assert_close(t_all["aux_ce"] * n_all, t_valid["aux_ce"] * n_valid)


def test_loss_average_config_key():
    assert validate_config({}).loss.average == "valid"
    assert validate_config({"loss": {"average": "all"}}).loss.average == "all"
    with pytest.raises(ConfigError, match=r"'loss.average'; allowed: 'valid' or 'all'") as err:
        validate_config({"loss": {"average": "mean"}}, "run.yaml")
    assert "\n" not in str(err.value)


# -- item 1: HL's knobs act under their optimiser -----------------------------------------------------
def _train_hl(optimizer: str, hl_params: dict, steps: int = 6) -> tuple[torch.Tensor, float]:
    """HL's weight map on a fixed batch after a few steps of tiny_seg at 32 px, and how far the
    branch's parameters moved. No weight decay: the branch moves by L_HL's gradient alone."""
    from hardseg.trainables.optim import build_optimizer

    lr = 0.01 if optimizer == "sgd" else 1e-3
    cfg = validate_config({"strategies": ["hl"], "strategy_params": {"hl": hl_params},
                           "train": {"optimizer": optimizer, "lr": lr, "weight_decay": 0.0}})
    torch.manual_seed(0)
    tm = TrainingModel(build_model("tiny_seg", C, width=8), objective := Objective(["hl"], cfg.strategy_params, ctx()))
    theta0 = torch.cat([p.detach().flatten().clone() for p in tm.strategy_modules.parameters()])
    opt = build_optimizer(cfg, tm)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, C, (2, 32, 32), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        objective.losses(SegOutput.from_dict(tm(x)), y, 0.5)["loss"].backward()
        opt.step()
    moved = float((torch.cat([p.detach().flatten() for p in tm.strategy_modules.parameters()]) - theta0).norm())
    with torch.no_grad():
        return Fn.hl_weights(SegOutput.from_dict(tm.eval()(x)).extras["hl/logits"], (32, 32)), moved


def test_hl_branch_is_its_own_optimiser_group_at_lr_times_lr_mult():
    from hardseg.trainables.optim import build_optimizer

    cfg = validate_config({"strategies": ["hl"], "strategy_params": {"hl": {"lr_mult": 10.0}},
                           "train": {"optimizer": "adamw", "lr": 2e-3}})
    tm = TrainingModel(build_model("tiny_seg", C, width=4), Objective(["hl"], cfg.strategy_params, ctx()))
    opt = build_optimizer(cfg, tm)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"net", "hl"} and groups["net"]["lr"] == 2e-3 and groups["hl"]["lr"] == pytest.approx(2e-2)
    assert {id(p) for p in groups["hl"]["params"]} == {id(p) for p in tm.strategy_modules["hl"].parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(tm.parameters()))


def test_each_hl_knob_changes_the_weight_maps_under_its_optimiser():
    (w_sgd, m_sgd), (w_sgd_hi, m_sgd_hi) = _train_hl("sgd", {"lam": 0.01}), _train_hl("sgd", {"lam": 100.0})
    (w_adam, m_adam), (w_adam_hi, m_adam_hi) = _train_hl("adamw", {"lam": 0.01}), _train_hl("adamw", {"lam": 100.0})
    w_mult, m_mult = _train_hl("adamw", {"lam": 0.01, "lr_mult": 10.0})

    def diff(a, b):
        return float((a - b).abs().mean())

    # SGD: the branch's step is λ × its gradient; AdamW normalises λ away; lr_mult scales AdamW's step.
    assert m_sgd_hi / m_sgd > 1000 and 0.8 < m_adam_hi / m_adam < 1.25 and m_mult / m_adam > 5
    assert diff(w_sgd, w_sgd_hi) > 1e-3 and diff(w_adam, w_mult) > 1e-2  # each knob moves the maps ...
    assert diff(w_adam, w_adam_hi) < diff(w_sgd, w_sgd_hi) / 10  # ... while AdamW all but cancels λ


# -- item 3: Self-Regulation's exits as in the demo ---------------------------------------------------
def test_self_regulation_exits_are_the_demos_on_resnet50():
    with torch.device("meta"):
        net = build_model("deeplabv3_resnet50", C)
        objective = Objective(["self_regulation"], {}, ctx())
        tm = TrainingModel(net, objective)
    exits = tm.strategy_modules["self_regulation"]["exits"]
    assert list(exits) == ["stem", "layer1", "layer2", "layer3"]  # the deepest feeds the final head
    assert net.feature_strides["stem"] == 2  # the stem before max-pooling, as SR-SS's resnet.py
    assert exits["stem"].hidden[0].out_channels == 256


def test_self_regulation_exit_inputs_and_strides_on_tiny_seg():
    torch.manual_seed(0)
    net = build_model("tiny_seg", C, width=4)
    objective = Objective(["self_regulation"], {"self_regulation": {"exit_channels": 8}}, ctx())
    tm = TrainingModel(net, objective)
    exits = tm.strategy_modules["self_regulation"]["exits"]
    assert list(exits) == ["stem", "stage2", "stage4"]
    seen = {}
    for name, e in exits.items():
        e.register_forward_pre_hook(lambda m, i, name=name: seen.update({name: i[0].shape[-1]}))
    tm(torch.randn(1, 3, 32, 32))
    assert seen == {"stem": 16, "stage2": 16, "stage4": 8}  # the stride-1 stem pooled to stride 2
    deepest = Objective(["self_regulation"], {"self_regulation": {"exit_channels": 8, "exits": ["stage8"]}}, ctx())
    assert list(TrainingModel(build_model("tiny_seg", C, width=4), deepest).strategy_modules["self_regulation"]
                ["exits"]) == ["stage8"]  # the documented non-demo option


# -- item 4: cb_ce's weights ------------------------------------------------------------------------------
def test_cb_ce_named_cityscapes_vector_and_explicit_weights(batch):
    out, target = batch
    cs = Objective(["cb_ce"], {"cb_ce": {"weights": "cityscapes"}}, StrategyContext(num_classes=19))
    w = cs.strategies[0].class_weights
    assert w.shape == (19,) and float(w.max() / w.min()) == pytest.approx(1.377, abs=1e-3)
    torch.testing.assert_close(w, torch.tensor(CITYSCAPES_WEIGHTS))
    explicit = [1.0, 2.0, 0.5, 1.0, 3.0]
    obj = Objective(["cb_ce"], {"cb_ce": {"weights": explicit}}, StrategyContext(num_classes=C))  # no frequencies
    t = obj.losses(out, target, 0.5)["cb_ce"]
    ell = Fn.pixel_ce(out.logits, target) * torch.tensor(explicit)[target.clamp(max=C - 1)]
    torch.testing.assert_close(t, ell.sum() / (target != IGN).sum())
    with pytest.raises(ConfigError, match=r"'strategy_params.cb_ce.weights': 'cityscapes' has 19 class weights .* 5"):
        Objective(["cb_ce"], {"cb_ce": {"weights": "cityscapes"}}, ctx())
    with pytest.raises(ConfigError, match=r"'strategy_params.cb_ce.weights': gives 2 class weights"):
        Objective(["cb_ce"], {"cb_ce": {"weights": [1.0, 2.0]}}, ctx())


# -- item 5: OHEM ---------------------------------------------------------------------------------------------
def test_ohem_normalisation_default_follows_loss_average_and_all_is_mmsegs_default(batch):
    out, target = batch
    keep = Fn.ohem_keep_mask(out.logits, target, 0.7, 5, IGN)
    kept_sum = (Fn.pixel_ce(out.logits, target) * keep).sum()
    for average, params, denom in [("valid", {}, (target != IGN).sum()), ("all", {}, target.numel()),
                                   ("valid", {"normalize": "all"}, target.numel()),
                                   ("all", {"normalize": "valid"}, (target != IGN).sum()),
                                   ("all", {"normalize": "kept"}, keep.sum())]:
        t = Objective(["ohem"], {"ohem": {"min_kept": 5, **params}}, ctx(average)).losses(out, target, 0.5)
        torch.testing.assert_close(t["ohem"], kept_sum / denom)


def test_ohem_warns_once_when_min_kept_covers_the_image(batch, caplog, monkeypatch):
    assert strategy_warnings(["ohem"], {}, 64 * 64)["ohem"].startswith(
        "'strategy_params.ohem.min_kept' = 100000 >= the 4096 pixels of an image")
    assert strategy_warnings(["ohem"], {"ohem": {"min_kept_fraction": 0.1}}, 64 * 64) == {}
    assert strategy_warnings(["ohem"], {}, 769 * 769) == {}
    out, target = batch
    monkeypatch.setattr(OHEM, "_warned", False)
    obj = Objective(["ohem"], {}, ctx())
    with caplog.at_level(logging.WARNING, logger="hardseg.strategies.ohem"):
        obj.losses(out, target, 0.5)
        obj.losses(out, target, 0.5)
    assert [r.getMessage() for r in caplog.records].count(strategy_warnings(["ohem"], {}, 36)["ohem"]) == 1


def test_ohem_warning_becomes_an_mlflow_tag():
    from hardseg.platform.runs import training_tags as run_tags

    cfg = validate_config({"strategies": ["ohem"]})  # synthetic 64×64 < 100000
    assert "degenerates to CE" in run_tags(cfg)["hardseg.warning.ohem"]
    cfg = validate_config({"strategies": ["ohem"], "strategy_params": {"ohem": {"min_kept_fraction": 0.1}}})
    assert not any(k.startswith("hardseg.warning") for k in run_tags(cfg))


# -- item 6: focal, sigmoid mode, equals mmsegmentation's value under average 'all' ----------------------------
def test_focal_sigmoid_equals_mmsegmentation_under_average_all():
    torch.manual_seed(4)
    logits, target = torch.randn(2, C, 5, 5), torch.randint(0, C, (2, 5, 5))
    target[0, :2] = IGN
    gamma, alpha = 2.0, 0.5
    # mmsegmentation 0.x FocalLoss(use_sigmoid=True): flatten to (N·H·W, C), one-hot, valid mask, mean of all.
    pred = logits.permute(0, 2, 3, 1).reshape(-1, C)
    flat = target.reshape(-1)
    valid = (flat != IGN).float().unsqueeze(1)
    onehot = F.one_hot(torch.where(flat == IGN, 0, flat), C).float()
    p = pred.sigmoid()
    pt = (1 - p) * onehot + p * (1 - onehot)
    weight = (alpha * onehot + (1 - alpha) * (1 - onehot)) * pt.pow(gamma)
    mmseg = (F.binary_cross_entropy_with_logits(pred, onehot, reduction="none") * weight * valid).mean()
    ours = Fn.focal_loss(logits, target, gamma, alpha, IGN, "sigmoid", average="all")
    torch.testing.assert_close(ours, mmseg)
    valid_fraction = (target != IGN).float().mean()
    torch.testing.assert_close(Fn.focal_loss(logits, target, gamma, alpha, IGN, "sigmoid") * valid_fraction, mmseg)


# -- item 7: gradient paths a wrong variant breaks while keeping the value ---------------------------------------
def test_hl_logits_are_resized_before_the_sigmoid():
    s = torch.tensor([[[[-6.0, 0.0]]]])  # bilinear ×2 (align_corners=False) gives -6, -4.5, -1.5, 0
    w = Fn.hl_weights(s, (1, 4), offset=0.1)
    expected = [1 / (1 + math.exp(-v)) + 0.1 for v in (-6.0, -4.5, -1.5, 0.0)]
    torch.testing.assert_close(w[0, 0], torch.tensor(expected))


def _finite_difference_grad(f, x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    g = torch.zeros_like(x)
    for i in range(x.numel()):
        d = torch.zeros_like(x).view(-1)
        d[i] = eps
        g.view(-1)[i] = (f(x + d.view_as(x)) - f(x - d.view_as(x))) / (2 * eps)
    return g


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_focal_gradient_includes_the_modulating_factor(mode):
    torch.manual_seed(5)
    logits = torch.randn(1, 3, 2, 2, dtype=torch.float64) * 2
    target = torch.tensor([[[0, 1], [2, IGN]]])
    f = lambda z: Fn.focal_loss(z, target, 2.0, 0.5, IGN, mode).double()  # noqa: E731
    z = logits.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(f(z), z)
    torch.testing.assert_close(auto, _finite_difference_grad(f, logits), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("variant", ["demo", "paper"])
def test_self_regulation_sr_l_teacher_is_detached(variant):
    torch.manual_seed(6)
    n, k, s = 2, 3, 4
    target = torch.randint(0, k, (n, s, s))
    exits = [torch.randn(n, k, s, s, requires_grad=True) for _ in range(2)]
    presence = [torch.randn(n, k, requires_grad=True) for _ in range(2)]
    final, final_presence = torch.randn(n, k, s, s, requires_grad=True), torch.randn(n, k, requires_grad=True)
    hidden = [torch.randn(n, 4, s, s, requires_grad=True) for _ in range(2)]
    d = Fn.self_regulation_losses(exits, presence, final, final_presence, target, IGN, variant,
                                  exit_features=hidden)
    teacher = final_presence if variant == "demo" else final
    students = presence if variant == "demo" else exits
    g_teacher, *g_students = torch.autograd.grad(d["sr_l"], [teacher, *students], allow_unused=True)
    assert g_teacher is None or float(g_teacher.abs().sum()) == 0  # deep teaches shallow, never the reverse
    assert all(float(g.abs().sum()) > 0 for g in g_students)


def test_coarse_to_fine_stage_inputs_carry_gradient():
    torch.manual_seed(7)
    feats = {"skip": torch.randn(1, 3, 8, 8, requires_grad=True), "mid": torch.randn(1, 4, 4, 4, requires_grad=True),
             "deep": torch.randn(1, 5, 4, 4, requires_grad=True)}
    level0 = torch.randn(1, 2, 4, 4, requires_grad=True)
    stages = C2FStages("deep", "mid", "skip", {"skip": 3, "mid": 4, "deep": 5}, [2, 3, 4], 6, False)
    finest = stages(feats, level0)[-1]
    grads = torch.autograd.grad(finest.square().sum(), [level0, feats["deep"], feats["mid"], feats["skip"]],
                                allow_unused=True)
    # the raw scores of the previous stage are neither softmaxed nor detached (the paper's pspnet_stack)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
