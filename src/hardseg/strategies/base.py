"""The interface every hard-pixel strategy implements.

A strategy is one class in one module, registered with
``@register_strategy("name")``. It declares a pydantic ``Config`` with the
paper's defaults (so search spaces can reach every hyperparameter), may add
training-only modules to the model, and contributes named loss terms.

Three kinds (``Strategy.kind``), composed by :mod:`hardseg.strategies.objective`:

* ``baseline`` (``ce``): the main head's plain cross-entropy.
* ``weighting`` (``cb_ce``, ``focal``, ``ohem``, ``hl``): shape the main
  head's per-pixel loss through the hooks :meth:`Strategy.base_loss`,
  :meth:`Strategy.shape` and :meth:`Strategy.reduce`, in ``order``.
* ``structural`` (``self_regulation``, ``coarse_to_fine``): add modules
  (exits, stages) and loss terms through :meth:`Strategy.terms`.

See ``docs/strategies.md`` for the equations each strategy implements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch.nn as nn
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from hardseg.models import SegModel, SegOutput


class StrategyConfig(BaseModel):
    """Base of every strategy's hyperparameters (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StrategyContext:
    """What a strategy may know about the task (no Ray, no MLflow here).

    Attributes:
        num_classes: number of (fine) classes.
        ignore_index: label of ignored pixels.
        class_frequencies: train-split pixel counts per class (``cb_ce`` needs it).
        hierarchy: coarse levels, coarsest first; ``hierarchy[l][c]`` is the
            coarse id of fine class ``c`` (``coarse_to_fine`` uses it).
        aux_weight: weight of the auxiliary head's CE, the same for every
            strategy (docs/strategies.md §0: 0.4, as in mmsegmentation).
        palette: RGB colour per class for logged images (a default palette
            is generated when empty).
        average: ``loss.average``, how the main head's loss (CE, focal,
            cb_ce, OHEM unless it says otherwise) and the aux head's CE are
            averaged: over the ``valid`` (non-ignored) pixels or over ``all``
            pixels (mmsegmentation 0.22.1, the HL paper's code; with it HL
            with uniform weights equals CE). docs/strategies.md §0.
    """

    num_classes: int
    ignore_index: int = 255
    class_frequencies: np.ndarray | None = None
    hierarchy: tuple[tuple[int, ...], ...] = ()
    aux_weight: float = 0.4
    palette: tuple[tuple[int, int, int], ...] = ()
    average: Literal["valid", "all"] = "valid"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PixelLoss:
    """The main head's per-pixel loss on its way through the weighting strategies.

    Attributes:
        logits: main logits (N, C, H, W) at label size.
        target: labels (N, H, W); never modified in place.
        valid: non-ignored pixels (N, H, W).
        loss: per-pixel loss ℓ' (N, H, W), 0 at ignored pixels.
        keep: pixels that count (OHEM clears the unselected ones), ⊆ ``valid``.
    """

    logits: Tensor
    target: Tensor
    valid: Tensor
    loss: Tensor
    keep: Tensor


class Strategy:
    """One hard-pixel strategy.

    Class attributes:
        name: registry name (set by ``@register_strategy``).
        kind: ``"baseline"``, ``"weighting"`` or ``"structural"`` (module docstring).
        order: position in the composition (lower first): structural modules
            that replace the prediction run first (C2F 0), then focal (10)
            defines ℓ, cb_ce (20) multiplies it by class weights, OHEM (30)
            selects pixels, HL (40) weights and normalises, SR (50) adds exits.
        Config: the pydantic hyperparameter model.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Literal["baseline", "weighting", "structural"]] = "baseline"
    order: ClassVar[int] = 50
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(self, cfg: StrategyConfig, ctx: StrategyContext):
        self.cfg = cfg
        self.ctx = ctx

    @classmethod
    def normalisation(cls, cfg: StrategyConfig) -> str | None:
        """The normalisation this strategy imposes on the main loss, or None.

        Two strategies that both impose one cannot be combined
        (``objective.check_composition``).
        """
        return None

    @classmethod
    def config_warning(cls, cfg: StrategyConfig, pixels_per_image: int) -> str | None:
        """A one-line warning for a setting that runs but defeats the strategy on images of
        ``pixels_per_image`` label pixels (OHEM: min_kept ≥ pixels), or None."""
        return None

    @property
    def lr_mult(self) -> float:
        """Learning-rate multiplier of this strategy's modules (their own optimiser group)."""
        return 1.0

    # -- model hooks -------------------------------------------------------
    def build_modules(self, model: SegModel) -> dict[str, nn.Module]:
        """Training-only modules to add (HL branch, SR exits, C2F stages)."""
        return {}

    def run_modules(self, modules: nn.ModuleDict, out: SegOutput) -> None:
        """Run this strategy's modules on a forward pass, filling ``out.extras``."""

    def export(self, net: SegModel, modules: nn.ModuleDict) -> nn.Module | None:
        """The inference model if this strategy's modules are part of it, else None (stripped)."""
        return None

    # -- the main head's per-pixel loss (weighting strategies) ---------------
    def base_loss(self, logits: Tensor, target: Tensor) -> Tensor | None:
        """Replace the per-pixel CE ℓ by another per-pixel loss (N, H, W), or None."""
        return None

    def shape(self, px: PixelLoss) -> None:
        """Modify ``px.loss`` / ``px.keep`` in place (class weights, OHEM selection)."""

    def reduce(self, px: PixelLoss, out: SegOutput, main_key: str) -> dict[str, Tensor] | None:
        """Reduce the per-pixel loss to named terms, or None for the default mean over valid pixels.

        ``main_key`` is the name the objective gives the main head's term.
        """
        return None

    # -- extra terms, images -------------------------------------------------
    def terms(self, out: SegOutput, target: Tensor, progress: float) -> dict[str, Tensor]:
        """Loss terms beyond the main head's (SR exits, C2F levels); ``progress`` ∈ [0, 1]."""
        return {}

    def visuals(self, out: SegOutput, images: Tensor, target: Tensor) -> dict[str, np.ndarray]:
        """Named uint8 RGB images (H, W, 3) to log; empty when the strategy has none."""
        return {}
