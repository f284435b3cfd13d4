"""``hardseg study``: which strategy or combination, with which weights, beats the baseline, and does it hold.

One command, one MLflow parent run (``hardseg.kind`` study), three stages, each a sweep of
:mod:`hardseg.platform.sweep` nested under the study's run (``mlflow.parentRunId``, tags
``hardseg.study`` = the study's run id and ``hardseg.stage``):

1. **defaults**: every selected strategy at its paper defaults × the study's seeds (an ablation);
2. **search**: Optuna TPE + ASHA over strategy combinations and their weights, every trial on the
   search seed (one seed, never used in stages 1 and 3); ASHA with one bracket per strategy
   combination (``per_strategy``: a trial is pruned only against trials of its own strategies, so a
   slow starter such as HL is not pruned by faster-starting strategies; ``benchmarks/asha_bias.py``);
3. **confirm**: the top-k distinct FINISHED configurations of stage 2 and every stage-1 strategy,
   re-run on fresh seeds the search never saw (an ablation grid over named configurations,
   :attr:`hardseg.platform.trial.TrialSpec.configs`), so the winner is judged on seeds it was not
   selected on (a search's best score overstates its own: the winner's curse).

Then the report (:mod:`hardseg.reports.study`), which opens with the answer. Ctrl-C stops the
running stage as a sweep stops (its parent KILLED) and closes the study's run KILLED;
``hardseg study --resume NAME`` skips finished stages, resumes the interrupted one with
:func:`hardseg.platform.sweep.resume_sweep` (finished trials are not repeated) and goes on.

A study file (``src/hardseg/platform/studies/*.yaml``, or your own YAML) holds the budget
(``base``: ``--set`` keys for every run), the stage-1 ``strategies`` and ``seeds``, the ``search``
space and settings, and ``confirm`` (``top_k``, ``seeds``). The shipped ``quick`` preset fits the
embedded synthetic benchmark on 2 CPU cores; a GPU study changes ``base`` (model, data, epochs,
``ray.use_gpu``) and the seed and trial counts, nothing else.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from hardseg import keys
from hardseg.config import RayConfig
from hardseg.errors import ConfigError
from hardseg.platform import tracking
from hardseg.platform.ablation import ablation_space
from hardseg.platform.prepare import prepare_data, prepare_sweep
from hardseg.platform.runs import RunCloser, open_run, reopen_run, training_tags
from hardseg.platform.shipped import DistinctSeeds, available_shipped, load_shipped
from hardseg.platform.storage import absolute_location, storage_exists, storage_fs, storage_join
from hardseg.platform.names import check_name
from hardseg.platform.sweep import SWEEPS_DIR, resume_sweep, run_sweep
from hardseg.platform.sweep_runs import child_runs
from hardseg.reports.study import write_study_report
from hardseg.search_spaces import SearchSpace
from hardseg.strict import Strict

STATE_FILE = "hardseg_study.json"
STUDIES_DIR = "studies"  # under ray.storage_path: each study's state
SHIPPED_STUDIES = "studies"  # hardseg/platform/studies/*.yaml: the presets
STAGES = ("defaults", "search", "confirm")
MIN_CONFIRM_SEEDS = 3  # = hardseg.reports.stats.MIN_PAIRED_SEEDS: fewer cannot give a verdict


class SearchStage(Strict):
    """Stage 2: a :class:`hardseg.search_spaces.SearchSpace`'s ``params`` and its sweep settings."""

    params: dict[str, dict[str, Any]] = Field(min_length=1)
    seed: int = Field(100, description="the training seed of every search trial")
    num_samples: int = Field(8, ge=1)
    # per_strategy: a trial is pruned only against trials of its own strategies (benchmarks/asha_bias.py:
    # plain ASHA pruned HL beyond its full-budget rank, HL's branch starting slowly)
    scheduler: dict[str, Any] | None = Field(default_factory=lambda: {"type": "asha", "grace_period": 1,
                                                                      "reduction_factor": 2, "per_strategy": True})
    sampler_seed: int = 0
    max_concurrent: int | None = Field(None, ge=1)


class ConfirmStage(Strict):
    top_k: int = Field(2, ge=1)
    seeds: DistinctSeeds = Field(min_length=MIN_CONFIRM_SEEDS)


