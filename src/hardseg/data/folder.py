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

Datasets laid out otherwise are read through optional keys of ``classes.yaml``
(see docs/datasets.md)::

    label_map: {0: ignore, 7: road, 26: car, 255: ignore}   # raw id -> class name/id or ignore;
                                 # raw ids not listed are errors (named with the file)
    reduce_zero_label: true      # raw 0 -> ignore, raw k -> class k-1 (ADE20K's convention)
    image_suffix: .jpg           # image file = <stem><image_suffix> (default: .png/.jpg/.jpeg)
    mask_suffix: _mask.png       # mask file = <stem><mask_suffix> (default: .png)
    split_lists: {train: lists/train.txt, val: lists/val.txt}
                                 # stems (relative to images/ and masks/, one a line) per split,
                                 # instead of the images/<split>/ sub-folders

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
    identity_lut,
    list_split_dirs,
    read_split_list,
)
from hardseg.data.info import DatasetInfo
from hardseg.errors import DataError, one_line

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
        raise DataError(f"{path}: not valid YAML ({one_line(exc, typed=False)})") from None
    if isinstance(doc, list):
        doc = {"classes": doc}
    if not isinstance(doc, dict) or "classes" not in doc:
        raise DataError(f"{path}: expected a list of class names or a mapping with a 'classes' list")
    known = {"name", "classes", "large", "small", "thin", "hierarchy", "palette", *LAYOUT_KEYS}
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


LAYOUT_KEYS = ("label_map", "reduce_zero_label", "image_suffix", "mask_suffix", "split_lists")


def _layout(root: Path) -> dict[str, Any]:
    doc = yaml.safe_load((root / "classes.yaml").read_text())
    return doc if isinstance(doc, dict) else {}


def folder_lut(root: Path | str, info: DatasetInfo | None = None) -> np.ndarray:
    """Raw mask value -> class id (255 ignore, -1 unknown) from ``classes.yaml``'s
    ``label_map`` / ``reduce_zero_label`` (module docstring); identity otherwise."""
    root = Path(root)
    info = info or load_classes(root)
    doc, path, n = _layout(root), root / "classes.yaml", info.num_classes
    label_map, reduce = doc.get("label_map"), bool(doc.get("reduce_zero_label", False))
    if label_map is not None and reduce:
        raise DataError(f"{path}: give 'label_map' or 'reduce_zero_label', not both")
    if reduce:
        lut = np.full(256, -1, dtype=np.int16)
        lut[0], lut[1:n + 1], lut[255] = 255, np.arange(n), 255
        return lut
    if label_map is None:
        return identity_lut(n)
    if not isinstance(label_map, dict) or not label_map:
        raise DataError(f"{path}: 'label_map' must map raw ids (0-255) to class names, class ids or 'ignore'")
    lut = np.full(256, -1, dtype=np.int16)
    index = {name: i for i, name in enumerate(info.class_names)}
    for raw, target in label_map.items():
        if not (isinstance(raw, int) and 0 <= raw <= 255):
            raise DataError(f"{path}: label_map key {raw!r} is not a raw id 0-255")
        if target in ("ignore", 255):
            lut[raw] = 255
        elif isinstance(target, int) and 0 <= target < n:
            lut[raw] = target
        elif str(target) in index:
            lut[raw] = index[str(target)]
        else:
            raise DataError(f"{path}: label_map maps {raw} to unknown class {target!r} (a class name, 0-{n - 1} or ignore)")
    return lut


def available_splits(root: Path | str) -> list[str]:
    root = Path(root)
    lists = _layout(root).get("split_lists") if (root / "classes.yaml").is_file() else None
    if isinstance(lists, dict):
        return sorted(str(k) for k in lists)
    return [s for s in list_split_dirs(root / "images") if (root / "masks" / s).is_dir()]


class FolderSource(PairedFileSource):
    """One split of a folder-layout dataset."""

    def __init__(self, root: Path | str, split: str, strict: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        self.info = load_classes(self.root)
        self.lut = folder_lut(self.root, self.info)
        n = self.info.num_classes
        self.unknown_text = ("is not mapped by label_map in classes.yaml" if _layout(self.root).get("label_map")
                             else f"is outside the class table (ids 0-{n - 1} from classes.yaml; 255 = ignore)")
        doc = _layout(self.root)
        image_suffix, mask_suffix = doc.get("image_suffix"), str(doc.get("mask_suffix") or ".png")
        lists = doc.get("split_lists")
        if lists is not None:
            if not isinstance(lists, dict) or split not in lists:
                raise DataError(f"split '{split}' not found: {self.root / 'classes.yaml'} split_lists names "
                                f"{', '.join(map(str, lists or {})) or 'no split'}")
            stems = read_split_list(self.root / str(lists[split]))
            img_dir, mask_dir = self.root / "images", self.root / "masks"
            self.images = [self._image_for(img_dir, s, image_suffix) for s in stems]
            self.masks = [mask_dir / f"{s}{mask_suffix}" for s in stems]
        else:
            img_dir = self.root / "images" / split
            mask_dir = self.root / "masks" / split
            if not img_dir.is_dir() or not mask_dir.is_dir():
                missing = img_dir if not img_dir.is_dir() else mask_dir
                avail = available_splits(self.root)
                raise DataError(
                    f"split '{split}' not found: {missing} is missing "
                    f"(available splits: {', '.join(avail) or 'none'}; {LAYOUT_HELP})"
                )
            suffixes = (str(image_suffix),) if image_suffix else IMAGE_EXTENSIONS
            self.images = sorted(p for p in img_dir.iterdir()
                                 if p.is_file() and any(p.name.lower().endswith(x.lower()) for x in suffixes))
            if not self.images:
                raise DataError(f"no {'/'.join(suffixes)} images in {img_dir} ({LAYOUT_HELP})")
            stems_seen: dict[str, Path] = {}
            for p in self.images:
                stem = _strip(p.name, suffixes)
                if stem in stems_seen:
                    raise DataError(f"two images share the stem '{stem}': {stems_seen[stem]} and {p}")
                stems_seen[stem] = p
            self.masks = [mask_dir / f"{_strip(p.name, suffixes)}{mask_suffix}" for p in self.images]
        if strict:
            self.require_masks()

    @staticmethod
    def _image_for(img_dir: Path, stem: str, suffix: str | None) -> Path:
        if suffix:
            return img_dir / f"{stem}{suffix}"
        for ext in IMAGE_EXTENSIONS:
            if (img_dir / f"{stem}{ext}").is_file():
                return img_dir / f"{stem}{ext}"
        return img_dir / f"{stem}.png"


def _strip(name: str, suffixes: tuple[str, ...]) -> str:
    for x in suffixes:
        if name.lower().endswith(x.lower()):
            return name[: -len(x)]
    return name



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
