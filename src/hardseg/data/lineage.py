"""Dataset lineage: what exactly a run trained and was evaluated on (docs/datasets.md).

A :class:`Lineage` names one dataset split as the run used it and carries a
digest of its file list (paths relative to the root, with sizes) and its label
statistics (pixels per class), so two runs on different copies of
"cityscapes" get different digests while two copies with the same files get
the same one. The platform logs these as MLflow dataset inputs; this module
knows nothing of MLflow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Lineage:
    name: str  # e.g. "gta5:train", "cityscapes:val", "corrupt.fog-3"
    context: str  # training | validation | test | evaluation
    source: str  # JSON: format, root, split (and variant / corruption)
    digest: str  # 32 hex digits over the file list and the label statistics
    profile: str  # JSON: images, files_digest, class_pixels
    schema: str  # JSON: class names


def _files(source: Any) -> list[Path]:
    if hasattr(source, "files"):
        return list(source.files())
    if hasattr(source, "image_file"):  # the synthetic set: one array file per split
        return [source.image_file, source.mask_file]
    return []


def files_digest(files: list[Path], root: Path | None) -> str:
    """sha256 over ``relative path\\tsize`` lines, sorted (not the contents: cheap, and a re-encoded
    or replaced file almost always changes size)."""
    h = hashlib.sha256()
    for p in sorted(files):
        rel = p.relative_to(root) if root is not None and p.is_relative_to(root) else p
        size = p.stat().st_size if p.is_file() else -1
        h.update(f"{rel.as_posix()}\t{size}\n".encode())
    return h.hexdigest()


def lineage(source: Any, name: str, context: str, fmt: str, root: Path, **extra: Any) -> Lineage:
    """The lineage record of one split (``source``: a reader of :mod:`hardseg.data`); reads every mask
    unless the source has its label counts already (a validated file tree, the synthetic set)."""
    counts = np.asarray(source.class_pixel_counts(), dtype=np.int64)
    files = _files(source)
    fd = files_digest(files, root)
    digest = hashlib.sha256((fd + "|" + ",".join(map(str, counts.tolist()))).encode()).hexdigest()[:32]
    src = {"format": fmt, "root": str(root), "split": source.split, **{k: v for k, v in extra.items() if v is not None}}
    profile = {"images": len(source), "files": len(files), "files_digest": fd, "class_pixels": counts.tolist()}
    return Lineage(name, context, json.dumps(src, sort_keys=True), digest, json.dumps(profile),
                   json.dumps({"classes": list(source.info.class_names)}))


def derived(base: Lineage, name: str, corruption: tuple[str, int] | None) -> Lineage:
    """The lineage of a domain computed from ``base``'s files (a corrupted copy of a split, or the split
    itself under another name): same files and labels, the corruption in the source and the digest."""
    src = json.loads(base.source)
    if corruption is not None:
        src["corruption"] = f"{corruption[0]}-{corruption[1]}"
    digest = base.digest if corruption is None else hashlib.sha256(
        f"{base.digest}|{src['corruption']}".encode()).hexdigest()[:32]
    return Lineage(name, "evaluation", json.dumps(src, sort_keys=True), digest, base.profile, base.schema)