class Study(Strict):
    name: str = Field("study", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
    description: str = ""
    config: str | None = None
    baseline: str = "ce"
    metric: str = keys.VAL_MIOU
    mode: Literal["max", "min"] = "max"
    strategies: list[str] = Field(min_length=2)
    seeds: DistinctSeeds = Field(min_length=1)
    base: dict[str, Any] = Field(default_factory=dict)
    search: SearchStage
    confirm: ConfirmStage
    max_concurrent: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _fresh(self) -> Study:
        if self.baseline not in self.strategies:
            raise ValueError(f"baseline '{self.baseline}' must be one of strategies {self.strategies}")
        seen = set(self.seeds) | {self.search.seed}
        if reused := sorted(seen & set(self.confirm.seeds)):
            raise ValueError(f"confirm.seeds {reused} are used by stage 1 or the search: confirmation needs fresh "
                             f"seeds the search never saw")
        if "seed" in self.search.params or "seed" in self.base:
            raise ValueError("'seed' is set by the study (seeds, search.seed, confirm.seeds), not by base or params")
        if clash := sorted(set(self.base) & set(self.search.params)):
            raise ValueError(f"base sets searched parameter(s) {clash}")
        return self

    def overrides(self, extra: list[str]) -> list[str]:
        """``--set`` strings for every run: ``base``, then the command line's."""
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in self.base.items()] + list(extra)

    def search_space(self):
        s = self.search
        return SearchSpace.from_dict({
            "name": f"{self.name}-search", "description": f"study {self.name}: stage 2 (search)", "base": {},
            "params": s.params,
            "sweep": {"num_samples": s.num_samples, "metric": self.metric, "mode": self.mode,
                      "scheduler": s.scheduler, "seed": s.sampler_seed,
                      "max_concurrent": s.max_concurrent or self.max_concurrent}}, source=f"study {self.name}: search")


def available_studies() -> list[str]:
    return available_shipped(SHIPPED_STUDIES)


def load_study(name_or_path: str | os.PathLike) -> Study:
    """A shipped study preset (``quick``) or a YAML file. Raises ConfigError (one line) on bad input."""
    return load_shipped(name_or_path, SHIPPED_STUDIES, Study, what="study", label="study",
                        keys="strategies, seeds, base, search, confirm", defaults={"name": "{stem}"})


# -- state -------------------------------------------------------------------------
@dataclass
class StudyState:
    """What ``--resume`` needs, saved in ``<ray.storage_path>/studies/<name>/``."""

    name: str
    study: dict[str, Any]
    overrides: list[str]
    parent_run_id: str
    tracking_uri: str
    storage_path: str
    in_process: bool = True
    done: list[str] = field(default_factory=list)
    stage_runs: dict[str, str] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] | None = None  # stage 3: {label: {sets, source, search_score}}

    def save(self) -> None:
        fs, path = storage_fs(study_folder(self.storage_path, self.name))
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{STATE_FILE}") as f:
            f.write(json.dumps(self.__dict__, indent=1).encode())

    @classmethod
    def load(cls, storage_path: str, name: str) -> StudyState:
        fs, path = storage_fs(study_folder(storage_path, name))
        with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
            return cls(**json.loads(f.read().decode()))


def study_folder(storage_path: str, name: str) -> str:
    return storage_join(storage_path, STUDIES_DIR, name)


@dataclass
class StudyOutcome:
    name: str
    parent_run_id: str
    tracking_uri: str
    interrupted: bool
    report: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0


# -- running -------------------------------------------------------------------------
def stage_name(name: str, stage: str) -> str:
    return f"{name}-{stage}"


def _validate(study: Study, overrides: list[str], workdir: Path | None):
    """Stages 1 and 2 prepared as their sweeps will be (:func:`hardseg.platform.prepare.prepare_sweep`, without
    generating data; the study's name guards theirs), before any MLflow run; returns the resolved base config."""
    sets = study.overrides(overrides)
    search = study.search_space()
    for item in sets:
        key = item.split("=", 1)[0]
        if key in search.params or key in ("seed", "strategies"):
            raise ConfigError(f"--set {key}: the study sets '{key}' in its stages; change the study file instead")
    grid = {"strategies": list(study.strategies), "seed": list(study.seeds)}
    defaults = prepare_sweep(ablation_space(study.strategies, study.seeds), study.config, sets, grid=grid,
                             workdir=workdir, dry_run=True)
    prepare_sweep(search, study.config, [*sets, f"seed={study.search.seed}"], workdir=workdir, dry_run=True)
    return defaults.base


