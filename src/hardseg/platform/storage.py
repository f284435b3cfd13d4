"""Where a run's files live: local paths made absolute, and storage URIs (``s3://``, ``gs://``,
``file://``) through pyarrow's filesystems, so a multi-node sweep can keep its state on shared storage."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs


def absolute_location(location: str, base: Path) -> str:
    """A URI (``s3://``, ``file://``, ...) as is; a local path made absolute against ``base``."""
    return location if "://" in location else str((base / location).resolve())


def storage_fs(location: str):
    """``(pyarrow filesystem, path in it)`` of a local folder or a storage URI (``s3://``, ``gs://``,
    ``file://``): where Tune keeps a sweep's state, so a multi-node sweep can live on shared storage."""
    if "://" not in location:
        return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())
    return pyarrow.fs.FileSystem.from_uri(location)


def storage_exists(location: str) -> bool:
    fs, path = storage_fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def storage_join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI (no ``Path``: it would fold ``s3://`` into ``s3:/``)."""
    return "/".join([base.rstrip("/"), *parts])
