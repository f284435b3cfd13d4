"""Corrupted copies of a dataset split, made once (``hardseg data corrupt``) and read by ``corrupt:`` domains.

ImageNet-C and its segmentation counterparts are evaluated on corrupted files made once, not regenerated
for every model; on the fly, the 19 corruptions × 5 severities of a 500-image Cityscapes val cost CPU-hours
per evaluated model. :func:`make_cache` writes, for every (corruption, severity), the corrupted images of a
split under ``OUT/<corruption>-<severity>/`` at the image's path relative to the dataset root (the
dataset's own layout; always PNG, lossless, so a ``.jpg`` source gets a ``.png`` name), by the same code
and seeding as :class:`hardseg.data.corruptions.CorruptedSource`, so a cached image equals the on-the-fly
one byte for byte. Masks are not copied: a cached domain reads them from the dataset.

``OUT/manifest.json`` records the dataset format and root, the code version (:func:`code_version`: the
package version and a digest of the corruption code), every source image's size and sha256 per split,
the (corruption, severity) sets made per split, and every written file's sha256.

A ``corrupt:`` domain uses a cache (:func:`cached_source`) when ``data.corruption_cache`` names one, or
when ``<root>-corrupted/manifest.json`` exists beside the dataset root (:func:`default_cache_dir`); a cache
for another dataset, another code version or other source files is refused (:class:`DataError`, one line
naming the mismatch). A (corruption, severity, split) the cache does not hold is generated on the fly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from hardseg import __version__
from hardseg.data import build_source, resolve_root
from hardseg.data import corruptions as _corruptions
from hardseg.data.base import read_image
from hardseg.data.config import DataConfig
from hardseg.data.corruptions import CORRUPTIONS, SEVERITIES, CorruptedSource, check_frost_files
from hardseg.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "hardseg-corruption-cache"
FORMAT_VERSION = 1
CACHE_SUFFIX = "-corrupted"  # <root>-corrupted beside the dataset root is found without configuration


def code_version() -> str:
    """``<hardseg version>+<12 hex digits of sha256 of corruptions.py>``: a cache made by other corruption
    code (whatever its version number says) is not used."""
    digest = hashlib.sha256(Path(_corruptions.__file__).read_bytes()).hexdigest()[:12]
    return f"{__version__}+{digest}"


def default_cache_dir(root: Path) -> Path:
    """``<root>-corrupted`` beside the dataset root (``hardseg data corrupt``'s default ``--out``)."""
    root = Path(root).absolute()
    return root.parent / f"{root.name}{CACHE_SUFFIX}"


def set_name(corruption: str, severity: int) -> str:
    return f"{corruption}-{severity}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=4096)
def _sha256_once(path: str, size: int, mtime_ns: int) -> str:
    """A file's digest, computed once per process while its size and mtime stay the same."""
    return _sha256(Path(path))


def file_digest(path: Path) -> str:
    st = path.stat()
    return _sha256_once(str(path), st.st_size, st.st_mtime_ns)


def image_files(source: Any, root: Path, what: str) -> list[Path]:
    """The source's image files (``source.images``), each under ``root``; DataError for a source without
    image files (the synthetic set keeps its images in arrays: its ``corrupt:`` domains run on the fly)."""
    images = getattr(source, "images", None)
    if not isinstance(images, list) or not all(isinstance(p, Path) for p in images):
        raise DataError(f"{what}: this dataset's images are not files; corrupt: domains of it are made on the fly")
    outside = [p for p in images if not Path(p).absolute().is_relative_to(root)]
    if outside:
        raise DataError(f"{what}: image {outside[0]} lies outside the dataset root {root}")
    return [Path(p).absolute() for p in images]


def cached_file(cache: Path, corruption: str, severity: int, rel: Path) -> Path:
    """Where the corrupted copy of the image at ``rel`` (relative to the dataset root) lives."""
    return cache / set_name(corruption, severity) / Path(rel).with_suffix(".png")


# ---------------------------------------------------------------- making a cache

@dataclass
class CacheSummary:
    out: Path
    images: int
    files: int
    bytes: int
    seconds: float
    cpu_seconds: float


_worker: dict[str, Any] = {}


def _init_worker(cfg_json: str, split: str) -> None:
    """Each process builds the split's reader once (the same reader a ``corrupt:`` domain uses)."""
    _worker["source"] = build_source(DataConfig.model_validate_json(cfg_json), split)


def _write_png(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    Image.fromarray(image).save(tmp, format="PNG", compress_level=1)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    return digest


def _corrupt_image(index: int, corruption: str, severities: Sequence[int], targets: Sequence[str]
                   ) -> tuple[list[tuple[str, str, int]], float]:
    """One source image under one corruption at ``severities``: ``[(target, sha256, bytes)]``, CPU seconds."""
    start = time.process_time()
    base = _worker["source"]
    image, _ = base.load(index)
    done = []
    for severity, target in zip(severities, targets):
        out = CorruptedSource(base, corruption, severity).corrupt_image(image, index)
        path = Path(target)
        done.append((target, _write_png(path, out), path.stat().st_size))
    return done, time.process_time() - start


def read_manifest(cache: Path) -> dict | None:
    path = Path(cache) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"corruption cache {cache}: unreadable {MANIFEST} ({err}); remove the folder and make "
                        f"it again with hardseg data corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"corruption cache {cache}: {MANIFEST} is not a {FORMAT} manifest")
    return manifest


def _sources(files: list[Path], root: Path) -> dict[str, dict]:
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)} for p in files}


