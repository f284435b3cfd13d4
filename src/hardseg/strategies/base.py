"""The interface every hard-pixel strategy implements.

A strategy is one class in one module, registered with
``@register_strategy("name")``. It declares a pydantic ``Config`` with the
paper's defaults (so search spaces can reach every hyperparameter), may add
training-only modules to the model, and contributes named loss terms.

Three kinds (``Strategy.kind``), composed by :mod:`hardseg.strategies.objective`;
the kind decides which loss hooks the objective calls:

* ``baseline`` (``ce``): the main head's plain cross-entropy; no loss hook.
* ``weighting`` (``cb_ce``, ``focal``, ``ohem``, ``hl``): shape the main
  head's per-pixel loss through :meth:`Strategy.base_loss`,
  :meth:`Strategy.shape` and :meth:`Strategy.reduce`.
* ``structural`` (``self_regulation``, ``coarse_to_fine``): add modules
  (exits, stages) and loss terms through :meth:`Strategy.terms`.

Each strategy also declares its :class:`Phase`, the step of the composition it
acts in; the objective runs strategies in phase order (ties keep the order of
the run's list). :func:`contract_violation` is the contract in code: a kind
that the phase does not allow, or a loss hook the kind never calls, is
rejected at registration and again when an Objective is built
(docs/strategies.md, "Composition").

See ``docs/strategies.md`` for the equations each strategy implements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, auto
from typing import Any, ClassVar, Literal

import numpy as np
import torch.nn as nn
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from hardseg.models import SegModel, SegOutput


Kind = Literal["baseline", "weighting", "structural"]


class Phase(IntEnum):
    """Where a strategy acts in the composition, in the order the objective runs them.

    The steps are those of :mod:`hardseg.strategies.objective` (1, 2a–d, 4); step 3,
    the aux head's CE, belongs to no strategy. Modules run and hooks are called in
    phase order; every structural strategy's ``terms`` are added in step 4 (C2F's,
    in REPLACE_PREDICTION, before SR's).
    """

    REPLACE_PREDICTION = auto()  # step 1: replace the prediction, so every later step sees it (C2F's finest stage)
    BASE_LOSS = auto()  # step 2a: define the per-pixel loss ℓ (CE; focal replaces it)
    CLASS_WEIGHTS = auto()  # step 2b: scale ℓ per pixel by its ground-truth class's weight (cb_ce)
    SELECT_PIXELS = auto()  # step 2c: keep the hard pixels and zero the others (OHEM)
    WEIGHT_AND_REDUCE = auto()  # step 2d: weight the kept pixels and reduce them to named terms (HL)
    EXTRA_TERMS = auto()  # step 4: add loss terms on the strategy's own outputs (SR exits)


KIND_PHASES: dict[str, tuple[Phase, ...]] = {
    "baseline": (Phase.BASE_LOSS,),
    "weighting": (Phase.BASE_LOSS, Phase.CLASS_WEIGHTS, Phase.SELECT_PIXELS, Phase.WEIGHT_AND_REDUCE),
    "structural": (Phase.REPLACE_PREDICTION, Phase.EXTRA_TERMS),
}
"""The phases each kind may act in: weightings shape the main loss (step 2), structural
strategies replace the prediction before it (step 1) or add terms after it (step 4)."""

KIND_HOOKS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "weighting": ("base_loss", "shape", "reduce"),
    "structural": ("terms",),
}
"""The loss hooks the objective calls for each kind; the other hooks (modules, export,
visuals, normalisation, config_warning, lr_mult) are called for every kind."""


class StrategyConfig(BaseModel):
    """Base of every strategy's hyperparameters (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


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
        kind: ``"baseline"``, ``"weighting"`` or ``"structural"``: which loss
            hooks the objective calls (:data:`KIND_HOOKS`).
        phase: the :class:`Phase` it acts in, one its kind allows
            (:data:`KIND_PHASES`): C2F REPLACE_PREDICTION, ce and focal
            BASE_LOSS, cb_ce CLASS_WEIGHTS, OHEM SELECT_PIXELS, HL
            WEIGHT_AND_REDUCE, SR EXTRA_TERMS. Every strategy declares one.
        Config: the pydantic hyperparameter model.

    A subclass overrides only the hooks its kind's objective calls
    (:func:`contract_violation`).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind] = "baseline"
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

    # -- the main head's per-pixel loss (weighting strategies) ---------------
    def base_loss(self, logits: Tensor, target: Tensor) -> Tensor | None:
        """Replace the per-pixel CE ℓ by another per-pixel loss (N, H, W), or None.

        The first weighting strategy (in phase order) that returns one defines ℓ.
        """
        return None

    def shape(self, px: PixelLoss) -> None:
        """Modify ``px.loss`` / ``px.keep`` in place (class weights, OHEM selection)."""

    def reduce(self, px: PixelLoss, out: SegOutput, main_key: str) -> dict[str, Tensor] | None:
        """Reduce the per-pixel loss to named terms, or None for the default mean over valid pixels.

        ``main_key`` is the name the objective gives the main head's term. The last
        weighting strategy (in phase order) that returns terms wins.
        """
        return None

    # -- extra terms, images -------------------------------------------------
    def terms(self, out: SegOutput, target: Tensor, progress: float) -> dict[str, Tensor]:
        """Loss terms beyond the main head's (SR exits, C2F levels); ``progress`` ∈ [0, 1]."""
        return {}

    def visuals(self, out: SegOutput, images: Tensor, target: Tensor) -> dict[str, np.ndarray]:
        """Named uint8 RGB images (H, W, 3) to log; empty when the strategy has none."""
        return {}


def contract_violation(cls: type, name: str | None = None, label: str = "strategy") -> str | None:
    """Why ``cls`` breaks the composition contract (one line, naming what to fix), or None.

    Checked: ``cls`` is a :class:`Strategy`, its ``kind`` is known, its ``phase`` is a
    :class:`Phase` its kind allows (:data:`KIND_PHASES`), and it overrides no loss hook
    that its kind's objective never calls (:data:`KIND_HOOKS`): such a hook would be
    silently skipped. ``label`` starts the message (``strategy``, ``strategy plugin``).
    """
    who = f"{label} '{name or getattr(cls, 'name', '') or cls.__name__}' ({cls.__module__}.{cls.__qualname__})"
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        return f"{who} is not a hardseg Strategy subclass"
    kind = cls.kind
    if kind not in KIND_HOOKS:
        return f"{who} has kind {kind!r}; declare kind = 'baseline', 'weighting' or 'structural'"
    allowed = " or ".join(f"Phase.{p.name}" for p in KIND_PHASES[kind])
    if not isinstance(cls.phase, Phase):
        gone = " ('order' integers were replaced by phases)" if hasattr(cls, "order") else ""
        return f"{who} declares no phase{gone}; a {kind} strategy declares phase = {allowed}"
    if cls.phase not in KIND_PHASES[kind]:
        return (f"{who} has kind '{kind}' but phase {cls.phase.name}; a {kind} strategy declares "
                f"phase = {allowed}, or change its kind")
    for owner, hooks in KIND_HOOKS.items():
        for hook in hooks:
            if owner != kind and getattr(cls, hook) is not getattr(Strategy, hook):
                mine = "/".join(f"{h}()" for h in KIND_HOOKS[kind])
                move = f" or move it into {mine}" if mine else ""
                return (f"{who} overrides {hook}(), which the objective calls only for kind '{owner}', "
                        f"but its kind is '{kind}'; declare kind = '{owner}' (and a phase of that kind){move}")
    return None
