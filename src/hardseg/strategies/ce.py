"""Cross-entropy baseline (docs/strategies.md §0).

The main head's loss is the mean of the per-pixel cross-entropy ℓ over the
non-ignored pixels, or over all pixels with ``loss.average: all`` (the HL
paper's mmsegmentation 0.22.1), logged as ``ce``; the auxiliary head, if the
model has one, adds ``StrategyContext.aux_weight`` (0.4) · CE(aux), averaged
the same way, as ``aux_ce`` — the
objective does both, for every run, so this strategy only names the baseline:
it overrides no hook. It cannot be combined with any other strategy (a run
without a weighting strategy already uses CE as its main loss, and names its
term :data:`BASELINE`).
"""

from __future__ import annotations

from hardseg.strategies.base import Phase, Strategy, StrategyConfig
from hardseg.strategies.registry import register_strategy

BASELINE = "ce"


class CEConfig(StrategyConfig):
    """Plain cross-entropy has no hyperparameters."""


@register_strategy(BASELINE)
class CrossEntropy(Strategy):
    phase = Phase.BASE_LOSS  # alone in a run: ℓ is the per-pixel CE
    Config = CEConfig
