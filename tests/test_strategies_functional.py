"""The strategies' math (hardseg.strategies.functional) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hardseg.strategies import functional as Fn

IGN = 255


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def logits_for_probs(p_gt: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class logits [0, z] on a 1×1×len row whose ground truth is class 1 with prob p."""
    z = torch.tensor([math.log(p / (1 - p)) for p in p_gt])
    logits = torch.stack([torch.zeros_like(z), z]).view(1, 2, 1, -1)
    return logits, torch.ones(1, 1, len(p_gt), dtype=torch.long)


# -- CE ------------------------------------------------------------------------------
def test_pixel_ce_is_zero_at_ignored_pixels_and_matches_log_softmax():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 3, 5), torch.randint(0, 4, (2, 3, 5))
    target[0, 0, :2] = IGN
    ell = Fn.pixel_ce(logits, target, IGN)
    ref = -F.log_softmax(logits, 1).gather(1, target.clamp(max=3).unsqueeze(1)).squeeze(1)
    assert ell.shape == (2, 3, 5)
    assert torch.all(ell[0, 0, :2] == 0)
    valid = target != IGN
    torch.testing.assert_close(ell[valid], ref[valid])
    torch.testing.assert_close(Fn.mean_ce(logits, target, IGN), ref[valid].mean())


def test_mean_ce_with_every_pixel_ignored_is_zero():
    assert float(Fn.mean_ce(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), IGN))) == 0.0


# -- focal -----------------------------------------------------------------------------
def test_focal_gamma0_alpha1_equals_ce():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 5, 8, 8), torch.randint(0, 5, (2, 8, 8))
    target[:, :2] = IGN
    torch.testing.assert_close(Fn.focal_loss(logits, target, gamma=0.0, alpha=1.0), Fn.mean_ce(logits, target))
    torch.testing.assert_close(Fn.focal_pixel_loss(logits, target, 0.0, 1.0), Fn.pixel_ce(logits, target))


def test_focal_softmax_hand_value():
    # p = softmax([0, ln 3]) = [0.25, 0.75], y = 1: FL = α (1 − 0.75)^2 (−ln 0.75)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    target = torch.ones(1, 1, 1, dtype=torch.long)
    expected = 0.5 * 0.25 ** 2 * -math.log(0.75)
    assert float(Fn.focal_loss(logits, target, gamma=2.0, alpha=0.5)) == pytest.approx(expected, rel=1e-5)


def test_focal_sigmoid_hand_value_and_ignore():
    # z = [2, −1], y = 0, γ = 2, α = 0.25: one-vs-all BCE per channel, mean over the 2 channels.
    logits = torch.tensor([[2.0, 0.3], [-1.0, 5.0]]).view(1, 2, 1, 2)  # second pixel is ignored
    target = torch.tensor([[[0, IGN]]])
    b0 = math.log(1 + math.exp(-2.0))  # t = 1, z = 2
    b1 = math.log(1 + math.exp(-1.0))  # t = 0, z = −1
    f0 = 0.25 * (1 - math.exp(-b0)) ** 2 * b0
    f1 = 0.75 * (1 - math.exp(-b1)) ** 2 * b1
    pix = Fn.focal_pixel_loss(logits, target, 2.0, 0.25, IGN, "sigmoid")
    assert float(pix[0, 0, 0]) == pytest.approx((f0 + f1) / 2, rel=1e-5)
    assert float(pix[0, 0, 1]) == 0.0
    assert float(Fn.focal_loss(logits, target, 2.0, 0.25, IGN, "sigmoid")) == pytest.approx((f0 + f1) / 2, rel=1e-5)


def test_focal_never_modifies_the_labels():
    target = torch.tensor([[[0, IGN]]])
    before = target.clone()
    Fn.focal_loss(torch.randn(1, 3, 1, 2), target, mode="sigmoid")
    Fn.focal_loss(torch.randn(1, 3, 1, 2), target)
    assert torch.equal(target, before)


# -- OHEM -----------------------------------------------------------------------------
P = [0.1, 0.2, 0.3, 0.8, 0.9]


