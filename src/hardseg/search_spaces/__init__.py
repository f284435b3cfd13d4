"""Search spaces for sweeps: YAML files (presets in ``presets/``) and their loader.

One file is one space::

    name: quickstart                  # optional; defaults to the file stem
    description: one line shown in listings
    base:                             # HardsegConfig overrides for every trial, dotted keys (as --set);
      train.epochs: 4                 # values may be scalars, lists or mappings
      strategies: [hl]                # fixes the trial's strategies when 'strategies' is not a param
    params:                           # dotted HardsegConfig path -> distribution
      strategies: {categorical: [ce, hl, "hl+ohem", [focal, coarse_to_fine]]}
      train.lr: {loguniform: [1.0e-3, 1.0e-2]}
      train.batch_size: {int: [8, 16], step: 8}        # inclusive; optional step or log: true
      train.optimizer: {categorical: [adamw, sgd]}
      strategy_params.hl.lam: {loguniform: [1.0e-3, 1.0e-1]}   # implicitly when: hl
      train.warmup_epochs: {uniform: [0.0, 1.0], when: [hl, ohem]}
    sweep:
      num_samples: 6
      metric: val/miou                # <split>/<name>
      mode: max
      objectives: null                # or >= 2 of {metric: val/band_iou, mode: max}: multi-objective
      scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # null/omitted: no early stopping
      seed: 0                         # TPESampler seed
      max_concurrent: null            # null: derived from the cluster's resources

Distributions: exactly one of ``uniform: [lo, hi]``, ``loguniform: [lo, hi]``
(lo > 0), ``int: [lo, hi]`` (+ ``step``, ``log``), ``categorical: [choices]``
(strings, numbers, booleans, null). ``when`` names strategies that must ALL be
in the trial's strategies for the parameter to be sampled; ``strategy_params.<s>.<key>``
gets ``when: [<s>]`` implicitly. ``strategies`` choices are a name, an
``a+b`` string or a list, normalised to ``a+b`` strings (Optuna choices are
primitives) and turned back into lists in the HardsegConfig; ``strategy_params``
of strategies a trial does not have (from the config file or base) are dropped.
Optuna parameter names are the dotted paths. :meth:`SearchSpace.validate`
checks every path and boundary value before any trial starts.
"""

from hardseg.search_spaces.loader import available_presets, load_space, preset_path
from hardseg.search_spaces.space import AshaSettings, Param, SearchSpace, SweepSettings

__all__ = ["AshaSettings", "Param", "SearchSpace", "SweepSettings", "available_presets", "load_space", "preset_path"]
