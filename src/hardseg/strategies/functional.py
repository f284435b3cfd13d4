"""The strategies' math as pure functions: the one place each formula lives.

Each function cites its section of ``docs/strategies.md``. Notation:
N batch, C classes, H×W label size, ``sg(x) = x.detach()``, ℓ the per-pixel
cross-entropy (0 at the ignore label). Labels are never modified in place.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardseg.models.output import predict_classes
from hardseg.models.resize import resize_bilinear


# -- §0 cross-entropy ----------------------------------------------------------
def pixel_ce(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Per-pixel cross-entropy ℓ (N, H, W), 0 at ignored pixels (docs/strategies.md notation)."""
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")


def valid_mean(pixel_loss: Tensor, mask: Tensor) -> Tensor:
    """Σ ℓ / |mask| (ℓ already 0 outside ``mask``); 0 when the mask is empty."""
    return pixel_loss.sum() / mask.sum().clamp(min=1)


Average = Literal["valid", "all"]


def average_pixels(pixel_loss: Tensor, valid: Tensor, average: Average = "valid") -> Tensor:
    """The main loss's reduction, ``loss.average`` (docs/strategies.md §0).

    * ``valid``: Σ ℓ / (number of non-ignored pixels) (PyTorch's
      ``ignore_index`` mean, mmsegmentation ≥ 0.23 with ``avg_non_ignore``);
    * ``all``: Σ ℓ / (N·H·W), ignored pixels counted in the denominator
      (mmsegmentation 0.22.1, the HL paper's code; HL's own normalisation).

    ℓ must already be 0 at ignored pixels.
    """
    if average == "valid":
        return valid_mean(pixel_loss, valid)
    if average == "all":
        return pixel_loss.sum() / max(1, pixel_loss.numel())
    raise ValueError(f"unknown loss average {average!r}")


def mean_ce(logits: Tensor, target: Tensor, ignore_index: int = 255, average: Average = "valid") -> Tensor:
    """Mean of ℓ (docs/strategies.md §0) over non-ignored pixels, or over all with ``average='all'``;
    0 when every pixel is ignored."""
    return average_pixels(pixel_ce(logits, target, ignore_index), target != ignore_index, average)


