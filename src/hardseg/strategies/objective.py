"""Composition of strategies into one training objective (docs/strategies.md, "Composition").

A run names one or more strategies (``strategies: [hl, coarse_to_fine]``).
Each strategy declares the :class:`~hardseg.strategies.base.Phase` it acts in;
the :class:`Objective` sorts them by phase (ties keep the list's order), runs
every strategy's modules on the forward pass in that order, then builds the
loss in these steps, whatever the order of the list:

1. **Structural modules that replace the prediction run first**
   (``Phase.REPLACE_PREDICTION``). C2F puts its finest stage in ``out.logits``
   (the network's head predicts its coarsest level); every later step sees
   the final prediction.
2. **The main head's per-pixel loss** goes through the strategies of these
   phases (the weighting strategies: hooks ``base_loss``, ``shape``, ``reduce``):

   a. ``Phase.BASE_LOSS``: ℓ = per-pixel CE (``ce`` alone), or the focal loss if
      ``focal`` is on (it *replaces* ℓ, so "focal modulates ℓ before anything else");
   b. ``Phase.CLASS_WEIGHTS``: ``cb_ce`` multiplies ℓ by the ground-truth
      class's weight;
   c. ``Phase.SELECT_PIXELS``: ``ohem`` selects pixels (under no_grad; in loss
      mode it ranks the ℓ of a–b) and zeroes the others;
   d. ``Phase.WEIGHT_AND_REDUCE``, the reduction: ``hl`` weights the remaining
      per-pixel loss with its learned map and normalises over *all* pixels
      (``hl/seg`` + ``hl/hl``), i.e. OHEM selects and HL weights the selected
      pixels (the last ``reduce`` that returns terms wins); else ``ohem``
      with an explicit ``normalize`` (``valid``, ``all`` or ``kept``) divides
      by that count; else the mean set by ``loss.average``
      (``StrategyContext.average``): over the non-ignored pixels (``valid``)
      or over all pixels (``all``, the HL paper's mmsegmentation 0.22.1).

   The term is named ``ce`` (no weighting strategy), the strategy's name (one
   weighting strategy: ``ce``, ``cb_ce``, ``focal``, ``ohem``), ``hl/seg``/``hl/hl``
   (HL on), or ``seg`` (several weightings without HL).
3. **The auxiliary head** (if the model has one) adds
   ``StrategyContext.aux_weight`` · CE as ``aux_ce``, averaged as
   ``loss.average`` says: weightings never touch it.
4. **Structural terms** (phases ``REPLACE_PREDICTION`` and ``EXTRA_TERMS``: hook
   ``terms``; C2F's, then SR's): SR exits (``sr/*``) and C2F levels (``c2f/*``) use
   plain CE on their own logit maps; the weighting applies to the final
   prediction only (the network's head, or C2F's finest stage).

``loss`` is the sum of all terms. Rejected, with one line naming what to fix
(a class that declares no phase, or a loss hook its phase never calls, is
refused when it registers: ``registry.contract_violation``): an empty list or a
repeated name; ``ce`` with anything (it *is* the main loss
of every run without a weighting strategy: ``[self_regulation]`` means CE +
SR); two strategies that each impose the main loss's normalisation (``hl``
with any explicit ``ohem.normalize``: HL's Σ w̃ over all pixels would
silently override it). Errors that need the task or the model
(``cb_ce`` without class frequencies, ``coarse_to_fine`` without a hierarchy,
unknown feature names) are raised when the Objective / TrainingModel is built.

The exported inference model is the network alone, unless a strategy's
modules are part of the prediction (C2F: network + stages).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from hardseg.errors import ConfigError
from hardseg.models import SegModel, SegOutput
from hardseg.strategies.base import PixelLoss, Setting, Strategy, StrategyConfig, StrategyContext
from hardseg.strategies.functional import average_pixels, mean_ce, pixel_ce
from hardseg.strategies.ce import BASELINE
from hardseg.strategies.registry import get_strategy


def parse_strategy_params(names: list[str], params: dict[str, Any],
                          source: str = "config") -> dict[str, StrategyConfig]:
    """Validate ``strategy_params`` against each strategy's Config: the typed settings of the strategies that
    ``params`` names, in the order of ``names``. An entry that is its strategy's Config already is taken as it
    is: a validated HardsegConfig holds them so (``HardsegConfig._typed_strategy_params``), and nothing validates them
    again."""
    if not names:
        raise ConfigError(f"{source}: 'strategies' is empty; name at least one, e.g. [ce]")
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: 'strategies' lists a strategy twice: {names}")
    for key in params:
        if key not in names:
            raise ConfigError(f"{source}: 'strategy_params.{key}' is set but '{key}' is not in 'strategies' {names}")
    configs = {}
    for name in names:
        try:
            cls = get_strategy(name)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err} (in 'strategies')") from None
        if name not in params:
            continue
        raw = params[name]
        if isinstance(raw, cls.Config):
            configs[name] = raw
            continue
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: 'strategy_params.{name}' must be a mapping of hyperparameters")
        try:
            configs[name] = cls.Config.model_validate(raw)
        except Exception as err:  # pydantic ValidationError
            first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
            key = ".".join(str(p) for p in (name, *first["loc"]))
            msg = str(first["msg"]).splitlines()[0]
            if first.get("type") == "extra_forbidden":
                fields = ", ".join(cls.Config.model_fields)
                hint = f"allowed: {fields}" if fields else f"'{name}' has no hyperparameters"
                raise ConfigError(f"{source}: unknown key 'strategy_params.{key}'; {hint}") from None
            raise ConfigError(f"{source}: invalid 'strategy_params.{key}': {msg}") from None
    return configs


def strategy_settings(names: list[str], params: dict[str, Any], source: str = "config") -> dict[str, StrategyConfig]:
    """Every strategy's typed settings, in the order of ``names``: ``params[name]`` (a HardsegConfig's, typed already,
    as it is; a raw mapping validated, :func:`parse_strategy_params`), else the strategy's defaults."""
    given = parse_strategy_params(names, params, source)
    return {n: given[n] if n in given else get_strategy(n).Config() for n in names}


