"""The interface every hard-pixel strategy implements.

A strategy is one class in one module, registered with
``@register_strategy("name")``. It declares a pydantic ``Config`` with the
paper's defaults (so search spaces can reach every hyperparameter), may add
training-only modules to the model, and contributes named loss terms.

Each strategy declares its :class:`Phase`, the step of the composition it acts
in (:mod:`hardseg.strategies.objective`); the phase alone decides which loss
hooks the objective calls (:attr:`Phase.hooks`):

* steps 2a–d (``BASE_LOSS`` … ``WEIGHT_AND_REDUCE``: ``ce``, ``focal``,
  ``cb_ce``, ``ohem``, ``hl``) shape the main head's per-pixel loss through
  :meth:`Strategy.base_loss`, :meth:`Strategy.shape` and :meth:`Strategy.reduce`
  (``ce`` overrides none of them: ℓ is the per-pixel CE);
* steps 1 and 4 (``REPLACE_PREDICTION``, ``EXTRA_TERMS``: ``coarse_to_fine``,
  ``self_regulation``) add modules and their own loss terms through
  :meth:`Strategy.terms`.

The objective runs strategies in phase order (ties keep the order of the run's
list). Registration refuses a class that declares no phase or overrides a loss
hook its phase never calls (``registry.contract_violation``; docs/strategies.md,
"Composition").

See ``docs/strategies.md`` for the equations each strategy implements.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, auto
from typing import ClassVar, Literal

import numpy as np
import torch.nn as nn
from torch import Tensor

from hardseg.models import SegModel, SegOutput
from hardseg.strict import Strict


class Phase(IntEnum):
    """Where a strategy acts in the composition, in the order the objective runs them.

    The steps are those of :mod:`hardseg.strategies.objective` (1, 2a–d, 4); step 3,
    the aux head's CE, belongs to no strategy. Modules run and hooks are called in
    phase order; the ``terms`` of phases 1 and 4 are all added in step 4 (C2F's,
    in REPLACE_PREDICTION, before SR's).
    """

    REPLACE_PREDICTION = auto()  # step 1: replace the prediction, so every later step sees it (C2F's finest stage)
    BASE_LOSS = auto()  # step 2a: define the per-pixel loss ℓ (CE; focal replaces it)
    CLASS_WEIGHTS = auto()  # step 2b: scale ℓ per pixel by its ground-truth class's weight (cb_ce)
    SELECT_PIXELS = auto()  # step 2c: keep the hard pixels and zero the others (OHEM)
    WEIGHT_AND_REDUCE = auto()  # step 2d: weight the kept pixels and reduce them to named terms (HL)
    EXTRA_TERMS = auto()  # step 4: add loss terms on the strategy's own outputs (SR exits)

    @property
    def hooks(self) -> tuple[str, ...]:
        """The loss hooks the objective calls for a strategy in this phase: the main head's per-pixel
        loss in steps 2a–d, the strategy's own terms in steps 1 and 4. The other hooks (modules, export,
        visuals, normalisation, config_warning, lr_mult) are called in every phase."""
        return MAIN_LOSS_HOOKS if self.on_main_loss else TERMS_HOOKS

    @property
    def on_main_loss(self) -> bool:
        """Steps 2a–d: the phase shapes the main head's per-pixel loss."""
        return Phase.BASE_LOSS <= self <= Phase.WEIGHT_AND_REDUCE


MAIN_LOSS_HOOKS = ("base_loss", "shape", "reduce")
TERMS_HOOKS = ("terms",)


class StrategyConfig(Strict):
    """Base of every strategy's hyperparameters (unknown keys are errors)."""


@dataclass(frozen=True)
class Setting:
    """What :meth:`Strategy.config_warning` may look at besides the strategy's own settings."""

    pixels_per_image: int | None  # label pixels of one training image; None: unknown before the data loads
    optimizer: str = "adamw"  # train.optimizer


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


@dataclass
class PixelLoss:
    """The main head's per-pixel loss on its way through steps 2a–d (phases BASE_LOSS … WEIGHT_AND_REDUCE).

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
        phase: the :class:`Phase` it acts in, which decides the loss hooks the
            objective calls (:attr:`Phase.hooks`): C2F REPLACE_PREDICTION, ce
            and focal BASE_LOSS, cb_ce CLASS_WEIGHTS, OHEM SELECT_PIXELS, HL
            WEIGHT_AND_REDUCE, SR EXTRA_TERMS. Every strategy declares one.
        Config: the pydantic hyperparameter model.

    A subclass overrides only the loss hooks its phase calls (checked at
    registration, ``registry.contract_violation``).
    """

    name: ClassVar[str] = ""
    phase: ClassVar[Phase | None] = None
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
    def config_warning(cls, cfg: StrategyConfig, setting: Setting) -> str | None:
        """A one-line warning for a setting that runs but cannot act, or defeats the strategy, under
        the rest of the run's config (OHEM: min_kept ≥ the pixels of an image; HL: λ set under AdamW),
        or None. ``cfg.model_fields_set`` tells what the user set explicitly."""
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

    # -- the main head's per-pixel loss (phases BASE_LOSS … WEIGHT_AND_REDUCE) --
    def base_loss(self, logits: Tensor, target: Tensor) -> Tensor | None:
        """Replace the per-pixel CE ℓ by another per-pixel loss (N, H, W), or None.

        The first strategy (in phase order) that returns one defines ℓ.
        """
        return None

    def shape(self, px: PixelLoss) -> None:
        """Modify ``px.loss`` / ``px.keep`` in place (class weights, OHEM selection)."""

    def reduce(self, px: PixelLoss, out: SegOutput, main_key: str) -> dict[str, Tensor] | None:
        """Reduce the per-pixel loss to named terms, or None for the default mean over valid pixels.

        ``main_key`` is the name the objective gives the main head's term. The last
        strategy (in phase order) that returns terms wins.
        """
        return None

    # -- extra terms (phases REPLACE_PREDICTION, EXTRA_TERMS), images ---------
    def terms(self, out: SegOutput, target: Tensor, progress: float) -> dict[str, Tensor]:
        """Loss terms beyond the main head's (SR exits, C2F levels); ``progress`` ∈ [0, 1]."""
        return {}

    def visuals(self, out: SegOutput, images: Tensor, target: Tensor) -> dict[str, np.ndarray]:
        """Named uint8 RGB images (H, W, 3) to log; empty when the strategy has none."""
        return {}

