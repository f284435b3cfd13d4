"""The base of hardseg's settings models: unknown keys are rejected, assignments validated.

Low in the house (pydantic only), so :mod:`hardseg.config` and the packages
whose settings it assembles (:mod:`hardseg.data.config`) share it without
importing each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A pydantic model with ``extra="forbid"`` and ``validate_assignment=True``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