def check_composition(pairs: list[tuple[type[Strategy], StrategyConfig]], source: str = "config") -> None:
    """Reject combinations that make no sense (module docstring), with one line."""
    names = [cls.name for cls, _ in pairs]
    if BASELINE in names and len(names) > 1:
        raise ConfigError(f"{source}: '{BASELINE}' in 'strategies' is the baseline and cannot be combined; drop it from "
                          f"{names} (runs without a weighting strategy use CE as the main loss)")
    norms = [(cls.name, cls.normalisation(cfg)) for cls, cfg in pairs if cls.normalisation(cfg)]
    if len(norms) > 1:
        (a, da), (b, db) = norms[:2]
        raise ConfigError(f"{source}: 'strategies' {names}: '{a}' and '{b}' both set the main loss's normalisation "
                          f"({da}; {db}); change one or drop one")


def strategy_warnings(names: list[str], params: dict[str, Any], pixels_per_image: int | None,
                      optimizer: str = "adamw") -> dict[str, str]:
    """Strategy name → one-line warning for valid settings that cannot act or defeat the strategy
    under the rest of the config: images of ``pixels_per_image`` label pixels (None: unknown),
    ``train.optimizer`` ``optimizer`` (``Strategy.config_warning``); empty when there is none."""
    configs = strategy_settings(names, params)
    setting = Setting(pixels_per_image, optimizer)
    return {n: msg for n in names if (msg := get_strategy(n).config_warning(configs[n], setting))}


def validate_strategies(names: list[str], params: dict[str, Any], source: str = "config") -> None:
    """Names, hyperparameters (raw ones; typed ones are taken as they are) and composition; raises
    ConfigError (one line naming the key)."""
    configs = strategy_settings(names, params, source)
    check_composition([(get_strategy(n), configs[n]) for n in names], source)


