"""What the driver checks and resolves before any run exists (so nothing is half-written in MLflow):
paths made absolute (Ray changes the working directory), ``model.init_from`` fetched, the dataset
generated or checked, and the strategies and weight files checked against the model and data."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.artifacts import download_artifacts

from hardseg.config import RunConfig
from hardseg.data import available_splits, build_dataset, resolve_root
from hardseg.data.domains import absolute_spec, build_domain, parse_domains
from hardseg.data.lineage import derived, lineage
from hardseg.errors import HardsegError
from hardseg.platform import tracking
from hardseg.models.pretrained import MIRROR_ENV
from hardseg.platform.storage import absolute_location, storage_fs, storage_join
from hardseg.trainables.loop import EXPORT_FILE, check_strategies_fit


def resolve_paths(cfg: RunConfig, workdir: Path | None = None) -> RunConfig:
    """Make relative data, storage and evaluation-domain paths absolute (Ray changes the working directory)."""
    base = (workdir or Path.cwd()).resolve()
    cfg = cfg.model_copy(deep=True)
    cfg.data.root = absolute_location(cfg.data.root, base)
    cfg.ray.storage_path = absolute_location(cfg.ray.storage_path, base)
    cfg.data.eval_domains = [absolute_spec(d, base) for d in cfg.data.eval_domains]
    if cfg.model.pretrained not in ("none", "imagenet"):
        cfg.model.pretrained = str((base / cfg.model.pretrained).resolve())
    if cfg.model.init_from:
        cfg.model.init_from = fetch_init_from(cfg.model.init_from, cfg, base)
    if not cfg.model.weights_mirror and os.environ.get(MIRROR_ENV):  # the workers get it with the config
        cfg.model.weights_mirror = os.environ[MIRROR_ENV]
    return cfg


def fetch_init_from(location: str, cfg: RunConfig, base: Path) -> str:
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


def _download_init_from(location: str, cfg: RunConfig, dest: Path) -> Path:
    """``location`` (an MLflow artifact URI) downloaded into ``dest``; a folder means its export file."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(download_artifacts(artifact_uri=location, dst_path=str(dest),
                                        tracking_uri=tracking.resolve_tracking_uri(cfg.tracking.uri)))
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Generate the synthetic set once on the driver, or check a real dataset,
    so that workers neither race to generate it nor fail on a bad file later;
    then check the strategies' settings and the weight files (``model.pretrained``,
    ``model.init_from``) against the model and the dataset, and print once what
    the weight files give (loaded, missing and unexpected keys).

    Returns the lineage (:class:`hardseg.data.lineage.Lineage`) of the training,
    validation and test splits and of every evaluation domain, and the weight
    files' :class:`~hardseg.models.pretrained.LoadReport` s.
    """
    splits = available_splits(cfg.data)
    domains = parse_domains(cfg.data.eval_domains)  # checks the specs and their metric names
    for split in ["train", "val", *(d.split for d in domains if d.dataset is None)]:
        if split not in splits:
            raise HardsegError(f"data.eval_domains: unknown split '{split}' for dataset '{cfg.data.dataset}'; "
                               f"available: {', '.join(splits)}")
    test = [cfg.data.test_split] if cfg.data.test_split else []
    if test and (test[0] not in splits or test[0] in ("train", "val")):
        raise HardsegError(f"data.test_split: '{test[0]}' is not a held-out split of dataset '{cfg.data.dataset}' "
                           f"(available: {', '.join(s for s in splits if s not in ('train', 'val')) or 'none'})")
    real = cfg.data.dataset != "synthetic"
    root = resolve_root(cfg.data)
    own: dict[str, object] = {}  # split of the training set -> its lineage
    records = []
    for split, context in [("train", "training"), ("val", "validation"), *((t, "test") for t in test)]:
        source = build_dataset(cfg.data, split, train=False).source
        if real:
            source.validate()
        own[split] = lineage(source, f"{cfg.data.dataset}:{split}", context, cfg.data.dataset, root)
        records.append(own[split])
    for domain in domains:
        if domain.dataset is None and domain.split not in own:
            source = build_dataset(cfg.data, domain.split, train=False).source
            if real:
                source.validate()
            own[domain.split] = lineage(source, f"{cfg.data.dataset}:{domain.split}", "evaluation",
                                        cfg.data.dataset, root)
        if domain.dataset is None:  # the training set's split, maybe corrupted: no second pass over its files
            records.append(derived(own[domain.split], domain.name, domain.corruption))
        else:  # a path spec: same label space, readable files
            ds = build_domain(cfg.data, domain)
            ds.validate()
            records.append(lineage(ds.source, domain.name, "evaluation", domain.dataset, Path(domain.root),
                                   variant=domain.variant))
    reports = check_strategies_fit(cfg)
    for report in reports:
        print(f"[hardseg] {report.summary()}", flush=True)
    return PreparedData(records, reports)
