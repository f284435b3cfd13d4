"""The self-describing inference model that runs are exported as (MLflow's pytorch format).

:class:`ExportedModel` wraps a run's inference model (the network, or C2F's
network + stages) so that ``forward(images) -> logits`` (N, C, H, W) is a
plain tensor (what MLflow's pyfunc ``predict`` and signature need), and carries
:attr:`ExportedModel.metadata`: architecture, encoder, strategies, class names
and palette, ignore index, the input normalisation and the run config. The
same dictionary is written into the MLflow model's ``MLmodel`` metadata
(:mod:`hardseg.platform.export`), so ``hardseg evaluate runs:/<id>/model``
rebuilds everything from the logged model alone (docs/models.md).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from hardseg.models.output import SegOutput
from hardseg.models.smp import default_encoder

FORMAT_VERSION = 1


class ExportedModel(nn.Module):
    """``images`` (N, 3, H, W), float32, RGB in [0, 1] normalised with ``metadata["normalisation"]``
    → ``logits`` (N, num_classes, H, W)."""

    def __init__(self, inference: nn.Module, metadata: dict[str, Any]):
        super().__init__()
        self.model = inference
        self.metadata = dict(metadata)

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(images)
        return out.logits if isinstance(out, SegOutput) else out


def export_metadata(cfg: Any, info: Any, mean: tuple[float, ...], std: tuple[float, ...],
                    best_epoch: int | None = None) -> dict[str, Any]:
    """JSON-ready description of a run's model (``cfg``: the HardsegConfig, ``info``: its DatasetInfo)."""
    name = cfg.model.name
    encoder = cfg.model.encoder or (default_encoder(name[4:]) if name.startswith("smp:") else None)
    return {
        "hardseg_format": FORMAT_VERSION,
        "architecture": name,
        "encoder": encoder,
        "pretrained": cfg.model.pretrained,
        "strategies": list(cfg.strategies),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "palette": [list(c) for c in info.colors()],
        "ignore_index": info.ignore_index,
        "normalisation": {"mean": list(mean), "std": list(std), "input": "RGB in [0, 1], (x - mean) / std"},
        "best_epoch": best_epoch,
        "config": cfg.model_dump(mode="json"),
    }
