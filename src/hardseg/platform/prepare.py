"""What the driver checks and resolves before any run exists, so that nothing is half-written in MLflow, and
so that a ``--dry-run`` accepts exactly what the real command accepts: every driver (``hardseg train``, ``sweep``,
``ablate``, ``study``, ``nightly``) and every dry run prepares through :func:`prepare_run` (one run) or
:func:`prepare_sweep` (a sweep or an ablation grid).

Preparing means: the config and the space validated (the strategy settings typed once, :mod:`hardseg.config`),
``--set`` checked against what the space searches, paths made absolute (Ray changes the working directory),
``model.init_from`` fetched, the tracking URI and the sweep's name checked, the dataset generated or checked,
and the strategies and weight files checked against the model and data (one place:
:func:`check_strategies_fit`). A dry run differs in what needs the machine the run will have, nothing else:
the CPUs and GPUs are not required (``precheck``), the synthetic set is not generated, and a dataset whose
root is not on this machine is not read (it says so).
"""

from __future__ import annotations

import os
import tempfile
import yaml
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlflow.artifacts import download_artifacts

from hardseg import keys
from hardseg.config import HardsegConfig, apply_overrides, load_config, validate_config
from hardseg.data import available_splits, build_source, resolve_root
from hardseg.data.corruption_cache import check_caches
from hardseg.data.domains import absolute_spec, domain_source, parse_domains
from hardseg.data.lineage import derived, lineage
from hardseg.errors import ConfigError, HardsegError, one_line
from hardseg.platform import runs, tracking
from hardseg.models.pretrained import MIRROR_ENV
from hardseg.platform.names import check_name, default_sweep_name
from hardseg.platform.storage import absolute_location, storage_exists, storage_fs, storage_join
from hardseg.search_spaces import SearchSpace
from hardseg.strategies.build import check_strategies_fit
from hardseg.trainables.checkpoints import EXPORT_FILE

SWEEPS_DIR = "sweeps"  # under ray.storage_path: each sweep's Tune experiment and state


def resolve_paths(cfg: HardsegConfig, workdir: Path | None = None) -> HardsegConfig:
    """Make relative data, storage and evaluation-domain paths absolute (Ray changes the working directory)."""
    base = (workdir or Path.cwd()).resolve()
    cfg = cfg.model_copy(deep=True)
    cfg.data.root = absolute_location(cfg.data.root, base)
    cfg.ray.storage_path = absolute_location(cfg.ray.storage_path, base)
    cfg.data.eval_domains = [absolute_spec(d, base) for d in cfg.data.eval_domains]
    if cfg.data.corruption_cache:
        cfg.data.corruption_cache = str((base / Path(cfg.data.corruption_cache).expanduser()).resolve())
    if cfg.model.pretrained not in ("none", "imagenet"):
        cfg.model.pretrained = str((base / cfg.model.pretrained).resolve())
    if cfg.model.init_from:
        cfg.model.init_from = fetch_init_from(cfg.model.init_from, cfg, base)
    if not cfg.model.weights_mirror and os.environ.get(MIRROR_ENV):  # the workers get it with the config
        cfg.model.weights_mirror = os.environ[MIRROR_ENV]
    return cfg


def fetch_init_from(location: str, cfg: HardsegConfig, base: Path) -> str:
    """``model.init_from`` as a file every worker reads: a path made absolute, or an MLflow
    ``runs:/RUN_ID/PATH`` (or other artifact URI) downloaded once on the driver into
    ``<storage_path>/init_from/``; when ``ray.storage_path`` is a URI (``s3://``, ``file://``), the
    file is downloaded into a temporary folder, uploaded there and its URI returned, so that the
    workers of every node read it through the storage. A folder (``runs:/ID/model``) means its
    ``model_export.pt``."""
    if "://" not in location and not location.startswith("runs:/"):
        return str((base / location).resolve())
    storage = cfg.ray.storage_path
    folder = location.replace("://", "_").replace(":/", "_").replace("/", "_")
    if "://" in storage:
        with tempfile.TemporaryDirectory(prefix="hardseg-init-") as tmp:
            local = _download_init_from(location, cfg, Path(tmp) / folder)
            uri = storage_join(storage, "init_from", folder, local.name)
            fs, path = storage_fs(uri)
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(path) as out:
                out.write(local.read_bytes())
        return uri
    return str(_download_init_from(location, cfg, Path(storage) / "init_from" / folder))