@pytest.mark.parametrize("thresh, min_kept, kept", [
    (0.7, 2, [1, 1, 1, 0, 0]),     # p_sorted[2] = 0.3 < 0.7 → keep p < 0.7
    (0.7, 4, [1, 1, 1, 1, 0]),     # p_sorted[4] = 0.9 → keep p < 0.9
    (0.7, 100, [1, 1, 1, 1, 0]),   # min_kept > valid: index n_valid − 1 = 4 → the most confident is dropped (mmseg)
    (0.95, 100, [1, 1, 1, 1, 1]),  # ... unless its p < thresh
    (0.05, 0, [0, 0, 0, 0, 0]),    # p_sorted[0] = 0.1 → nothing below it
    (None, 2, [1, 1, 0, 0, 0]),    # loss mode: the 2 largest losses
    (None, 100, [1, 1, 1, 1, 1]),  # loss mode with min_kept > valid: every valid pixel
])
def test_ohem_keeps_exactly_the_specified_pixels(thresh, min_kept, kept):
    logits, target = logits_for_probs(P + [0.01])
    target[0, 0, -1] = IGN  # the last, hardest-looking pixel is ignored: never kept
    mask = Fn.ohem_keep_mask(logits, target, thresh, min_kept, IGN)
    assert mask.dtype == torch.bool and mask.shape == target.shape
    assert mask[0, 0].tolist() == [bool(k) for k in kept] + [False]


def test_ohem_ties():
    logits, target = logits_for_probs([0.3, 0.8, 0.3, 0.3, 0.9])
    # confidence mode: threshold = p_sorted[1] = 0.3 and p < 0.3 is strict, so no tied pixel is kept
    assert not Fn.ohem_keep_mask(logits, target, 0.2, 1, IGN).any()
    # with thresh above the tie, all three tied pixels are kept
    assert Fn.ohem_keep_mask(logits, target, 0.5, 1, IGN)[0, 0].tolist() == [True, False, True, True, False]
    # loss mode: ties go to the earlier pixels
    assert Fn.ohem_keep_mask(logits, target, None, 2, IGN)[0, 0].tolist() == [True, False, True, False, False]


def test_ohem_min_kept_is_per_image():
    l1, t1 = logits_for_probs(P)
    logits, target = torch.cat([l1, l1]), torch.cat([t1, t1])
    mask = Fn.ohem_keep_mask(logits, target, None, 2, IGN)  # batch_kept = 2 · 2 = 4 over both images
    assert int(mask.sum()) == 4
    assert mask[:, 0, :2].all()  # the two hardest pixels of each image


def test_ohem_all_ignored_and_no_grad():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    assert not Fn.ohem_keep_mask(logits, torch.full((1, 2, 2), IGN), 0.7, 1, IGN).any()
    assert not Fn.ohem_keep_mask(logits, torch.zeros(1, 2, 2, dtype=torch.long), 0.7, 1, IGN).requires_grad


# -- HL -------------------------------------------------------------------------------
def test_hl_uniform_weights_give_mean_ce_over_all_pixels():
    torch.manual_seed(2)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    target[:, :3] = IGN
    ell = Fn.pixel_ce(logits, target, IGN)
    l_seg, l_hl, w = Fn.hl_losses(ell, torch.zeros(2, 1, 4, 4), lam=0.01, offset=0.1)  # resized 4×4 → 8×8
    assert w.shape == (2, 8, 8)
    torch.testing.assert_close(l_seg, ell.sum() / ell.numel())  # ignored pixels count in the denominator
    torch.testing.assert_close(l_hl, -0.01 * ell.sum() / ell.numel())


def test_hl_hand_value_and_bounds():
    ell = torch.tensor([[[1.0, 3.0]]])
    l_seg, l_hl, w = Fn.hl_losses(ell, torch.tensor([[[[-100.0, 100.0]]]]), lam=0.01, offset=0.1)
    torch.testing.assert_close(w, torch.tensor([[[0.1, 1.1]]]))
    assert float(l_seg) == pytest.approx((0.1 * 1 + 1.1 * 3) / 1.2)
    assert float(l_hl) == pytest.approx(-0.01 * (0.1 * 1 + 1.1 * 3) / 1.2)
    w = Fn.hl_weights(torch.randn(3, 1, 5, 5) * 50, (9, 9), offset=0.1)
    assert w.min() >= torch.tensor(0.1) and w.max() <= torch.tensor(1.1)  # float32 bounds


