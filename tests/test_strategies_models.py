"""Every strategy on real models: forward/backward, gradient flow, export parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hardseg.errors import ConfigError
from hardseg.models import SegOutput, build_model
from hardseg.strategies import Objective, StrategyContext, TrainingModel
from hardseg.strategies.coarse_to_fine import CoarseToFineNet

IGN = 255
K = 7
CTX = StrategyContext(num_classes=K, class_frequencies=np.array([900.0, 400, 300, 100, 80, 40, 20]),
                      hierarchy=((0, 0, 0, 1, 1, 1, 1), (0, 1, 1, 2, 2, 3, 3)))
SMALL_SR = {"exit_channels": 16, "warmup": 0.0}
CASES = {
    "ce": (["ce"], {}),
    "cb_ce": (["cb_ce"], {"cb_ce": {"mode": "inverse"}}),
    "focal": (["focal"], {}),
    "focal_sigmoid": (["focal"], {"focal": {"mode": "sigmoid"}}),
    "ohem": (["ohem"], {"ohem": {"min_kept_fraction": 0.2}}),
    "ohem_loss_mode": (["ohem"], {"ohem": {"thresh": None, "min_kept": 500, "normalize": "kept"}}),
    "hl": (["hl"], {}),
    "self_regulation": (["self_regulation"], {"self_regulation": SMALL_SR}),
    "self_regulation_paper": (["self_regulation"], {"self_regulation": {**SMALL_SR, "variant": "paper"}}),
    "coarse_to_fine": (["coarse_to_fine"], {}),
    "everything": (["focal", "cb_ce", "ohem", "hl", "self_regulation", "coarse_to_fine"],
                   {"self_regulation": SMALL_SR}),
}
EXPECTED_KEYS = {
    "ce": {"ce"}, "cb_ce": {"cb_ce"}, "focal": {"focal"}, "focal_sigmoid": {"focal"}, "ohem": {"ohem"},
    "ohem_loss_mode": {"ohem"}, "hl": {"hl/seg", "hl/hl"},
    "self_regulation": {"ce", "sr/cls", "sr/seg", "sr/l", "sr/f"},
    "self_regulation_paper": {"ce", "sr/cls", "sr/seg", "sr/l", "sr/f"},
    "coarse_to_fine": {"ce", "c2f/l0", "c2f/l1"},
    "everything": {"hl/seg", "hl/hl", "sr/cls", "sr/seg", "sr/l", "sr/f", "c2f/l0", "c2f/l1"},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_batch(n: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, K, (n, size, size), generator=g)
    y[:, : size // 8] = IGN
    return x, y


def build(case: str, model: str = "tiny_seg", seed: int = 0) -> tuple[TrainingModel, Objective]:
    names, params = CASES[case]
    torch.manual_seed(seed)
    net = build_model(model, K)
    objective = Objective(names, params, CTX)
    return TrainingModel(net, objective), objective


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def step(tm: TrainingModel, objective: Objective, x, y, progress: float = 0.5) -> dict[str, torch.Tensor]:
    out = SegOutput.from_dict(tm(x))
    terms = objective.losses(out, y, progress)
    terms["loss"].backward()
    return terms


@pytest.mark.parametrize("model", ["tiny_seg", "lraspp_mobilenet_v3_large"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward_every_parameter_gets_a_gradient(case, model):
    tm, objective = build(case, model)
    x, y = make_batch()
    terms = step(tm, objective, x, y)
    assert set(terms) == EXPECTED_KEYS[case] | {"loss"}
    assert all(math.isfinite(float(v.detach())) for v in terms.values())
    # no unused parameter (DDP without find_unused_parameters)
    missing = [n for n, p in tm.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in tm.parameters())


def test_self_regulation_with_default_exit_width_runs():
    torch.manual_seed(0)
    objective = Objective(["self_regulation"], {}, CTX)
    tm = TrainingModel(build_model("tiny_seg", K), objective)
    assert tm.strategy_modules["self_regulation"]["exits"]["stem"].classifier.in_channels == 256
    x, y = make_batch(size=32)
    assert math.isfinite(float(step(tm, objective, x, y, progress=0.9)["loss"].detach()))


def test_self_regulation_warmup_switches_sr_terms_on():
    tm, objective = build("self_regulation")
    objective.strategies[0].cfg = objective.strategies[0].cfg.model_copy(update={"warmup": 0.25})
    x, y = make_batch()
    out = SegOutput.from_dict(tm(x))
    before, after = objective.losses(out, y, 0.1), objective.losses(out, y, 0.3)
    assert float(before["sr/l"].detach()) == 0 and float(before["sr/f"].detach()) == 0
    assert float(after["sr/l"].detach()) > 0 and float(after["sr/f"].detach()) > 0
    torch.testing.assert_close(before["sr/cls"], after["sr/cls"])


def test_aux_head_term():
    torch.manual_seed(0)
    objective = Objective(["hl"], {}, CTX)
    tm = TrainingModel(build_model("tiny_seg", K, aux=True), objective)
    x, y = make_batch()
    terms = step(tm, objective, x, y)
    assert {"hl/seg", "hl/hl", "aux_ce"} <= set(terms)


# -- HL gradient separation on a real network --------------------------------------------------------
def test_hl_gradients_reach_only_their_side():
    tm, objective = build("hl")
    x, y = make_batch()
    out = SegOutput.from_dict(tm(x))
    terms = objective.losses(out, y, 0.5)
    net_params = list(tm.net.parameters())
    branch_params = list(tm.strategy_modules["hl"].parameters())
    g_hl = torch.autograd.grad(terms["hl/hl"], net_params + branch_params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in g_hl[: len(net_params)])  # L_HL never reaches backbone or decode head
    assert all(g is not None for g in g_hl[len(net_params):])
    g_seg = torch.autograd.grad(terms["hl/seg"], net_params + branch_params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in g_seg[len(net_params):])  # L_seg never reaches the HL branch
    assert all(g is not None for g in g_seg[: len(net_params)])
    feats = [f for f in out.features.values()]
    assert all(g is None for g in torch.autograd.grad(terms["hl/hl"], feats, allow_unused=True))


def test_hl_visuals_from_a_network(tmp_path):
    tm, objective = build("hl")
    x, y = make_batch()
    tm.eval()
    with torch.no_grad():
        vis = objective.visuals(SegOutput.from_dict(tm(x)), x, y)
    assert vis["hl/panel"].shape == (2 * 64 + 2, 4 * 64 + 6, 3) and vis["hl/panel"].dtype == np.uint8


# -- inference parity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny_seg", "lraspp_mobilenet_v3_large"])
@pytest.mark.parametrize("case", ["hl", "self_regulation", "self_regulation_paper", "ohem", "focal"])
def test_export_is_the_baseline_network(case, model):
    base, _ = build("ce", model)
    tm, objective = build(case, model)
    x, y = make_batch(seed=1)
    exported = tm.export()
    assert n_params(exported) == n_params(base.export())
    assert exported.state_dict().keys() == base.export().state_dict().keys()
    exported.eval()
    base.eval()
    with torch.no_grad():
        assert torch.equal(exported(x).logits, base.export()(x).logits)
    # after training steps the export is still the network alone and predicts what the training model does
    tm.train()
    opt = torch.optim.SGD(tm.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        step(tm, objective, x, y)
        opt.step()
    exported = tm.export().eval()
    tm.eval()
    with torch.no_grad():
        assert n_params(exported) == n_params(base.export())
        out = exported(x)
        assert isinstance(out, SegOutput) and out.logits.shape == (2, K, 64, 64)
        torch.testing.assert_close(out.logits, SegOutput.from_dict(tm(x)).logits, rtol=0, atol=0)


@pytest.mark.parametrize("model, sizes", [("tiny_seg", [32, 8, 16]), ("lraspp_mobilenet_v3_large", [8, 4, 16])])
def test_coarse_to_fine_stage_resolutions_follow_the_paper(model, sizes):
    """pspnet_stack: stage 0 is the network's head (its own resolution), the middle stage at the deep
    feature's resolution, the last at the skip's."""
    tm, _ = build("coarse_to_fine", model)
    x, _ = make_batch()
    with torch.no_grad():
        out = tm.net(x)
        scores = [out.head_logits, *tm.strategy_modules["coarse_to_fine"]["stages"](out.features, out.head_logits)]
    assert [s.shape[-1] for s in scores] == sizes
    assert [s.shape[1] for s in scores] == [2, 4, K]


def test_coarse_to_fine_rejects_unknown_skip_features():
    net = build_model("tiny_seg", K)
    for key in ("skip", "mid_skip", "deep"):
        with pytest.raises(ConfigError, match=rf"strategy_params\.coarse_to_fine\.{key}.*allowed: stem"):
            TrainingModel(net, Objective(["coarse_to_fine"], {"coarse_to_fine": {key: "layer9"}}, CTX))


def test_coarse_to_fine_export_runs_its_stages():
    base, _ = build("ce")
    tm, objective = build("coarse_to_fine")
    x, y = make_batch(seed=2)
    exported = tm.export()
    assert isinstance(exported, CoarseToFineNet)
    stages = n_params(tm.strategy_modules["coarse_to_fine"])
    # Stage 0 is the network's head, rebuilt for the coarsest level (2 classes instead of K).
    head_k = n_params(base.net.decode_head)
    head_0 = n_params(tm.net.decode_head)
    assert head_0 < head_k and stages > 0
    assert n_params(exported) == n_params(base.export()) - head_k + head_0 + stages
    exported.eval()
    tm.eval()
    with torch.no_grad():
        out = exported(x)
        assert out.logits.shape == (2, K, 64, 64)
        torch.testing.assert_close(out.logits, SegOutput.from_dict(tm(x)).logits, rtol=0, atol=0)
        assert [lv.shape[1] for lv in out.extras["c2f/levels"]] == [2, 4]
        # The coarsest level is the network's own prediction.
        torch.testing.assert_close(out.extras["c2f/levels"][0], tm.net(x).logits, rtol=0, atol=0)