def make_cache(cfg: DataConfig, splits: Sequence[str], corruptions: Sequence[str], severities: Sequence[int],
               out: Path, workers: int | None = None, progress: bool = True) -> CacheSummary:
    """Write the corrupted copies of ``splits`` (module docstring) with ``workers`` processes (default: the
    CPUs), adding to an existing cache of the same dataset, code and files. Raises DataError on bad input."""
    root = resolve_root(cfg)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder")
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise DataError(f"unknown corruption '{unknown[0]}'; known: {', '.join(CORRUPTIONS)} (or all)")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise DataError(f"severity {bad[0]} is not one of 1-5")
    if "frost" in corruptions:
        try:
            check_frost_files()
        except ValueError as err:
            raise DataError(str(err)) from None
    out = Path(out).absolute()
    version = code_version()
    manifest = read_manifest(out) or {"format": FORMAT, "format_version": FORMAT_VERSION, "code_version": version,
                                      "dataset": cfg.dataset, "root": str(root), "splits": {}, "files": {}}
    tasks: list[tuple[str, int, str, list[int], list[str]]] = []
    for split in splits:
        try:
            source = build_source(cfg, split)
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise DataError(str(err)) from None
        files = image_files(source, root, f"hardseg data corrupt {root} --split {split}")
        sources = _sources(files, root)
        _check(manifest, out, cfg.dataset, split, sources, version)
        entry = manifest["splits"].setdefault(split, {"sources": sources, "sets": []})
        sets = set(entry["sets"])
        for corruption in corruptions:
            todo = [s for s in severities if set_name(corruption, s) not in sets]
            if not todo:
                continue
            for index, path in enumerate(files):
                rel = path.relative_to(root)
                targets = [str(cached_file(out, corruption, s, rel)) for s in todo]
                tasks.append((split, index, corruption, todo, targets))
    start, cpu = time.perf_counter(), 0.0
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    by_split: dict[str, list] = {}
    for task in tasks:
        by_split.setdefault(task[0], []).append(task)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm  # local: the bar is needed by this command only, not by domains reading a cache

    with tqdm(total=sum(len(t[3]) for t in tasks), desc="corrupting", unit="image", disable=not progress) as bar:
        for split, split_tasks in by_split.items():
            with ProcessPoolExecutor(n_workers, initializer=_init_worker,
                                     initargs=(cfg.model_dump_json(), split)) as pool:
                futures = [pool.submit(_corrupt_image, index, corruption, todo, targets)
                           for _, index, corruption, todo, targets in split_tasks]
                for future in as_completed(futures):
                    done, seconds = future.result()
                    cpu += seconds
                    for target, digest, _size in done:
                        manifest["files"][Path(target).relative_to(out).as_posix()] = digest
                    bar.update(len(done))
            entry = manifest["splits"][split]
            entry["sets"] = sorted(set(entry["sets"]) | {set_name(c, s) for _, _, c, todo, _ in split_tasks
                                                         for s in todo})
    for split in splits:  # sets with nothing to do (e.g. an empty split) still count as made
        entry = manifest["splits"][split]
        entry["sets"] = sorted(set(entry["sets"]) | {set_name(c, s) for c in corruptions for s in severities})
    tmp = out / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / MANIFEST)
    size = sum((out / rel).stat().st_size for rel in manifest["files"])
    return CacheSummary(out, sum(len(manifest["splits"][s]["sources"]) for s in splits), len(manifest["files"]),
                        size, time.perf_counter() - start, cpu)


def _check(manifest: dict, cache: Path, dataset: str, split: str, sources: dict[str, dict], version: str) -> None:
    """DataError naming the first mismatch between a cache and the dataset split it is used for."""
    remake = "remake it with hardseg data corrupt (or point data.corruption_cache elsewhere)"
    if manifest.get("dataset") != dataset:
        raise DataError(f"corruption cache {cache} was made for dataset '{manifest.get('dataset')}', not "
                        f"'{dataset}'; {remake}")
    if manifest.get("code_version") != version:
        raise DataError(f"corruption cache {cache} was made by corruption code {manifest.get('code_version')}, "
                        f"this is {version}; {remake}")
    have = manifest.get("splits", {}).get(split)
    if have is None:
        return
    theirs = have.get("sources", {})
    if theirs != sources:
        missing = sorted(set(sources) - set(theirs))
        extra = sorted(set(theirs) - set(sources))
        changed = sorted(k for k in set(sources) & set(theirs) if sources[k] != theirs[k])
        what = (f"image {missing[0]} is not in it" if missing else f"its image {extra[0]} is not in the dataset"
                if extra else f"image {changed[0]} has changed")
        raise DataError(f"corruption cache {cache} was made for other files of split '{split}' ({what}); {remake}")