def run_study(study: Study, *, overrides: list[str] | None = None, name: str | None = None,
              in_process: bool = True, workdir: Path | None = None) -> StudyOutcome:
    """Validate, create the study's MLflow run and state, then run the stages and the report."""
    overrides = list(overrides or [])
    name = check_name(name or f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    base_cfg = _validate(study, overrides, workdir)
    uri = tracking.resolve_tracking_uri(base_cfg.tracking.uri, workdir)
    storage = base_cfg.ray.storage_path
    if storage_exists(study_folder(storage, name)):
        raise ConfigError(f"study '{name}' already exists in {study_folder(storage, '')}; resume it with "
                          f"'hardseg study --resume {name}' or choose another --name")
    prepare_data(base_cfg)
    client = tracking.MlflowClient(uri)
    exp_id = tracking.get_or_create_experiment(client, base_cfg.tracking.experiment, uri)
    tags = {k: v for k, v in training_tags(base_cfg).items() if k not in (keys.SEED, keys.STRATEGIES)}
    run_id = open_run(client, exp_id, name, keys.STUDY_KIND, tags={**tags, keys.SWEEP: name}, params={
        "study.baseline": study.baseline, "study.metric": study.metric, "study.mode": study.mode,
        "study.strategies": json.dumps(study.strategies), "study.seeds": json.dumps(study.seeds),
        "study.search_seed": study.search.seed, "study.confirm_seeds": json.dumps(study.confirm.seeds),
        "study.top_k": study.confirm.top_k, "study.overrides": json.dumps(study.overrides(overrides))[:6000]},
        texts={"study.yaml": yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)})
    state = StudyState(name, study.model_dump(mode="json"), overrides, run_id, uri, storage, in_process)
    state.save()
    print(f"[hardseg] study '{name}': MLflow run {run_id}; stages {', '.join(STAGES)}; "
          f"resume after Ctrl-C with: hardseg study --resume {name}", flush=True)
    return _run_stages(state, client, workdir)


def resume_study(name: str, *, storage_path: str | None = None, workdir: Path | None = None) -> StudyOutcome:
    """Finish an interrupted study: finished stages are skipped, the interrupted one resumed."""
    base = absolute_location(storage_path or RayConfig().storage_path, (workdir or Path.cwd()).resolve())
    if not storage_exists(f"{study_folder(base, check_name(name))}/{STATE_FILE}"):
        raise ConfigError(f"no study '{name}' in {study_folder(base, '')}; pass --storage-path where it was run "
                          f"(the config's ray.storage_path)")
    state = StudyState.load(base, name)
    client = tracking.MlflowClient(state.tracking_uri)
    reopen_run(client, state.parent_run_id)
    print(f"[hardseg] resuming study '{name}' (MLflow run {state.parent_run_id}); done: "
          f"{', '.join(state.done) or 'nothing'}", flush=True)
    return _run_stages(state, client, workdir)


def _run_stages(state: StudyState, client, workdir: Path | None) -> StudyOutcome:
    start = time.perf_counter()
    hint = f"resume with: hardseg study --resume {state.name}"
    with RunCloser(client, state.parent_run_id, resume_hint=hint, wrap_errors=False) as parent:
        for stage in STAGES:
            if stage in state.done:
                continue
            out = _run_stage(state, stage, client, workdir)
            state.stage_runs[stage] = out.parent_run_id
            if out.interrupted:
                state.save()
                parent.kill(f"interrupted in stage '{stage}'")
                print(f"[hardseg] study '{state.name}' interrupted in stage '{stage}'; {hint}", flush=True)
                return StudyOutcome(state.name, state.parent_run_id, state.tracking_uri, True,
                                    wall_s=time.perf_counter() - start)
            state.done.append(stage)
            state.save()
        paths = write_study_report(client, client.get_run(state.parent_run_id),
                                   (workdir or Path.cwd()).resolve() / "reports" / state.name)
        wall = time.perf_counter() - start
        tracking.log_metrics(client, state.parent_run_id, {keys.WALL_TIME: wall})
    print(f"[hardseg] study '{state.name}' done in {wall:.0f}s; report: {paths['markdown']} and {paths['html']}",
          flush=True)
    return StudyOutcome(state.name, state.parent_run_id, state.tracking_uri, False, paths, wall)


