"""The one structured output every hardseg model returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


def predict_classes(logits: Tensor) -> Tensor:
    """Predicted class per pixel, (N, H, W), from logits (N, C, H, W).

    ``logits.max(1).indices`` (first maximum on ties, like ``argmax``): on CPU
    ``argmax(1)`` reduces over a strided dimension and is ~10× slower here
    (15.8 vs 1.2 ms for 16×7×64×64 on 2 threads).
    """
    return logits.max(1).indices


@dataclass
class SegOutput:
    """What a segmentation network produced for a batch.

    Attributes:
        logits: main logits (N, C, H, W), upsampled to the input size.
        aux: auxiliary-head logits at the input size, or None.
        features: named intermediate features, ordered shallow → deep, so
            strategies can attach branches (HL head, Self-Regulation exits,
            coarse-to-fine stages) without forking model classes.
        head_input: exactly what the decode head consumed (a tensor or a
            dict of tensors); an HL branch is a fresh copy of the decode head
            applied to a detached copy of it.
        head_logits: the decode head's output at its own resolution, before
            upsampling (C2F feeds its coarsest level to the next stage).
        extras: outputs of strategy modules (HL logits, SR exits, C2F stages).
    """

    logits: Tensor
    aux: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    head_input: Any = None
    head_logits: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"logits": self.logits, "aux": self.aux, "features": self.features,
                "head_input": self.head_input, "head_logits": self.head_logits, "extras": self.extras}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegOutput":
        return cls(**d)