def _download_init_from(location: str, cfg: HardsegConfig, dest: Path) -> Path:
    """``location`` (an MLflow artifact URI) downloaded into ``dest``; a folder means its export file."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(download_artifacts(artifact_uri=location, dst_path=str(dest),
                                        tracking_uri=tracking.resolve_tracking_uri(cfg.tracking.uri)))
    except Exception as exc:
        msg = one_line(exc, typed=False)
        raise HardsegError(f"model.init_from: cannot fetch {location}: {msg} (give runs:/RUN_ID/model/"
                           f"{EXPORT_FILE} of an existing run, or a local file)") from None
    if local.is_dir():
        found = sorted(local.rglob(EXPORT_FILE))
        if not found:
            raise HardsegError(f"model.init_from: {location} holds no {EXPORT_FILE}")
        local = found[0]
    return local


@dataclass
class PreparedData:
    """What the driver's checks found: the datasets' lineage for MLflow, and what the weight files gave."""

    lineage: list = field(default_factory=list)  # hardseg.data.lineage.Lineage records
    weight_reports: list = field(default_factory=list)  # hardseg.models.pretrained.LoadReport


def prepare_data(cfg: HardsegConfig, generate: bool = True) -> PreparedData:
    """Generate the synthetic set once on the driver, or check a real dataset,
    so that workers neither race to generate it nor fail on a bad file later;
    then check the strategies' settings and the weight files (``model.pretrained``,
    ``model.init_from``) against the model and the dataset, and print once what
    the weight files give (loaded, missing and unexpected keys).

    ``generate`` False (a dry run): the synthetic set is not generated, and a dataset (or a path domain)
    whose root is not on this machine is not read; everything else is checked as for a run.

    Returns the lineage (:class:`hardseg.data.lineage.Lineage`) of the training,
    validation and test splits and of every evaluation domain, and the weight
    files' :class:`~hardseg.models.pretrained.LoadReport` s.
    """
    domains = parse_domains(cfg.data.eval_domains)  # checks the specs and their metric names
    real = cfg.data.dataset != "synthetic"
    root = resolve_root(cfg.data)
    records = []
    if real and not generate and not root.exists():
        print(f"[hardseg] data.root {root} is not on this machine: its files are not checked here", flush=True)
    else:
        test = _check_split_names(cfg, domains)
        if generate or real:
            records = _read_splits(cfg, domains, test, real, root, generate)
    reports = check_strategies_fit(cfg)
    for report in reports:
        print(f"[hardseg] {report.summary()}", flush=True)
    return PreparedData(records, reports)


def _check_split_names(cfg: HardsegConfig, domains: list) -> list[str]:
    """Every split the run reads exists (the synthetic set's without generating it); returns the test split's
    name, or none."""
    splits = available_splits(cfg.data)
    for split in ["train", "val", *(d.split for d in domains if d.dataset is None)]:
        if split not in splits:
            raise HardsegError(f"data.eval_domains: unknown split '{split}' for dataset '{cfg.data.dataset}'; "
                               f"available: {', '.join(splits)}")
    test = [cfg.data.test_split] if cfg.data.test_split else []
    if test and (test[0] not in splits or test[0] in ("train", "val")):
        raise HardsegError(f"data.test_split: '{test[0]}' is not a held-out split of dataset '{cfg.data.dataset}' "
                           f"(available: {', '.join(s for s in splits if s not in ('train', 'val')) or 'none'})")
    return test


def _read_splits(cfg: HardsegConfig, domains: list, test: list[str], real: bool, root: Path, generate: bool) -> list:
    """The splits and evaluation domains of :func:`prepare_data` read (and the synthetic set generated), with
    their lineage records; a path domain whose root is not here is read only by a run (``generate``)."""
    own: dict[str, object] = {}  # split of the training set -> its lineage
    records = []
    for split, context in [("train", "training"), ("val", "validation"), *((t, "test") for t in test)]:
        source = build_source(cfg.data, split)
        if real:
            source.validate()
        own[split] = lineage(source, f"{cfg.data.dataset}:{split}", context, cfg.data.dataset, root)
        records.append(own[split])
    for domain in domains:
        if domain.dataset is None and domain.split not in own:
            source = build_source(cfg.data, domain.split)
            if real:
                source.validate()
            own[domain.split] = lineage(source, f"{cfg.data.dataset}:{domain.split}", "evaluation",
                                        cfg.data.dataset, root)
        if domain.dataset is None:  # the training set's split, maybe corrupted: no second pass over its files
            records.append(derived(own[domain.split], domain.name, domain.corruption))
        elif generate or Path(domain.root).exists():  # a path spec: same label space, readable files
            source = domain_source(cfg.data, domain)
            source.validate()
            records.append(lineage(source, domain.name, "evaluation", domain.dataset, Path(domain.root),
                                   variant=domain.variant))
    check_caches(cfg.data, domains)  # a corruption cache for other data or code: refused before training
    return records


# -- one run: hardseg train and its dry run ------------------------------------------------------------------
@dataclass
class PreparedRun:
    """A run, prepared (:func:`prepare_run`)."""

    cfg: HardsegConfig  # paths absolute, model.init_from fetched
    data: PreparedData
    warnings: dict[str, str]  # hardseg.warning.<strategy> tags (runs.strategy_warning_tags), computed once

    def warning_lines(self) -> list[str]:
        return runs.warning_lines_of(self.warnings)


def prepare_run(cfg: HardsegConfig, workdir: Path | None = None, *, dry_run: bool = False,
                precheck: Callable[[HardsegConfig], None] | None = None) -> PreparedRun:
    """Everything ``hardseg train`` checks and resolves before Ray starts; its ``--dry-run`` the same
    (module docstring). ``precheck``: what this machine must give a real run (its CPUs/GPUs), called first.

    Raises:
        HardsegError: one line naming what to fix.
    """
    if precheck is not None:
        precheck(cfg)
    cfg = resolve_paths(cfg, workdir)
    if cfg.tracking.uri:
        tracking.check_tracking_uri(cfg.tracking.uri)
    data = prepare_data(cfg, generate=not dry_run)
    return PreparedRun(cfg, data, runs.strategy_warning_tags(cfg))


# -- a sweep or an ablation grid: hardseg sweep, ablate, study's and nightly's stages, their dry runs ----------
@dataclass
class PreparedSweep:
    """A sweep, prepared (:func:`prepare_sweep`)."""

    name: str
    config_path: str | None  # absolute
    base: HardsegConfig  # every trial's config before its values (paths absolute)
    options: dict[str, HardsegConfig]  # strategy option ('a+b') -> its trials' config before their other values
    data: PreparedData
    warning_lines: list[str]  # the distinct warnings a trial can meet, [hardseg] warning: ...


def check_overrides(space: SearchSpace, overrides: list[str], grid: dict[str, list] | None,
                    possible: set[str]) -> None:
    """A ``--set`` may not name a searched parameter or a grid key, nor the settings of a strategy no trial has."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in space.params or key in (grid or {}):
            raise ConfigError(f"--set {key}: '{key}' is a parameter of {space.label}; remove the --set "
                              f"(or the parameter from the space)")
        parts = key.split(".")
        if parts[0] == "strategy_params" and len(parts) > 1 and parts[1] not in possible:
            raise ConfigError(f"--set {key}: no trial of {space.label} uses '{parts[1]}' "
                              f"(its strategies: {', '.join(sorted(possible))})")


def prepare_sweep(space: SearchSpace, config_path: str | None = None, overrides: list[str] | None = None, *,
                  name: str | None = None, grid: dict[str, list] | None = None,
                  configs: dict[str, list[str]] | None = None, workdir: Path | None = None, dry_run: bool = False,
                  precheck: Callable[[HardsegConfig], None] | None = None) -> PreparedSweep:
    """Everything a sweep (``grid`` set: an ablation grid) checks and resolves before Ray starts; its
    ``--dry-run`` the same (module docstring). ``configs``: the named ``--set`` lists a grid's ``config`` key
    picks (``hardseg study``'s stage 3), each checked. ``precheck``: what this machine must give a real
    sweep's trials, called on the base config before the data.

    Raises:
        ConfigError: an invalid space, config, ``--set`` or name, before any trial or MLflow run starts.
    """
    file_config = load_config(config_path)
    options = space.validate(config_path, file_config=file_config)
    config_path = str(Path(config_path).resolve()) if config_path else None
    name = check_name(name or default_sweep_name(space.name))
    overrides = list(overrides or [])
    check_overrides(space, overrides, grid, {s for option in options for s in option.split("+")})
    base = resolve_paths(space.run_config({}, config_path, overrides, file_config=file_config), workdir)
    if base.tracking.uri:
        tracking.check_tracking_uri(base.tracking.uri)
    sweep_root = storage_join(base.ray.storage_path, SWEEPS_DIR)
    if storage_exists(storage_join(sweep_root, name)):
        raise ConfigError(f"sweep '{name}' already exists in {sweep_root}; resume it with "
                          f"'hardseg sweep --resume {name}' or choose another --name")
    if precheck is not None:
        precheck(base)
    data = prepare_data(base, generate=not dry_run)
    trials = {}
    for option in options:  # every strategy list a trial can have must fit the model (the base's: above)
        cfg = base
        if "strategies" in space.params:
            cfg = resolve_paths(space.run_config({"strategies": option}, config_path, overrides,
                                                 file_config=file_config), workdir)
            check_strategies_fit(cfg)
        trials[option] = cfg
    for sets in (configs or {}).values():
        check_strategies_fit(resolve_paths(space.run_config({}, config_path, [*overrides, *sets],
                                                            file_config=file_config), workdir))
    return PreparedSweep(name, config_path, base, trials, data,
                         sweep_warning_lines(space, trials, config_path, overrides, file_config))


def sweep_warning_lines(space: SearchSpace, options: dict[str, HardsegConfig], config_path: str | None,
                        overrides: list[str], file_config: HardsegConfig) -> list[str]:
    """The distinct warning lines (:func:`hardseg.platform.runs.warning_lines`) of the trials a sweep or an
    ablation can have: one config per strategy option, its searched ``strategy_params`` at their first
    boundary value (a searched λ under AdamW is set in every trial that has it)."""
    cfgs = []
    for option, cfg in options.items():
        sampled = {p.path: p.boundary_values()[0] for p in space.params.values()
                   if p.path.startswith("strategy_params.") and set(p.when) <= set(option.split("+"))}
        if sampled:
            strategies = {"strategies": option} if "strategies" in space.params else {}
            cfg = space.run_config(strategies | sampled, config_path, overrides, file_config=file_config)
        cfgs.append(cfg)
    return runs.warning_lines(cfgs)


# -- hardseg train --resume ------------------------------------------------------------------------------
# Settings a resumed run may change: where it runs and logs, and how fast it reads data. Every other
# setting (the architecture above all) must be the run's own, or the continued run is another run.
RESUME_MAY_CHANGE = ("tracking.uri", "ray.address", "ray.max_failures", "data.loader_workers", "train.num_threads",
                     "data.prefetch_factor")
ARCHITECTURE = ("model.", "strategies", "strategy_params.", "data.dataset")


def resume_config(client: tracking.MlflowClient, run_id: str, config_path: str | None, overrides: list[str],
                  workdir: Path | None = None) -> HardsegConfig:
    """The config to continue MLflow run ``run_id`` with: the run's own ``config.yaml`` with ``overrides``
    (or ``config_path`` with them, compared with the run's), before anything is reopened.

    Raises:
        HardsegError: one line: the run is unknown, FINISHED, not a ``hardseg train`` run, or a setting
            differs from the run's (a changed architecture named as such).
    """
    try:
        run = client.get_run(run_id)
    except Exception:
        raise HardsegError(f"--resume {run_id}: no such run in the tracking store (pass --tracking-uri where "
                           f"the run was logged)") from None
    if run.info.status == "FINISHED":
        raise HardsegError(f"--resume {run_id}: the run FINISHED already; nothing to resume (start a new run "
                           f"without --resume)")
    if run.data.tags.get(keys.KIND) != keys.TRAIN:
        raise HardsegError(f"--resume {run_id}: a '{run.data.tags.get(keys.KIND)}' run, not a hardseg train run "
                           f"(resume sweeps with hardseg sweep --resume NAME)")
    folder = Path(tempfile.mkdtemp(prefix="hardseg-resume-"))
    try:
        text = Path(download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=str(folder),
                                       tracking_uri=client.tracking_uri)).read_text()
    except Exception:
        raise HardsegError(f"--resume {run_id}: the run has no config.yaml artifact to resume from") from None
    own = validate_config(yaml.safe_load(text), f"run {run_id}'s config.yaml")
    if config_path is None:
        given = validate_config(apply_overrides(own.model_dump(mode="json"), list(overrides)), "--set")
    else:
        given = resolve_paths(load_config(config_path, overrides), workdir)
    theirs, mine = own.flat(), given.flat()
    for key in sorted(set(theirs) | set(mine)):
        if key in RESUME_MAY_CHANGE or theirs.get(key) == mine.get(key):
            continue
        what = "changed model architecture" if key.startswith(ARCHITECTURE) else "changed setting"
        raise HardsegError(f"--resume {run_id}: {what}: {key} is {mine.get(key)!r} here but {theirs.get(key)!r} in "
                           f"the run; a resumed run keeps its settings (drop the change, or start a new run)")
    return given
