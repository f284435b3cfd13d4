"""Reader for a generic folder dataset.

Layout::

    <root>/classes.yaml
    <root>/images/<split>/<stem>.png | .jpg | .jpeg     RGB (grey is converted)
    <root>/masks/<split>/<stem>.png                     same stem as its image

Masks are single-channel PNGs (mode ``L``, or ``P`` whose palette indices are
the ids) whose pixel value is the class id; 255 means "ignore". At most 255
classes (ids 0..254). A value ``>= num_classes`` other than 255 raises
:class:`~hardseg.errors.DataError` naming the mask and the id. Splits are
the sub-folders of ``images/`` that also exist under ``masks/``.

``classes.yaml`` is either a plain list of class names, or a mapping::

    name: my-dataset             # optional; default: the root folder's name
    classes: [background, road, car, pole]   # required; the id is the position
    large: [background, road]    # optional: large-area classes (boundary band)
    small: [car]                 # optional: small-object classes
    thin: [pole]                 # optional: thin-structure classes
    hierarchy:                   # optional: coarse levels, coarsest first;
      - {background: stuff, road: stuff, car: thing, pole: thing}
      - {background: bg, road: road, car: vehicle, pole: object}
    palette: [[0, 0, 0], [128, 64, 128], [0, 0, 142], [153, 153, 153]]   # optional RGB per class

Each hierarchy level maps every class name to a coarse name; coarse ids are
numbered in order of first appearance along the class list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hardseg.data.base import (
    PairedFileSource,
    IMAGE_EXTENSIONS,
    list_split_dirs,
    read_mask,
)
from hardseg.data.info import DatasetInfo
from hardseg.errors import DataError

LAYOUT_HELP = (
    "expected <root>/classes.yaml, <root>/images/<split>/<stem>.png|jpg and <root>/masks/<split>/<stem>.png"
)


def load_classes(root: Path | str) -> DatasetInfo:
    """Parse ``<root>/classes.yaml`` into a :class:`DatasetInfo`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root} ({LAYOUT_HELP})")
    path = root / "classes.yaml"
    if not path.is_file():
        raise DataError(f"class list not found: {path} ({LAYOUT_HELP})")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(doc, list):
        doc = {"classes": doc}
    if not isinstance(doc, dict) or "classes" not in doc:
        raise DataError(f"{path}: expected a list of class names or a mapping with a 'classes' list")
    known = {"name", "classes", "large", "small", "thin", "hierarchy", "palette"}
    extra = sorted(set(doc) - known)
    if extra:
        raise DataError(f"{path}: unknown key '{extra[0]}' (allowed: {', '.join(sorted(known))})")
    names = doc["classes"]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise DataError(f"{path}: 'classes' must be a non-empty list of names")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: class '{dup}' is listed twice")
    if len(names) > 255:
        raise DataError(f"{path}: {len(names)} classes; at most 255 are supported (255 = ignore)")
    index = {n: i for i, n in enumerate(names)}

    def ids(key: str) -> tuple[int, ...]:
        value = doc.get(key) or []
        if not isinstance(value, list):
            raise DataError(f"{path}: '{key}' must be a list of class names")
        out = []
        for n in value:
            if str(n) not in index:
                raise DataError(f"{path}: '{key}' names unknown class '{n}'")
            out.append(index[str(n)])
        return tuple(out)

    hierarchy: list[tuple[int, ...]] = []
    hierarchy_names: list[tuple[str, ...]] = []
    levels = doc.get("hierarchy") or []
    if not isinstance(levels, list):
        raise DataError(f"{path}: 'hierarchy' must be a list of levels (coarsest first)")
    for lvl, level in enumerate(levels):
        if not isinstance(level, dict):
            raise DataError(f"{path}: hierarchy level {lvl} must map each class name to a coarse name")
        unknown = [str(k) for k in level if str(k) not in index]
        if unknown:
            raise DataError(f"{path}: hierarchy level {lvl} names unknown class '{unknown[0]}'")
        missing = [n for n in names if n not in {str(k) for k in level}]
        if missing:
            raise DataError(f"{path}: hierarchy level {lvl} does not map class '{missing[0]}'")
        level = {str(k): str(v) for k, v in level.items()}
        coarse: list[str] = []
        for n in names:
            if level[n] not in coarse:
                coarse.append(level[n])
        hierarchy.append(tuple(coarse.index(level[n]) for n in names))
        hierarchy_names.append(tuple(coarse))

    palette = doc.get("palette") or ()
    if palette and (
        not isinstance(palette, list)
        or len(palette) != len(names)
        or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette)
    ):
        raise DataError(f"{path}: 'palette' must list one [r, g, b] (0-255) per class")
    return DatasetInfo(
        name=str(doc.get("name") or root.name),
        class_names=tuple(names),
        ignore_index=255,
        large_classes=ids("large"),
        small_classes=ids("small"),
        thin_classes=ids("thin"),
        hierarchy=tuple(hierarchy),
        hierarchy_names=tuple(hierarchy_names),
        palette=tuple(tuple(c) for c in palette),
    )


def available_splits(root: Path | str) -> list[str]:
    root = Path(root)
    return [s for s in list_split_dirs(root / "images") if (root / "masks" / s).is_dir()]


class FolderSource(PairedFileSource):
    """One split of a folder-layout dataset."""

    def __init__(self, root: Path | str, split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.info = load_classes(self.root)
        img_dir = self.root / "images" / split
        mask_dir = self.root / "masks" / split
        if not img_dir.is_dir() or not mask_dir.is_dir():
            missing = img_dir if not img_dir.is_dir() else mask_dir
            avail = available_splits(self.root)
            raise DataError(
                f"split '{split}' not found: {missing} is missing "
                f"(available splits: {', '.join(avail) or 'none'}; {LAYOUT_HELP})"
            )
        self.images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.images:
            raise DataError(f"no .png/.jpg images in {img_dir} ({LAYOUT_HELP})")
        stems: dict[str, Path] = {}
        for p in self.images:
            if p.stem in stems:
                raise DataError(f"two images share the stem '{p.stem}': {stems[p.stem]} and {p}")
            stems[p.stem] = p
        self.masks = []
        for img in self.images:
            m = mask_dir / f"{img.stem}.png"
            if not m.is_file():
                raise DataError(f"mask missing for image {img}: expected {m}")
            self.masks.append(m)

    def load_mask(self, index: int) -> np.ndarray:
        path = self.masks[index]
        mask = read_mask(path)
        n = self.info.num_classes
        bad = (mask >= n) & (mask != 255)
        if bad.any():
            v = int(mask[bad].min())
            raise DataError(
                f"mask {path}: label id {v} is outside the class table (ids 0-{n - 1} from classes.yaml; 255 = ignore)"
            )
        return mask



def describe(info: DatasetInfo) -> dict[str, Any]:
    """The classes.yaml mapping that reproduces ``info`` (for writing fixtures/exports)."""
    names = list(info.class_names)
    doc: dict[str, Any] = {"name": info.name, "classes": names}
    for key, group in (("large", info.large_classes), ("small", info.small_classes), ("thin", info.thin_classes)):
        if group:
            doc[key] = [names[c] for c in group]
    if info.hierarchy:
        doc["hierarchy"] = [
            {n: (info.hierarchy_names[lvl][level[i]] if info.hierarchy_names else f"c{level[i]}") for i, n in enumerate(names)}
            for lvl, level in enumerate(info.hierarchy)
        ]
    if info.palette:
        doc["palette"] = [list(c) for c in info.palette]
    return doc
