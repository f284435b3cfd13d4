"""YAML definitions shipped inside the package (nightly suites, studies) or given as a file.

One way to find, read and validate them: a name is looked up among the shipped
files of a package folder, anything else is read as a path; the YAML is validated
by a pydantic model, and its ``config`` (a run config YAML) is made absolute
against the file's folder and must exist. Every problem is one ConfigError line.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError

from hardseg.config import _format_validation_error, resolve_recipe
from hardseg.errors import ConfigError
from hardseg.search_spaces.loader import read_yaml_mapping

M = TypeVar("M", bound=BaseModel)


def _distinct(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError("seeds must be distinct")
    return values


# Seeds of a suite or a study stage: a repeated seed would run the same trial twice.
DistinctSeeds = Annotated[list[int], AfterValidator(_distinct)]


def shipped_dir(folder: str) -> Path:
    """``hardseg/platform/<folder>/``, where the shipped YAML files are."""
    return Path(str(resources.files("hardseg.platform") / folder))


def available_shipped(folder: str) -> list[str]:
    return sorted(p.stem for p in shipped_dir(folder).glob("*.yaml"))


def load_shipped(name_or_path: str | os.PathLike, folder: str, model: type[M], *, what: str, label: str,
                 keys: str, defaults: dict[str, Any] | None = None) -> M:
    """A shipped definition (by name, from ``folder``) or a YAML file, validated by ``model``.

    Args:
        what: the thing's name in the not-found message ("nightly suite", "study").
        label: its name before the file in validation messages ("suite", "study").
        keys: the top-level keys, named when the file is not a mapping.
        defaults: keys set when the file lacks them; ``{"name": ...}`` may use the file's stem via
            the placeholder ``"{stem}"``.

    Raises:
        ConfigError: missing file, bad YAML, unknown key or invalid value, missing ``config`` file.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    if not path.is_file():
        shipped = available_shipped(folder)
        if path.suffix in (".yaml", ".yml") or os.sep in text or text not in shipped:
            raise ConfigError(f"{what} not found: {text} (pass a YAML file or a shipped {label}: "
                              f"{', '.join(shipped)})")
        path = shipped_dir(folder) / f"{text}.yaml"
    data = read_yaml_mapping(path, keys)
    for key, value in (defaults or {}).items():
        data.setdefault(key, value.replace("{stem}", path.stem) if isinstance(value, str) else value)
    try:
        obj = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, f"{label} {path}")) from None
    config = getattr(obj, "config", None)
    if config and config.startswith("recipe:"):  # a shipped recipe as a study's or suite's base config
        config = resolve_recipe(config)
        setattr(obj, "config", config)
    if config and not Path(config).is_absolute():
        config = str((path.parent / config).resolve())
        setattr(obj, "config", config)
    if config and not Path(config).is_file():
        raise ConfigError(f"{label} {path}: config file not found: {config}")
    return obj
