"""Dataset metadata shared by every dataset format.

:class:`DatasetInfo` says what the class ids mean and which classes are the
"hard" ones that the hard-pixel metrics look at:

* ``large_classes``: large-area classes; the boundary band used by the metrics
  is the set of pixels near a boundary between two *different* large classes;
* ``small_classes``: small objects;
* ``thin_classes``: thin curvilinear structures;
* ``hierarchy``: coarse levels for coarse-to-fine supervision, coarsest first.
  ``hierarchy[l][c]`` is the coarse id of fine class ``c`` at level ``l``; the
  finest level (the dataset's own classes) is not included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hardseg.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset's class ids mean (immutable, JSON-serialisable)."""

    name: str
    class_names: tuple[str, ...]
    ignore_index: int = 255
    large_classes: tuple[int, ...] = ()
    small_classes: tuple[int, ...] = ()
    thin_classes: tuple[int, ...] = ()
    hierarchy: tuple[tuple[int, ...], ...] = ()
    hierarchy_names: tuple[tuple[str, ...], ...] = ()
    palette: tuple[tuple[int, int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        # Normalise lists (from JSON/YAML) to tuples so instances stay hashable.
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        for name in ("large_classes", "small_classes", "thin_classes"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        object.__setattr__(self, "hierarchy", tuple(tuple(int(c) for c in level) for level in self.hierarchy))
        object.__setattr__(self, "hierarchy_names", tuple(tuple(str(n) for n in level) for level in self.hierarchy_names))
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in rgb) for rgb in self.palette))
        self._check()

    def _check(self) -> None:
        n = len(self.class_names)
        if n == 0:
            raise DataError(f"dataset '{self.name}': no classes defined")
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < n:
            raise DataError(f"dataset '{self.name}': ignore_index {self.ignore_index} must be in [num_classes, 255]")
        for group in ("large_classes", "small_classes", "thin_classes"):
            bad = [c for c in getattr(self, group) if not 0 <= c < n]
            if bad:
                raise DataError(f"dataset '{self.name}': {group} has ids outside 0..{n - 1}: {bad}")
        if self.hierarchy_names and len(self.hierarchy_names) != len(self.hierarchy):
            raise DataError(f"dataset '{self.name}': hierarchy_names must have one entry per hierarchy level")
        for lvl, level in enumerate(self.hierarchy):
            if len(level) != n:
                raise DataError(
                    f"dataset '{self.name}': hierarchy level {lvl} maps {len(level)} classes, expected {n}"
                )
            if self.hierarchy_names:
                k = len(self.hierarchy_names[lvl])
                if any(not 0 <= c < k for c in level):
                    raise DataError(f"dataset '{self.name}': hierarchy level {lvl} uses coarse ids outside 0..{k - 1}")
        if self.palette and len(self.palette) != n:
            raise DataError(f"dataset '{self.name}': palette has {len(self.palette)} colours for {n} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_coarse_classes(self, level: int) -> int:
        """Number of coarse classes at hierarchy ``level`` (0 = coarsest)."""
        if self.hierarchy_names:
            return len(self.hierarchy_names[level])
        return max(self.hierarchy[level]) + 1

    def colors(self) -> tuple[tuple[int, int, int], ...]:
        """The palette, or a deterministic generated one when none is set."""
        if self.palette:
            return self.palette
        return default_palette(self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (lists instead of tuples)."""
        d = asdict(self)
        return {k: _listify(v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _listify(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_listify(x) for x in v]
    return v


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours by the bit-interleaving scheme used by PASCAL VOC."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)
