"""Find and load search spaces: presets shipped in ``presets/`` or any YAML file."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import yaml

from hardseg.errors import ConfigError, one_line
from hardseg.search_spaces.space import SearchSpace


def _presets_dir() -> Path:
    return Path(str(resources.files("hardseg.search_spaces") / "presets"))


def available_presets() -> list[str]:
    """Names of the shipped presets (file stems of ``presets/*.yaml``)."""
    return sorted(p.stem for p in _presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of a preset; ConfigError listing the presets if there is none."""
    if name not in available_presets():
        raise ConfigError(f"unknown search space preset '{name}'; available: {', '.join(available_presets())} "
                          "(or pass a YAML file path)")
    return _presets_dir() / f"{name}.yaml"


def load_space(name_or_path: str | os.PathLike) -> SearchSpace:
    """Load a preset (by name) or a YAML file; the space is parsed, not yet validated.

    Raises:
        ConfigError: missing file or preset, bad YAML, unknown key, malformed parameter.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    if not path.is_file():
        if path.suffix in (".yaml", ".yml") or "/" in text or os.sep in text:
            raise ConfigError(f"search space file not found: {text} (pass an existing YAML file or a preset: "
                              f"{', '.join(available_presets())})")
        path = preset_path(text)
    data = read_yaml_mapping(path, "name, description, base, params, sweep")
    return SearchSpace.from_dict(data, source=str(path), default_name=path.stem)


def read_yaml_mapping(path: Path, keys: str) -> dict:
    """The YAML mapping in ``path``; a one-line :class:`ConfigError` naming the file (and the expected
    ``keys``) when it is not valid YAML or not a mapping."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({one_line(exc, typed=False)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys {keys}")
    return data
