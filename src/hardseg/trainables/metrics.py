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
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from hardseg import keys


def confusion_matrix(target: Tensor, pred: Tensor, num_classes: int, mask: Tensor | None = None,
                     ignore_index: int = 255) -> Tensor:
    """C×C int64 counts of (ground truth, prediction) over valid (and masked) pixels."""
    valid = target != ignore_index
    if mask is not None:
        valid &= mask
    t = target[valid].long()
    p = pred[valid].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


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


def boundary_band(target: Tensor, large_classes: Sequence[int], radius: int = 3, ignore_index: int = 255) -> Tensor:
    """Bool (N, H, W): pixels within ``radius`` (Chebyshev) of a large-class boundary.

    A boundary pixel is a pixel of a large-area class whose 4-neighbour belongs
    to a different large-area class (both pixels of such a pair are boundary
    pixels). Ignored pixels are never in the band.
    """
    t = target.long()
    large = torch.zeros_like(t, dtype=torch.bool)
    for c in large_classes:
        large |= t == c
    edge = torch.zeros_like(large)
    h_pair = (t[:, :, 1:] != t[:, :, :-1]) & large[:, :, 1:] & large[:, :, :-1]
    v_pair = (t[:, 1:, :] != t[:, :-1, :]) & large[:, 1:, :] & large[:, :-1, :]
    edge[:, :, 1:] |= h_pair
    edge[:, :, :-1] |= h_pair
    edge[:, 1:, :] |= v_pair
    edge[:, :-1, :] |= v_pair
    band = F.max_pool2d(edge[:, None].float(), kernel_size=2 * radius + 1, stride=1, padding=radius)[:, 0] > 0
    return band & (t != ignore_index)


def _nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


class SegMetrics:
    """Accumulates a full and a boundary-band confusion matrix over batches.

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
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.band_mat = torch.zeros_like(self.mat)

    @torch.no_grad()
    def update(self, target: Tensor, pred: Tensor) -> None:
        target, pred = target.cpu(), pred.cpu()
        self.mat += confusion_matrix(target, pred, self.num_classes, ignore_index=self.ignore_index)
        if self.large:
            band = boundary_band(target, self.large, self.band_radius, self.ignore_index)
            self.band_mat += confusion_matrix(target, pred, self.num_classes, band, self.ignore_index)

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices over DDP ranks (a no-op without a process group)."""
        if dist.is_available() and dist.is_initialized():
            both = torch.stack([self.mat, self.band_mat])
            if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
                both = both.cuda()
            dist.all_reduce(both)
            both = both.cpu()
            self.mat, self.band_mat = both[0].clone(), both[1].clone()

    def compute(self) -> dict[str, float]:
        iou = iou_per_class(self.mat)
        recall = recall_per_class(self.mat)
        total = self.mat.sum()
        out = {
            "miou": _nanmean(iou),
            "pixel_acc": float(self.mat.diag().sum().double() / total.double()) if total > 0 else float("nan"),
        }
        if self.large:
            out["band_iou"] = _nanmean(iou_per_class(self.band_mat))
        if self.small:
            out["small_iou"] = _nanmean(iou[self.small])
            out["small_recall"] = _nanmean(recall[self.small])
        if self.thin:
            out["thin_iou"] = _nanmean(iou[self.thin])
        for name, value in zip(self.class_names, iou.tolist()):
            out[f"{keys.IOU_PREFIX}{name}"] = value
        # mmseg's mAcc and per-class Acc: TP / ground-truth pixels (recall), NaN where a class never occurs
        out[keys.MACC] = _nanmean(recall)
        for name, value in zip(self.class_names, recall.tolist()):
            out[f"{keys.ACC_PREFIX}{name}"] = value
        return out