def test_hl_gradients_are_separated():
    torch.manual_seed(3)
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    hl = torch.randn(1, 1, 2, 2, requires_grad=True)
    target = torch.randint(0, 3, (1, 4, 4))
    l_seg, l_hl, _ = Fn.hl_losses(Fn.pixel_ce(logits, target), hl)
    (g_seg_logits, g_seg_hl) = torch.autograd.grad(l_seg, [logits, hl], allow_unused=True)
    (g_hl_logits, g_hl_hl) = torch.autograd.grad(l_hl, [logits, hl], allow_unused=True)
    assert g_seg_hl is None and g_hl_logits is None  # L_seg never reaches the branch, L_HL never the segmenter
    assert g_seg_logits.abs().sum() > 0 and g_hl_hl.abs().sum() > 0


def test_hl_descent_raises_weight_where_loss_is_above_the_weighted_mean():
    ell = torch.tensor([[[0.5, 1.0, 4.0]]])
    s = torch.zeros(1, 1, 1, 3, requires_grad=True)
    _, l_hl, w0 = Fn.hl_losses(ell, s, lam=1.0)
    l_hl.backward()
    with torch.no_grad():
        w1 = Fn.hl_weights(s - 0.5 * s.grad, (1, 3))
    assert float(w1[0, 0, 2]) > float(w0[0, 0, 2])  # hard pixel
    assert float(w1[0, 0, 0]) < float(w0[0, 0, 0])  # easy pixel


# -- class balance, labels --------------------------------------------------------------------
def test_class_balance_weights():
    inv = Fn.class_balance_weights([100, 300, 600], "inverse")
    torch.testing.assert_close(inv, torch.tensor([10 / 3, 10 / 9, 10 / 18]))
    assert float((torch.tensor([0.1, 0.3, 0.6]) * inv).sum()) == pytest.approx(1.0)
    torch.testing.assert_close(Fn.class_balance_weights([100, 300, 600], "median"), torch.tensor([3.0, 1.0, 0.5]))
    # an absent class gets the largest weight; the median of two values is their mean
    torch.testing.assert_close(Fn.class_balance_weights([100, 0, 300], "median"), torch.tensor([2.0, 2.0, 2 / 3]))
    torch.testing.assert_close(Fn.class_balance_weights([100, 300, 600], "median", max_weight=2.0),
                               torch.tensor([2.0, 1.0, 0.5]))


def test_class_weighted_pixel_loss():
    ell = torch.tensor([[[1.0, 2.0, 0.0]]])
    target = torch.tensor([[[0, 1, IGN]]])
    out = Fn.class_weighted_pixel_loss(ell, target, torch.tensor([3.0, 0.5]), IGN)
    torch.testing.assert_close(out, torch.tensor([[[3.0, 1.0, 0.0]]]))


def test_coarsen_labels_keeps_ignore_and_copies():
    target = torch.tensor([[[0, 1, 2, IGN], [3, 3, 0, 2]]])
    before = target.clone()
    out = Fn.coarsen_labels(target, (0, 0, 1, 1), IGN)
    assert out.tolist() == [[[0, 0, 1, IGN], [1, 1, 0, 1]]]
    assert torch.equal(target, before)


def test_presence_targets_ignore_ignored_pixels():
    target = torch.tensor([[[0, 0], [2, IGN]], [[IGN, IGN], [IGN, IGN]]])
    assert Fn.presence_targets(target, 3, IGN).tolist() == [[1, 0, 1], [0, 0, 0]]