def _run_stage(state: StudyState, stage: str, client, workdir: Path | None):
    study = Study.model_validate(state.study)
    sweep = stage_name(state.name, stage)
    if storage_exists(storage_join(state.storage_path, SWEEPS_DIR, sweep)):
        print(f"[hardseg] study '{state.name}': resuming stage '{stage}' (sweep {sweep})", flush=True)
        return resume_sweep(sweep, storage_path=state.storage_path, workdir=workdir)
    print(f"[hardseg] study '{state.name}': stage '{stage}' (sweep {sweep})", flush=True)
    tags = {keys.PARENT: state.parent_run_id, keys.STUDY: state.parent_run_id, keys.STAGE: stage}
    sets = study.overrides(state.overrides)
    common = dict(config_path=study.config, name=sweep, in_process=state.in_process, workdir=workdir,
                  parent_tags=tags)
    if stage == "defaults":
        space = ablation_space(study.strategies, study.seeds, max_concurrent=study.max_concurrent)
        return run_sweep(space, overrides=sets, grid={"strategies": list(study.strategies), "seed": study.seeds},
                         kind=keys.ABLATION, **common)
    if stage == "search":
        return run_sweep(study.search_space(), overrides=[*sets, f"seed={study.search.seed}"], kind=keys.SWEEP_KIND,
                         **common)
    if state.configs is None:
        state.configs = confirm_configs(client, state.stage_runs["search"], study)
        state.save()
    if "study.confirm.0" not in client.get_run(state.parent_run_id).data.params:
        # indexed keys: a label such as "search1:hl+ohem" is no valid MLflow param name
        tracking.log_params(client, state.parent_run_id, {f"study.confirm.{i}": json.dumps({"label": label, **c})[:6000]
                                                          for i, (label, c) in enumerate(state.configs.items())})
    labels = list(state.configs)
    strategies = list(dict.fromkeys(c["strategies"] for c in state.configs.values()))
    space = ablation_space(strategies, study.confirm.seeds, max_concurrent=study.max_concurrent)
    return run_sweep(space, overrides=sets, grid={"config": labels, "seed": list(study.confirm.seeds)},
                     kind=keys.ABLATION, configs={label: c["sets"] for label, c in state.configs.items()}, **common)


def _sets(sampled: dict[str, str]) -> list[str]:
    """``--set`` strings of a trial's sampled values (``strategies`` as a list)."""
    out = []
    for key, value in sorted(sampled.items()):
        if key == "strategies":
            out.append(f"strategies=[{','.join(value.split('+'))}]")
        else:
            out.append(f"{key}={value}")
    return out


def confirm_configs(client, search_run_id: str, study: Study) -> dict[str, dict[str, Any]]:
    """Stage 3's configurations: every stage-1 strategy at its defaults, then the top-k distinct FINISHED
    search configurations by the study's metric (label ``search<rank>:<strategies>``), each with its
    ``--set`` list, where it came from and (for searched ones) its search score."""
    run = client.get_run(search_run_id)
    configs: dict[str, dict[str, Any]] = {
        s: {"strategies": s, "sets": _sets({"strategies": s}), "source": "defaults", "search_score": None}
        for s in study.strategies}
    runs = [r for r in child_runs(client, run.info.experiment_id, search_run_id)
            if r.info.status == "FINISHED" and study.metric in r.data.metrics]
    sign = -1.0 if study.mode == "max" else 1.0  # best first; a tie goes to the earlier trial
    runs.sort(key=lambda r: (sign * r.data.metrics[study.metric], r.info.start_time or 0))
    seen: set[str] = set()
    for r in runs:
        prefix = keys.SAMPLED_PREFIX
        sampled = {k[len(prefix):]: v for k, v in r.data.tags.items() if k.startswith(prefix)}
        sampled.setdefault("strategies", r.data.tags.get(keys.STRATEGIES, ""))
        key = json.dumps(sampled, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        label = f"search{len(seen)}:{sampled['strategies']}"
        configs[label] = {"strategies": sampled["strategies"], "sets": _sets(sampled), "source": r.info.run_id,
                          "sampled": sampled, "search_score": r.data.metrics[study.metric]}
        if len(seen) == study.confirm.top_k:
            break
    if len(configs) == len(study.strategies):
        print("[hardseg] study: no search trial FINISHED; stage 3 confirms the stage-1 strategies only", flush=True)
    return configs