def mean_nll(log_probs: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """:func:`mean_ce` from ``log_softmax(logits, 1)``: one log-softmax serves several targets."""
    return valid_mean(F.nll_loss(log_probs, target, ignore_index=ignore_index, reduction="none"),
                      target != ignore_index)


# -- class-balanced CE ----------------------------------------------------------
def class_balance_weights(frequencies: np.ndarray | Sequence[float], mode: Literal["inverse", "median"] = "median",
                          max_weight: float | None = None) -> Tensor:
    """Per-class weights from training-set pixel counts n_c (class-balanced CE).

    With f_c = n_c / Σ_k n_k over the K classes with n_c > 0:

    * ``inverse``: w_c = 1 / (K · f_c), so the pixel-weighted mean weight
      Σ_c f_c w_c is 1 and the loss keeps CE's scale;
    * ``median`` (median-frequency balancing, Eigen & Fergus, ICCV 2015):
      w_c = median_k(f_k) / f_c. **(choice)** f_c is the class's share of all
      training pixels (the original divides by the pixels of the images that
      contain c, which pixel counts alone cannot give).

    A class with no training pixel gets the largest weight of the others.
    ``max_weight`` clips the weights from above.
    """
    n = torch.as_tensor(np.asarray(frequencies, dtype=np.float64))
    present = n > 0
    if not bool(present.any()):
        raise ValueError("class frequencies are all zero")
    f = n / n[present].sum()
    w = torch.zeros_like(f)
    if mode == "inverse":
        w[present] = 1.0 / (int(present.sum()) * f[present])
    elif mode == "median":
        w[present] = torch.quantile(f[present], 0.5) / f[present]  # the mean of the two middles if K is even
    else:
        raise ValueError(f"unknown class-balance mode {mode!r}")
    w[~present] = w[present].max()
    if max_weight is not None:
        w = w.clamp(max=max_weight)
    return w.float()


def class_weighted_pixel_loss(pixel_loss: Tensor, target: Tensor, class_weights: Tensor,
                              ignore_index: int = 255) -> Tensor:
    """ℓ'_p = w_{y_p} · ℓ_p (0 at ignored pixels); reduce with :func:`average_pixels`.

    **(choice)** normalised by a pixel count (``loss.average``: valid pixels,
    or all pixels as mmsegmentation 0.22.1's ``class_weight`` does), not by
    Σ w_{y_p} as PyTorch's ``weight=`` does (docs/strategies.md §6).
    """
    valid = target != ignore_index
    w = class_weights.to(pixel_loss)[torch.where(valid, target, 0)]
    return pixel_loss * w * valid


# -- §3 focal loss ------------------------------------------------------------
def focal_pixel_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 1.0,
                     ignore_index: int = 255, mode: Literal["softmax", "sigmoid"] = "softmax") -> Tensor:
    """Per-pixel focal loss (N, H, W), 0 at ignored pixels (docs/strategies.md §3; Lin et al. 1708.02002).

    * ``softmax``: α · (1 − p_y)^γ · ℓ with p_y = softmax(logits)_y; γ = 0,
      α = 1 gives ℓ exactly. The modulating factor is not detached (as in Lin et al.).
    * ``sigmoid`` (mmsegmentation's ``FocalLoss``): one-vs-all over the C
      channels with t_c = [y = c], b_c = BCE(σ(z_c), t_c), p_t = exp(−b_c):
      Σ_c (α t_c + (1 − α)(1 − t_c)) · (1 − p_t)^γ · b_c / C. mmseg averages
      that term over all N·H·W·C elements, ignored pixels zeroed but counted,
      so :func:`focal_loss` with ``average='all'`` equals mmseg's value
      exactly; with ``average='valid'`` it is mmseg's ÷ the valid fraction.

    The modulating factor is never detached (a detached factor changes the
    gradient, not the value; ``tests/test_strategies_functional.py`` checks it).
    """
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    if mode == "softmax":
        logp = F.log_softmax(logits.float(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -logp
        if gamma != 0:
            loss = (1 - logp.exp()).clamp(min=0).pow(gamma) * loss
        loss = alpha * loss
    elif mode == "sigmoid":
        z = logits.float()
        t = F.one_hot(safe, z.shape[1]).permute(0, 3, 1, 2).to(z)
        bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
        mod = (1 - torch.exp(-bce)).pow(gamma) if gamma != 0 else torch.ones_like(bce)
        loss = ((alpha * t + (1 - alpha) * (1 - t)) * mod * bce).mean(dim=1)
    else:
        raise ValueError(f"unknown focal mode {mode!r}")
    return loss * valid


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 1.0, ignore_index: int = 255,
               mode: Literal["softmax", "sigmoid"] = "softmax", average: Average = "valid") -> Tensor:
    """Focal loss reduced by :func:`average_pixels` (docs/strategies.md §3); γ = 0, α = 1 (softmax) is CE."""
    return average_pixels(focal_pixel_loss(logits, target, gamma, alpha, ignore_index, mode),
                          target != ignore_index, average)


# -- §2 OHEM -------------------------------------------------------------------
@torch.no_grad()
def ohem_keep_mask(logits: Tensor, target: Tensor, thresh: float | None = 0.7, min_kept: int = 100000,
                   ignore_index: int = 255, pixel_loss: Tensor | None = None, align_corners: bool = False) -> Tensor:
    """Pixels OHEM keeps, bool (N, H, W), with mmsegmentation's ``OHEMPixelSampler`` semantics (§2).

    Runs under ``no_grad`` on logits resized to label size. ``min_kept`` is
    **per image** (pitfall 4): ``batch_kept = min_kept · N``.

    * ``thresh`` set: p = softmax(logits)_y over the n_valid valid pixels,
      sorted ascending; threshold = max(p_sorted[min(batch_kept, n_valid − 1)],
      thresh); keep the valid pixels with p < threshold (strictly: pixels tied
      at the threshold are dropped, and with batch_kept ≥ n_valid the most
      confident pixel is dropped unless its p < thresh — both as in mmseg).
    * ``thresh=None``: keep the ``batch_kept`` valid pixels with the largest
      loss (``pixel_loss`` if given, else ℓ); ties go to the earlier pixel in
      (n, i, j) order (stable sort).
    """
    logits = resize_bilinear(logits, target.shape[-2:], align_corners)
    valid = target != ignore_index
    keep = torch.zeros_like(valid)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return keep
    batch_kept = int(min_kept) * target.shape[0]
    if thresh is not None:
        prob = F.softmax(logits.float(), dim=1).gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
        p = prob[valid]
        k = min(batch_kept, n_valid - 1)
        min_threshold = float(torch.kthvalue(p, k + 1).values)  # = p_sorted[k]
        keep[valid] = p < max(min_threshold, thresh)
    else:
        loss = pixel_ce(logits, target, ignore_index) if pixel_loss is None else pixel_loss
        order = torch.sort(loss[valid].float(), descending=True, stable=True).indices[:batch_kept]
        sel = torch.zeros(n_valid, dtype=torch.bool, device=target.device)
        sel[order] = True
        keep[valid] = sel
    return keep


# -- §1 learned Hardness Level ---------------------------------------------------
def hl_weights(hl_logits: Tensor, size: Sequence[int], offset: float = 0.1, align_corners: bool = False) -> Tensor:
    """w = σ(resize(s)) + offset (N, H, W), in [offset, 1 + offset] (§1; pitfall 3: resize, then sigmoid)."""
    s = resize_bilinear(hl_logits.float(), size, align_corners)
    return torch.sigmoid(s[:, 0]) + offset


def hl_losses(pixel_loss: Tensor, hl_logits: Tensor, lam: float = 0.01, offset: float = 0.1,
              align_corners: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """L_seg, L_HL and the weights of the learned Hardness Level map (docs/strategies.md §1).

    s = HL logits (N, 1, h, w), resized to the label size of ``pixel_loss``
    (N, H, W) when they differ; w = σ(s) + offset; w̃ = w / Σ_{n,i,j} w over
    **all** pixels of the batch, ignored ones included (pitfall 1);

    * L_seg = Σ sg(w̃) ⊙ ℓ (uniform w̃ gives the mean of ℓ over all pixels);
    * L_HL = −λ · Σ w̃ ⊙ sg(ℓ).

    The third detach (the branch's input features) is the caller's (pitfall 2).

    Returns:
        (L_seg, L_HL, w) with w (N, H, W) detached, before normalisation.
    """
    w = hl_weights(hl_logits, pixel_loss.shape[-2:], offset, align_corners)
    w_norm = w / w.sum()
    l_seg = (w_norm.detach() * pixel_loss).sum()
    l_hl = -lam * (w_norm * pixel_loss.detach()).sum()
    return l_seg, l_hl, w.detach()


# -- §4 Self-Regulation ----------------------------------------------------------
def presence_targets(target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Multi-hot c (N, C): 1 where class k occurs in image n; ignored pixels count for nothing (§4)."""
    n = target.shape[0]
    valid = target != ignore_index
    idx = (torch.arange(n, device=target.device).view(n, *([1] * (target.dim() - 1))) * num_classes + target)[valid]
    counts = torch.bincount(idx, minlength=n * num_classes)
    return (counts.view(n, num_classes) > 0).float()


def self_regulation_losses(exit_logits: Sequence[Tensor], exit_presence: Sequence[Tensor], final_logits: Tensor,
                           final_presence: Tensor, target: Tensor, ignore_index: int = 255,
                           variant: Literal["demo", "paper"] = "demo", tau: float = 1.0,
                           exit_features: Sequence[Tensor] | None = None, regulate: bool = True) -> dict[str, Tensor]:
    """Self-Regulation's four losses, unweighted (docs/strategies.md §4; SR-SS ``trainval.py``).

    Args:
        exit_logits: o_i of the exits, shallow → deep, at label size.
        exit_presence: presence logits (pre-σ) of FC(GAP(o_i)), (N, C) each.
        final_logits, final_presence: the same for the final head.
        exit_features: the exits' hidden features (``paper`` variant only).
        regulate: False during the warm-up: SR-L and SR-F are 0 (not computed).

    With c = :func:`presence_targets`, p_i = σ(presence logits), exits
    i = 1..E (shallow → deep), the final head F:

    * cls = Σ_{i ∈ exits ∪ F} BCE(p_i, c);
    * seg = Σ_{i ∈ exits} CE(o_i, y) **(choice)**: the final head's CE is the
      run's main loss (objective.py), so it is not counted twice;
    * ``demo``: SR-L = Σ_{i ∈ exits} BCE(p_i, sg(p_F)) (deep teaches shallow);
      SR-F = Σ_{i ∈ exits[1:] ∪ F} CE(o_i, argmax sg(o_1)) (shallow teaches
      deep) **(choice)**: the pseudo-labels are ignored where y is (pitfall 5);
    * ``paper`` **(choice)**: SR-L = Σ_{i ∈ exits} τ² · KL(softmax(sg(o_F)/τ) ‖
      softmax(o_i/τ)) averaged over valid pixels; SR-F = Σ_{i ∈ exits[1:]}
      mean ‖n(h_i) − sg(n(pool(h_1)))‖² with h the exits' hidden features
      (same width), n the channel-wise L2 normalisation and pool an adaptive
      average pool to h_i's size.

    BCE is computed from logits (``binary_cross_entropy_with_logits``: the
    same value, stable, autocast-safe).
    """
    c = presence_targets(target, final_logits.shape[1], ignore_index)
    valid = target != ignore_index
    bce = F.binary_cross_entropy_with_logits
    cls = sum(bce(z.float(), c) for z in [*exit_presence, final_presence])
    # Each exit's log-softmax serves CE(o_i, y) and, in the demo variant, CE(o_i, pseudo-labels).
    log_probs = [F.log_softmax(o.float(), dim=1) for o in exit_logits]
    seg = sum(mean_nll(lp, target, ignore_index) for lp in log_probs)
    if not regulate:
        sr_l = sr_f = 0
    elif variant == "demo":
        p_final = torch.sigmoid(final_presence.float()).detach()
        sr_l = sum(bce(z.float(), p_final) for z in exit_presence)
        pseudo = torch.where(valid, predict_classes(exit_logits[0].detach()), ignore_index)
        sr_f = (sum(mean_nll(lp, pseudo, ignore_index) for lp in log_probs[1:])
                + mean_ce(final_logits, pseudo, ignore_index))
    elif variant == "paper":
        if exit_features is None:
            raise ValueError("variant 'paper' needs the exits' hidden features")
        teacher = F.softmax(final_logits.detach().float() / tau, dim=1)
        sr_l = sum(tau ** 2 * valid_mean(
            F.kl_div(F.log_softmax(o.float() / tau, dim=1), teacher, reduction="none").sum(1) * valid, valid)
            for o in exit_logits)
        h1 = exit_features[0].detach()
        sr_f = sum(F.mse_loss(F.normalize(h.float(), dim=1),
                              F.normalize(F.adaptive_avg_pool2d(h1, h.shape[-2:]).float(), dim=1))
                   for h in exit_features[1:])
    else:
        raise ValueError(f"unknown self-regulation variant {variant!r}")
    zero = final_logits.new_zeros(())
    return {"cls": cls, "seg": seg + zero, "sr_l": sr_l + zero, "sr_f": sr_f + zero}


# -- §5 coarse-to-fine -------------------------------------------------------------
def coarsen_labels(target: Tensor, fine_to_coarse: Sequence[int] | Tensor, ignore_index: int = 255) -> Tensor:
    """y_l = map(y), a new tensor; ignore stays ignore (docs/strategies.md §5, pitfall 5)."""
    m = torch.as_tensor(fine_to_coarse, dtype=torch.long, device=target.device)
    lut = torch.full((max(len(m), ignore_index + 1),), ignore_index, dtype=torch.long, device=target.device)
    lut[: len(m)] = m
    lut[ignore_index] = ignore_index
    return lut[target.long()]


def coarse_to_fine_losses(level_logits: Sequence[Tensor], target: Tensor, hierarchy: Sequence[Sequence[int]],
                          weights: Sequence[float], ignore_index: int = 255) -> list[Tensor]:
    """w_l · CE(p_l, y_l) for the coarse levels l (docs/strategies.md §5), coarsest first.

    ``level_logits[l]`` predicts level l of ``hierarchy`` at label size; the
    finest level is the main loss (objective.py), so it is not included here.
    """
    return [w * mean_ce(p, coarsen_labels(target, m, ignore_index), ignore_index)
            for p, m, w in zip(level_logits, hierarchy, weights)]
