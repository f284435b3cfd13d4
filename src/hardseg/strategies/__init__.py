"""Hard-pixel strategies behind one interface, plus their registry.

Built-ins (one module each): ``ce``, ``cb_ce``, ``focal``, ``ohem``, ``hl``,
``self_regulation``, ``coarse_to_fine``; they register on import.
Third-party strategies come from the ``hardseg.strategies`` entry-point group.
The math lives in :mod:`hardseg.strategies.functional`; the composition rule
in :mod:`hardseg.strategies.objective`. See ``docs/strategies.md``.
"""

from hardseg.strategies.base import Phase, PixelLoss, Strategy, StrategyConfig, StrategyContext
from hardseg.strategies.registry import available_strategies, get_strategy, register_strategy
from hardseg.strategies.objective import Objective, TrainingModel, strategy_warnings, validate_strategies
from hardseg.strategies import ce, cb_ce, focal, ohem, hl, self_regulation, coarse_to_fine  # noqa: F401  (register)

__all__ = [
    "Objective", "Phase", "PixelLoss", "Strategy", "StrategyConfig", "StrategyContext", "TrainingModel",
    "available_strategies", "get_strategy", "register_strategy", "strategy_warnings", "validate_strategies",
]