# ---------------------------------------------------------------- reading a cache

def find_cache(cfg: DataConfig) -> Path | None:
    """``data.corruption_cache`` (which must hold a manifest), else ``<root>-corrupted`` if it holds one."""
    if cfg.corruption_cache:
        cache = Path(cfg.corruption_cache).expanduser().absolute()
        if not (cache / MANIFEST).is_file():
            raise DataError(f"data.corruption_cache: no {MANIFEST} in {cache}; make the cache with "
                            f"hardseg data corrupt ROOT --dataset {cfg.dataset} --out {cache}")
        return cache
    beside = default_cache_dir(resolve_root(cfg))
    return beside if (beside / MANIFEST).is_file() else None


@functools.lru_cache(maxsize=64)
def _verified(cache: str, dataset: str, root: str, split: str, files: tuple[str, ...]) -> frozenset[str]:
    """The sets a cache holds for ``split`` after checking it against the files (once per process)."""
    manifest = read_manifest(Path(cache))
    paths = [Path(root) / f for f in files]
    _check(manifest, Path(cache), dataset, split, _sources(paths, Path(root)), code_version())
    entry = manifest.get("splits", {}).get(split)
    return frozenset(entry["sets"]) if entry else frozenset()


class CachedCorruptedSource(CorruptedSource):
    """A :class:`CorruptedSource` whose corrupted images are read from a cache instead of computed."""

    def __init__(self, base: Any, name: str, severity: int, files: list[Path]) -> None:
        super().__init__(base, name, severity)
        self.files_cached = files

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_image(self.files_cached[index]), self.base.load_mask(index)


def cached_source(cfg: DataConfig, base: Any, split: str, corruption: str, severity: int) -> CorruptedSource:
    """The ``corrupt:`` domain's source: from the cache when there is one holding this set, else on the fly.

    Raises:
        DataError: the cache was made for another dataset, code version or other files.
    """
    cache = find_cache(cfg)
    if cache is None or getattr(base, "images", None) is None:
        return CorruptedSource(base, corruption, severity)
    root = resolve_root(cfg)
    files = image_files(base, root, f"corruption cache {cache}")
    rels = tuple(p.relative_to(root).as_posix() for p in files)
    sets = _verified(str(cache), cfg.dataset, str(root), split, rels)
    if set_name(corruption, severity) not in sets:
        return CorruptedSource(base, corruption, severity)
    return CachedCorruptedSource(base, corruption, severity,
                                 [cached_file(cache, corruption, severity, Path(r)) for r in rels])


def check_caches(cfg: DataConfig, domains: Iterable[Any]) -> None:
    """Check the cache (if any) against every ``corrupt:`` domain's split before a run starts."""
    corrupt = [d for d in domains if d.corruption is not None and d.dataset is None]
    if not corrupt or find_cache(cfg) is None:
        return
    for split in sorted({d.split for d in corrupt}):
        base = build_source(cfg, split)
        if getattr(base, "images", None) is not None:
            cached_source(cfg, base, split, *corrupt[0].corruption)


def parse_severities(values: Sequence[str]) -> list[int]:
    """``["1-5"]``, ``["2", "4"]``, ``["1,3"]`` -> sorted severities; DataError on anything else."""
    out: set[int] = set()
    for value in values:
        for part in str(value).split(","):
            lo, dash, hi = part.strip().partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise DataError(f"--severities: '{value}' is not a severity 1-5 or a range like 1-5")
            a, b = int(lo), int(hi) if dash else int(lo)
            if not (1 <= a <= b <= 5):
                raise DataError(f"--severities: '{value}' is not within 1-5")
            out.update(range(a, b + 1))
    return sorted(out)


def parse_corruptions(values: Sequence[str]) -> list[str]:
    """``["all"]`` -> every corruption (frost only when its photographs are present); else the names,
    checked."""
    if list(values) == ["all"]:
        names = list(CORRUPTIONS)
        try:
            check_frost_files()
        except ValueError:
            names.remove("frost")
        return names
    for name in values:
        if name not in CORRUPTIONS:
            raise DataError(f"unknown corruption '{name}'; known: {', '.join(CORRUPTIONS)} (or all)")
    return list(dict.fromkeys(values))
