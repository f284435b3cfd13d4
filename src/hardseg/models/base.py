"""Base class of hardseg networks: encode → decode, with hooks for strategies."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from hardseg.models.output import SegOutput
from hardseg.models.resize import resize_bilinear


class SegModel(nn.Module):
    """A segmentation network split into the parts strategies attach to.

    Subclasses implement :meth:`encode`, :meth:`head_input`, :meth:`decode`
    and :meth:`new_head` (and :meth:`encoder_module` for pretrained weights);
    :meth:`forward` puts them together (docs/models.md has the contract). ``decode_head``
    must be the module that maps ``head_input(features)`` to logits, so that
    ``new_head(k)`` can build a fresh copy of its architecture with ``k``
    output channels.
    """

    num_classes: int
    feature_channels: dict[str, int]  # name → channels, shallow → deep
    feature_strides: dict[str, int]  # name → output stride (input side / feature side)
    align_corners: bool = False

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def head_input(self, features: dict[str, Tensor]) -> Any:
        raise NotImplementedError

    def decode(self, head_input: Any) -> Tensor:
        return self.decode_head(head_input)

    def decode_aux(self, features: dict[str, Tensor]) -> Tensor | None:
        return None

    def new_head(self, out_channels: int) -> nn.Module:
        """A freshly initialised module with the decode head's architecture."""
        raise NotImplementedError

    def encoder_module(self) -> nn.Module:
        """The backbone/encoder that ``model.pretrained`` weights load into (``self.backbone`` by default)."""
        backbone = getattr(self, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise NotImplementedError(f"{type(self).__name__} does not say which module is its encoder "
                                      "(define encoder_module())")
        return backbone

    def upsample(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        return resize_bilinear(logits, size, self.align_corners)

    def forward(self, x: Tensor) -> SegOutput:
        size = x.shape[-2:]
        feats = self.encode(x)
        hin = self.head_input(feats)
        head_logits = self.decode(hin)
        aux = self.decode_aux(feats)
        if aux is not None:
            aux = self.upsample(aux, size)
        return SegOutput(logits=self.upsample(head_logits, size), aux=aux, features=feats, head_input=hin,
                         head_logits=head_logits)