# -- SR and C2F: every term, ignore respected at every exit / level -----------------------------
def _sr_inputs(seed: int = 4, n_exits: int = 3):
    g = torch.Generator().manual_seed(seed)
    exits = [torch.randn(2, 4, 6, 6, generator=g) for _ in range(n_exits)]
    pres = [torch.randn(2, 4, generator=g) for _ in range(n_exits)]
    hidden = [torch.randn(2, 8, 6 // (i + 1), 6 // (i + 1), generator=g) for i in range(n_exits)]
    final, final_p = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, generator=g)
    target = torch.randint(0, 4, (2, 6, 6), generator=g)
    target[:, :2] = IGN
    return exits, pres, hidden, final, final_p, target


@pytest.mark.parametrize("variant", ["demo", "paper"])
def test_self_regulation_terms_present_and_ignore_respected(variant):
    exits, pres, hidden, final, final_p, target = _sr_inputs()
    d = Fn.self_regulation_losses(exits, pres, final, final_p, target, IGN, variant, 1.0, hidden)
    assert set(d) == {"cls", "seg", "sr_l", "sr_f"} and all(torch.isfinite(v) and v > 0 for v in d.values())
    # garbage at ignored pixels of every exit and of the final head changes nothing
    ign = (target == IGN).unsqueeze(1)
    noisy = [torch.where(ign, 100 * torch.randn_like(o), o) for o in exits]
    d2 = Fn.self_regulation_losses(noisy, pres, torch.where(ign, -50.0, final), final_p, target, IGN, variant, 1.0,
                                   hidden)
    for k in d:
        torch.testing.assert_close(d[k], d2[k])


def test_self_regulation_demo_hand_terms_and_warmup():
    exits, pres, _, final, final_p, target = _sr_inputs(n_exits=2)
    d = Fn.self_regulation_losses(exits, pres, final, final_p, target, IGN)
    c = Fn.presence_targets(target, 4, IGN)
    bce = F.binary_cross_entropy
    cls = sum(bce(torch.sigmoid(z), c) for z in [*pres, final_p])
    seg = sum(Fn.mean_ce(o, target) for o in exits)
    sr_l = sum(bce(torch.sigmoid(z), torch.sigmoid(final_p)) for z in pres)
    pseudo = torch.where(target == IGN, IGN, exits[0].argmax(1))
    sr_f = Fn.mean_ce(exits[1], pseudo) + Fn.mean_ce(final, pseudo)
    for k, v in {"cls": cls, "seg": seg, "sr_l": sr_l, "sr_f": sr_f}.items():
        torch.testing.assert_close(d[k], v, rtol=1e-5, atol=1e-6)
    w = Fn.self_regulation_losses(exits, pres, final, final_p, target, IGN, regulate=False)
    assert float(w["sr_l"]) == 0 and float(w["sr_f"]) == 0
    torch.testing.assert_close(w["cls"], d["cls"])


def test_coarse_to_fine_levels_and_ignore():
    g = torch.Generator().manual_seed(5)
    hierarchy = [(0, 0, 1, 1), (0, 1, 2, 2)]
    levels = [torch.randn(1, 2, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)]
    target = torch.randint(0, 4, (1, 4, 4), generator=g)
    target[0, 0] = IGN
    terms = Fn.coarse_to_fine_losses(levels, target, hierarchy, [1.0, 0.5], IGN)
    y0 = torch.tensor([0, 0, 1, 1])[target.clamp(max=3)]
    y1 = torch.tensor([0, 1, 2, 2])[target.clamp(max=3)]
    valid = target != IGN
    ref0 = -F.log_softmax(levels[0], 1).gather(1, y0.unsqueeze(1)).squeeze(1)[valid].mean()
    ref1 = -F.log_softmax(levels[1], 1).gather(1, y1.unsqueeze(1)).squeeze(1)[valid].mean()
    torch.testing.assert_close(terms[0], ref0)
    torch.testing.assert_close(terms[1], 0.5 * ref1)
    noisy = [torch.where((target == IGN).unsqueeze(1), 1e3, p) for p in levels]
    for a, b in zip(terms, Fn.coarse_to_fine_losses(noisy, target, hierarchy, [1.0, 0.5], IGN)):
        torch.testing.assert_close(a, b)
