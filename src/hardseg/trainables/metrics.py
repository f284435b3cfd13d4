"""Segmentation metrics from confusion matrices, including hard-pixel metrics.

As in torchvision's ``references/segmentation/utils.py``: predictions are
accumulated in a C×C confusion matrix (rows = ground truth, columns =
prediction) and every metric is read off it at the end. Hard-pixel metrics:

* **boundary-band IoU** — mean IoU over the pixels within ``band_radius`` px
  (Chebyshev distance) of a boundary between two *different large-area*
  classes. Restricting the boundaries to large-area classes keeps the band from
  merely re-counting thin and small objects, which lie entirely inside any
  band drawn around their own outline.
* **small-object IoU / recall** — mean IoU and mean pixel recall
  (TP / (TP + FN)) of the dataset's small-object classes.
* **thin-structure IoU** — mean IoU of the thin-structure classes.

Beside them, mmsegmentation's own metrics: ``miou``, ``pixel_acc`` (its aAcc),
``macc`` (mAcc: the mean over classes of TP / ground-truth pixels) and per class
``iou/<class>`` and ``acc/<class>``.

Classes that never occur (union 0) are left out of the means (NaN per class).

Everything is computed on the device of the predictions (CUDA or CPU) and
accumulated there: per batch, one ``bincount`` of 16-bit bins fills both
matrices and the band is made from bool maps (a lookup table of the large
classes, a separable max filter of shifts); the matrices are summed over DDP
ranks once and read on the host once, in :meth:`SegMetrics.compute`. The counts
are the same integers the earlier host implementation produced (tests/test_metrics.py
keeps it as the reference), so every metric is bitwise the same.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from hardseg import keys


def confusion_matrix(target: Tensor, pred: Tensor, num_classes: int, mask: Tensor | None = None,
                     ignore_index: int = 255) -> Tensor:
    """C×C int64 counts of (ground truth, prediction) over valid (and masked) pixels, on their device."""
    return _pair_counts(target, pred, num_classes, ignore_index, keep=mask)[0]


def _pair_counts(target: Tensor, pred: Tensor, num_classes: int, ignore_index: int, keep: Tensor | None = None,
                 band: Tensor | None = None) -> Tensor:
    """Confusion matrices of one batch in one ``bincount``: ``(1, C, C)``, or ``(2, C, C)`` = [all, band].

    Each valid pixel (not ``ignore_index``, inside ``keep`` if given) gets the bin ``t * C + p``, an
    invalid one the spare bin ``C²``; a pixel of ``band`` (which must exclude ignored pixels) is counted
    in a second block of ``C² + 1`` bins, so ``all = block 0 + block 1`` and ``band = block 1``. The bins
    are 16-bit integers while they fit (no int64 copy of the label map) and nothing is compacted.
    """
    c2 = num_classes * num_classes
    blocks = 1 if band is None else 2
    dtype = torch.int16 if blocks * (c2 + 1) <= torch.iinfo(torch.int16).max else torch.int32
    bins = target.to(dtype) * num_classes + pred.to(dtype)  # wraps for ignored pixels: overwritten next
    skip = target == ignore_index
    if keep is not None:
        skip |= ~keep
    bins.masked_fill_(skip, c2)
    if band is not None:
        bins.add_(band, alpha=c2 + 1)
    counts = torch.bincount(bins.reshape(-1), minlength=blocks * (c2 + 1)).view(blocks, c2 + 1)[:, :c2]
    counts = counts.reshape(blocks, num_classes, num_classes)
    if band is not None:
        counts = torch.stack([counts[0] + counts[1], counts[1]])
    return counts


def iou_per_class(mat: Tensor) -> Tensor:
    """IoU = TP / (TP + FP + FN) per class, NaN where the class never occurs."""
    mat = mat.double()
    tp = mat.diag()
    union = mat.sum(0) + mat.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def recall_per_class(mat: Tensor) -> Tensor:
    mat = mat.double()
    gt = mat.sum(1)
    return torch.where(gt > 0, mat.diag() / gt.clamp(min=1), torch.full_like(gt, float("nan")))


def _class_lookup(classes: Sequence[int], *values: int) -> Tensor:
    """Bool table ``lut[v]`` = v is one of ``classes``, long enough to index by any class id or ``values``."""
    lut = torch.zeros(max([*classes, *values, 0]) + 1, dtype=torch.bool)
    lut[list(classes)] = True
    return lut


def _dilate(x: Tensor, radius: int, dim: int) -> Tensor:
    """Bool max filter of width ``2 * radius + 1`` along ``dim`` (nothing beyond the edges)."""
    out = x.clone()
    n = x.shape[dim]
    for s in range(1, min(radius, n - 1) + 1):
        out.narrow(dim, s, n - s).logical_or_(x.narrow(dim, 0, n - s))
        out.narrow(dim, 0, n - s).logical_or_(x.narrow(dim, s, n - s))
    return out


def boundary_band(target: Tensor, large_classes: Sequence[int], radius: int = 3, ignore_index: int = 255,
                  lookup: Tensor | None = None) -> Tensor:
    """Bool (N, H, W): pixels within ``radius`` (Chebyshev) of a large-class boundary.

    A boundary pixel is a pixel of a large-area class whose 4-neighbour belongs
    to a different large-area class (both pixels of such a pair are boundary
    pixels). Ignored pixels are never in the band. Label values must be class
    ids or ``ignore_index`` (a negative ``ignore_index`` is never large).
    ``lookup``: :func:`_class_lookup` of ``large_classes`` on the target's device
    (built here when not given).

    Computed on bool maps on the target's device: a lookup table marks the large
    classes, the Chebyshev dilation is a separable max filter of bool shifts.
    """
    if lookup is None:
        lookup = _class_lookup(large_classes, ignore_index, int(target.max()) if target.numel() else 0)
        lookup = lookup.to(target.device)
    t = target
    if ignore_index >= 0:
        large = lookup[t.long()]
    else:  # a negative ignore value cannot index the table
        large = lookup[t.long().clamp(min=0)] & (t != ignore_index)
    edge = torch.zeros_like(large)
    h_pair = (t[:, :, 1:] != t[:, :, :-1]) & large[:, :, 1:] & large[:, :, :-1]
    v_pair = (t[:, 1:, :] != t[:, :-1, :]) & large[:, 1:, :] & large[:, :-1, :]
    edge[:, :, 1:] |= h_pair
    edge[:, :, :-1] |= h_pair
    edge[:, 1:, :] |= v_pair
    edge[:, :-1, :] |= v_pair
    band = _dilate(_dilate(edge, radius, 2), radius, 1)
    return band & (t != ignore_index)


def _nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


class SegMetrics:
    """Accumulates a full and a boundary-band confusion matrix over batches, on the predictions' device.

    The matrices stay on the device the model runs on (CUDA or CPU) for the
    whole evaluation: :meth:`update` moves the (small, integer) target there,
    :meth:`reduce_from_all_processes` sums them over ranks there, and
    :meth:`compute` reads them on the host once. Metrics derived from the
    confusion matrix belong in :meth:`compute` (it has the host copy, ``mat``).

    Args:
        num_classes: C.
        class_names: one name per class, for per-class keys.
        large_classes, small_classes, thin_classes: class ids of the groups
            the hard-pixel metrics are computed on (from ``DatasetInfo``).
        band_radius: the boundary band's half-width in pixels.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str], large_classes: Sequence[int] = (),
                 small_classes: Sequence[int] = (), thin_classes: Sequence[int] = (), band_radius: int = 3,
                 ignore_index: int = 255):
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.large = list(large_classes)
        self.small = list(small_classes)
        self.thin = list(thin_classes)
        self.band_radius = band_radius
        self.ignore_index = ignore_index
        # [full, band] C×C counts; moved to the device of the first batch
        self.counts = torch.zeros(2, num_classes, num_classes, dtype=torch.int64)
        self._lookup = _class_lookup(self.large, num_classes - 1, ignore_index)

    @property
    def mat(self) -> Tensor:
        """The full confusion matrix (rows = ground truth), on the accumulation device."""
        return self.counts[0]

    @property
    def band_mat(self) -> Tensor:
        """The boundary band's confusion matrix, on the accumulation device."""
        return self.counts[1]

    @torch.no_grad()
    def update(self, target: Tensor, pred: Tensor) -> None:
        """Add a batch: ``target`` (N, H, W) class ids (any device), ``pred`` (N, H, W) on the model's device."""
        device = pred.device
        if self.counts.device != device:
            self.counts = self.counts.to(device)
            self._lookup = self._lookup.to(device)
        target = target.to(device, non_blocking=True)
        if self.large:
            band = boundary_band(target, self.large, self.band_radius, self.ignore_index, self._lookup)
            self.counts += _pair_counts(target, pred, self.num_classes, self.ignore_index, band=band)
        else:
            self.counts[0] += _pair_counts(target, pred, self.num_classes, self.ignore_index)[0]

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices over DDP ranks, once, on the device (a no-op without a process group)."""
        if dist.is_available() and dist.is_initialized():
            both = self.counts
            if dist.get_backend() == "nccl" and both.device.type != "cuda":  # NCCL reduces device tensors only
                both = both.cuda()
            elif dist.get_backend() == "gloo" and both.device.type == "cuda":
                both = both.cpu()
            both = both.clone()
            dist.all_reduce(both)
            self.counts = both.to(self.counts.device)

    def compute(self) -> dict[str, float]:
        counts = self.counts.cpu()  # the one read on the host
        mat, band_mat = counts[0], counts[1]
        iou = iou_per_class(mat)
        recall = recall_per_class(mat)
        total = mat.sum()
        out = {
            keys.MIOU: _nanmean(iou),
            "pixel_acc": float(mat.diag().sum().double() / total.double()) if total > 0 else float("nan"),
        }
        if self.large:
            out[keys.BAND_IOU] = _nanmean(iou_per_class(band_mat))
        if self.small:
            out[keys.SMALL_IOU] = _nanmean(iou[self.small])
            out["small_recall"] = _nanmean(recall[self.small])
        if self.thin:
            out[keys.THIN_IOU] = _nanmean(iou[self.thin])
        for name, value in zip(self.class_names, iou.tolist()):
            out[f"{keys.IOU_PREFIX}{name}"] = value
        # mmseg's mAcc and per-class Acc: TP / ground-truth pixels (recall), NaN where a class never occurs
        out[keys.MACC] = _nanmean(recall)
        for name, value in zip(self.class_names, recall.tolist()):
            out[f"{keys.ACC_PREFIX}{name}"] = value
        return out