class Objective:
    """The strategies of one run, composed (module docstring)."""

    def __init__(self, names: list[str], params: dict[str, Any], ctx: StrategyContext, source: str = "config"):
        """``params``: a HardsegConfig's ``strategy_params`` (typed settings, taken as they are) or raw mappings."""
        configs = strategy_settings(names, params, source)
        classes = [get_strategy(n) for n in names]
        check_composition(list(zip(classes, configs.values())), source)
        self.ctx = ctx
        self.names = list(names)
        strategies = [cls(configs[n], ctx) for n, cls in zip(names, classes)]
        self.strategies: list[Strategy] = sorted(strategies, key=lambda s: s.phase)  # stable: ties keep the list's order
        self.weighting = [s for s in self.strategies if s.phase.on_main_loss]  # steps 2a–d
        self.structural = [s for s in self.strategies if not s.phase.on_main_loss]  # steps 1 and 4
        self.main_key = BASELINE if not self.weighting else self.weighting[0].name if len(self.weighting) == 1 else "seg"

    # -- model -------------------------------------------------------------------
    def build_modules(self, model: SegModel) -> nn.ModuleDict:
        return nn.ModuleDict({s.name: nn.ModuleDict(s.build_modules(model)) for s in self.strategies})

    def run_modules(self, modules: nn.ModuleDict, out: SegOutput) -> None:
        for s in self.strategies:
            s.run_modules(modules[s.name], out)

    def export(self, net: SegModel, modules: nn.ModuleDict) -> nn.Module:
        for s in self.strategies:
            model = s.export(net, modules[s.name])
            if model is not None:
                return model
        return net

    # -- losses ------------------------------------------------------------------
    def pixel_loss(self, out: SegOutput, target: Tensor) -> PixelLoss:
        """Steps 2a–c: the main head's per-pixel loss after the weighting strategies."""
        ign = self.ctx.ignore_index
        valid = target != ign
        loss = next((l for s in self.weighting if (l := s.base_loss(out.logits, target)) is not None), None)
        px = PixelLoss(out.logits, target, valid, pixel_ce(out.logits, target, ign) if loss is None else loss, valid)
        for s in self.weighting:
            s.shape(px)
        return px

    def losses(self, out: SegOutput, target: Tensor, progress: float) -> dict[str, Tensor]:
        """Every named loss term, and their sum as ``"loss"``; ``progress`` ∈ [0, 1]."""
        px = self.pixel_loss(out, target)
        terms: dict[str, Tensor] | None = None
        for s in self.weighting:
            terms = s.reduce(px, out, self.main_key) or terms
        if terms is None:
            terms = {self.main_key: average_pixels(px.loss, px.valid, self.ctx.average)}
        if out.aux is not None and self.ctx.aux_weight > 0:
            terms["aux_ce"] = self.ctx.aux_weight * mean_ce(out.aux, target, self.ctx.ignore_index, self.ctx.average)
        for s in self.structural:
            terms.update(s.terms(out, target, progress))
        terms["loss"] = torch.stack([t.float() for t in terms.values()]).sum()
        return terms

    @torch.no_grad()
    def visuals(self, out: SegOutput, images: Tensor, target: Tensor) -> dict[str, np.ndarray]:
        """Named uint8 RGB images (H, W, 3) from every strategy (e.g. ``hl/panel``); may be empty."""
        images_out: dict[str, np.ndarray] = {}
        for s in self.strategies:
            images_out.update(s.visuals(out, images, target))
        return images_out


class TrainingModel(nn.Module):
    """The network plus the strategies' training-only modules, as one module.

    DDP wraps this, so the strategies' parameters are synchronised too. The
    forward pass returns a plain dict (``SegOutput.as_dict``) for DDP.
    """

    def __init__(self, net: SegModel, objective: Objective):
        super().__init__()
        self.net = net
        self.strategy_modules = objective.build_modules(net)
        self._objective = objective

    def forward(self, x: Tensor) -> dict[str, Any]:
        out = self.net(x)
        self._objective.run_modules(self.strategy_modules, out)
        return out.as_dict()

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups: ``net`` (the network), then one per strategy that has
        parameters, named after it, each with its ``lr_mult`` (the optimiser's lr × it;
        ``strategy_params.hl.lr_mult`` for the HL branch, 1.0 for the others)."""
        groups = [{"name": "net", "params": list(self.net.parameters()), "lr_mult": 1.0}]
        for s in self._objective.strategies:
            params = list(self.strategy_modules[s.name].parameters())
            if params:
                groups.append({"name": s.name, "params": params, "lr_mult": s.lr_mult})
        return groups

    def export(self) -> nn.Module:
        """The inference model: training-only parts stripped (C2F keeps its stages).

        Its forward returns a :class:`SegOutput` whose ``logits`` are the final
        prediction at input size.
        """
        return self._objective.export(self.net, self.strategy_modules)
