"""``hardseg data check``: scan a dataset tree and summarise it in one table (docs/datasets.md).

Per split: image/mask pairs found, masks missing, image sizes, raw label ids
present (and those the format does not know, e.g. 34 in a Cityscapes labelIds
mask), then the class pixel frequencies after the id mapping. Every problem
is recorded with the file it concerns; the first one becomes the command's
``error:`` line (exit status 2).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hardseg.data import available_splits, build_source, dataset_info
from hardseg.data.base import PairedFileSource, check_sizes, image_size, read_mask
from hardseg.data.config import DataConfig
from hardseg.errors import DataError


@dataclass
class SplitReport:
    split: str
    pairs: int = 0
    missing_masks: int = 0
    sizes: Counter = field(default_factory=Counter)  # (w, h) -> images
    raw_ids: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))  # pixels per raw value
    unknown_ids: dict[int, Path] = field(default_factory=dict)  # raw id -> first mask holding it
    class_pixels: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)


def check_split(source: PairedFileSource) -> SplitReport:
    """Read every mask and image header of one split, recording problems instead of raising."""
    rep = SplitReport(source.split, pairs=len(source))
    n = source.info.num_classes
    rep.class_pixels = np.zeros(n, dtype=np.int64)
    missing = {m for _, m in source.missing_masks()}
    rep.missing_masks = len(missing)
    for img, mask in source.missing_masks():
        rep.problems.append(f"mask missing for image {img}: expected {mask}")
    for i, (img, mask_path) in enumerate(zip(source.images, source.masks)):
        try:
            w, h = image_size(img)
            rep.sizes[(w, h)] += 1
            if mask_path in missing:
                continue
            raw = read_mask(mask_path)
            check_sizes(np.empty((h, w, 0)), raw, img, mask_path)
        except DataError as err:
            rep.problems.append(str(err))
            continue
        counts = np.bincount(raw.ravel(), minlength=256)
        rep.raw_ids += counts
        bad = [int(v) for v in np.flatnonzero(counts) if source.lut[v] < 0]
        for v in bad:
            rep.unknown_ids.setdefault(v, mask_path)
        if bad:
            rep.problems.append(f"mask {mask_path}: label id {bad[0]} {source.unknown_text}")
        mapped = source.lut[raw]
        rep.class_pixels += np.bincount(mapped[(mapped >= 0) & (mapped < n)].ravel(), minlength=n)[:n]
    return rep


def check_tree(cfg: DataConfig, splits: list[str] | None = None, variant: str | None = None
               ) -> tuple[list[SplitReport], tuple[str, ...]]:
    """Reports for ``splits`` (default: every split found) and the class names.

    Raises:
        DataError: the tree cannot be listed at all (missing root, empty split list, no images).
    """
    found = available_splits(cfg)
    splits = splits or found
    if not splits:
        raise DataError(f"no split found under {Path(cfg.root)} for dataset '{cfg.dataset}'")
    reports = []
    for split in splits:
        source = build_source(cfg, split, variant, strict=False)
        if not isinstance(source, PairedFileSource):
            raise DataError(f"'hardseg data check' reads file trees; dataset '{cfg.dataset}' is generated "
                            f"(see 'hardseg data generate')")
        reports.append(check_split(source))
    return reports, dataset_info(cfg).class_names


def format_report(reports: list[SplitReport], class_names: tuple[str, ...], max_classes: int = 40) -> str:
    """The summary table: one row per split, then class pixel shares (%) per split."""
    lines = [f"{'split':<10} {'pairs':>6} {'missing':>8} {'problems':>8}  image sizes (WxH: n)   raw ids present"]
    for r in reports:
        sizes = ", ".join(f"{w}x{h}: {k}" for (w, h), k in r.sizes.most_common(3))
        if len(r.sizes) > 3:
            sizes += f", +{len(r.sizes) - 3} more"
        ids = np.flatnonzero(r.raw_ids)
        id_text = _ranges(ids)
        if r.unknown_ids:
            id_text += "; UNKNOWN: " + ", ".join(f"{v} (e.g. {p.name})" for v, p in sorted(r.unknown_ids.items())[:5])
        lines.append(f"{r.split:<10} {r.pairs:>6} {r.missing_masks:>8} {len(r.problems):>8}  {sizes:<22} {id_text}")
    lines.append("")
    lines.append(f"{'class':<24}" + "".join(f" {r.split:>10}" for r in reports) + "   (% of labelled pixels)")
    totals = [max(1, int(r.class_pixels.sum())) for r in reports]
    order = range(len(class_names))
    for c in list(order)[:max_classes]:
        lines.append(f"{class_names[c][:24]:<24}" + "".join(
            f" {100.0 * r.class_pixels[c] / t:10.2f}" for r, t in zip(reports, totals)))
    if len(class_names) > max_classes:
        lines.append(f"... {len(class_names) - max_classes} more classes")
    ignored = [int(r.raw_ids.sum() - r.class_pixels.sum()) for r in reports]
    lines.append(f"{'(ignored / unknown px)':<24}" + "".join(f" {v:>10}" for v in ignored))
    return "\n".join(lines)


def _ranges(ids: np.ndarray) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out, start = [], None
    for k, v in enumerate(ids):
        if start is None:
            start = v
        if k + 1 == len(ids) or ids[k + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out) or "none"
