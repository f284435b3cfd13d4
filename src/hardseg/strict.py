"""The base of hardseg's settings models: unknown keys are rejected, assignments validated.

Low in the house (pydantic only), so every settings model shares it without
importing the others: :mod:`hardseg.config` and the packages whose settings it
assembles (:mod:`hardseg.data.config`), every strategy's ``Config``
(:class:`hardseg.strategies.StrategyConfig`), search spaces' ``sweep`` settings,
studies and nightly suites.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A pydantic model with ``extra="forbid"`` and ``validate_assignment=True``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
