"""``hardseg sweep``: Ray Tune over training runs, recorded in MLflow (``hardseg ablate`` is a grid sweep,
:mod:`hardseg.platform.ablation`).

A sweep is one MLflow parent run (space, CLI, git commit, versions; the best
trial at the end) and one child run per Tune trial (:mod:`hardseg.platform.trial`).

* **sweep**: :class:`~ray.tune.search.optuna.OptunaSearch` with the space's
  define-by-run function and an explicit ``TPESampler(seed=...)``; the
  Optuna study lives in an RDB storage (SQLite next to the MLflow store by
  default, ``tracking.optuna_storage`` for PostgreSQL), named after the
  sweep, readable by ``optuna-dashboard``. Optional ASHA on the trials'
  progress in their schedule's unit (``epoch`` or ``iteration``); every evaluation is an Optuna intermediate value at its step, and a
  trial ASHA stops is ``PRUNED`` (:class:`RecordingOptunaSearch`); optional multi-objective (then no scheduler).
* **ablate**: a grid (strategies × seeds) with identical budgets and data, no search.

Trials either run in their own process (one worker) or fit a TorchTrainer
with DDP workers; trial drivers take the custom ``trial_driver`` resource so
they never hold a CPU the workers need (:mod:`hardseg.platform.cluster`).

Every run ends in a terminal state (:mod:`hardseg.platform.runs`): a trial closes its own run
(FINISHED or FAILED with the reason); runs of trials that Tune stopped (ASHA, Ctrl-C)
are closed here after ``Tuner.fit`` as KILLED with ``hardseg.stop_reason``.
An interrupted sweep resumes with ``hardseg sweep --resume NAME``
(``Tuner.restore``): the same parent run, each trial's own child run, the
same Optuna study.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from hardseg import keys
from hardseg.config import RayConfig
from hardseg.errors import ConfigError
from hardseg.platform import tracking
from hardseg.platform.cluster import (check_resources, concurrency, connect_ray, precheck_local, trial_need,
                                      trial_resources, wait_for_resources)
from hardseg.platform.multinode import check_multinode
from hardseg.platform.names import check_name
from hardseg.platform.prepare import SWEEPS_DIR, prepare_sweep, resolve_paths
from hardseg.platform.runs import RunCloser, environment_tags, reopen_run
from hardseg.platform.storage import absolute_location, storage_exists, storage_fs, storage_join
from hardseg.platform.sweep_runs import child_runs, close_open_runs, log_summary, start_parent_run
from hardseg.platform.trial import TrialSpec, run_trial
from hardseg.platform.trial_table import TrialTable, stopped_early
from hardseg.platform.tune_state import drop_pending_decisions
from hardseg.search_spaces import SearchSpace
from hardseg.trainables.schedule import EPOCH, length_of, unit_of

STATE_FILE = "hardseg_sweep.json"


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    tracking_uri: str
    optuna_storage: str | None
    statuses: dict[str, int]  # FINISHED / FAILED / KILLED child runs
    best: dict[str, Any] | None
    interrupted: bool = False
    wall_s: float = 0.0
    trial_runs: list[str] = field(default_factory=list)


def optuna_storage_url(cfg, tracking_uri: str) -> str:
    """``tracking.optuna_storage``, else ``optuna.db`` next to a SQLite MLflow store, else ./mlruns/optuna.db."""
    if cfg.tracking.optuna_storage:
        return cfg.tracking.optuna_storage
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    folder = Path.cwd().resolve() / tracking.DEFAULT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


# -- Tune pieces ------------------------------------------------------------------


class RecordingOptunaSearch(OptunaSearch):
    """Tells Optuna what happened, in Optuna's own terms, and records the Tune trial id on the Optuna trial.

    * Every result a trial reports becomes an intermediate value at its ``epoch`` (Tune does not pass
      the result a scheduler stops a trial on to the searcher; :meth:`on_trial_complete` adds it).
    * A trial stopped by the scheduler (it ended without an error before ``max_epochs``) is told
      ``PRUNED``: samplers such as TPE then rank it by its intermediate values at the step it reached,
      never as a finished one (Ray's OptunaSearch would tell ``COMPLETE`` with its early score).
    * A finished trial is ``COMPLETE`` with its last value; a failed one ``FAIL``, even when it
      reported epochs before failing.

    The states live in the Optuna storage, so a resumed sweep (``Tuner.restore``) keeps them.
    """

    def __init__(self, *args, max_epochs: int, unit: str = EPOCH, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs, self.unit = max_epochs, unit  # the trials' length in their unit
        self._reported: dict[str, set[int]] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """The result's metric as an intermediate value at its step (the trials' unit), once per step (single objective only)."""
        ot = self._ot_trials.get(trial_id)
        if ot is None or isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        value, step = result.get(self.metric), result.get(self.unit)
        seen = self.__dict__.setdefault("_reported", {}).setdefault(trial_id, set())  # older pickles lack it
        if value is None or step is None or int(step) in seen:
            return
        ot.report(float(value), int(step))
        seen.add(int(step))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot = self._ot_trials.get(trial_id)
        if ot is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot.set_user_attr("tune_trial_id", trial_id)
        epochs = int(result.get(self.unit, 0)) if result else 0
        ot.set_user_attr("epochs", epochs)
        if error:
            ot.set_user_attr("ended", "failed")
            self._ot_study.tell(ot, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return None
        if result:
            self._report(trial_id, result)  # the result the scheduler stopped it on (or its last one)
        if result and stopped_early(epochs, self.max_epochs):
            ot.set_user_attr("ended", "stopped early")
            self._ot_study.tell(ot, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return None
        ot.set_user_attr("ended", "finished")
        return super().on_trial_complete(trial_id, result, error)


def record_retries(study_name: str, storage_url: str | None, runs: list, retry_session: str | None,
                   metrics: list[str]) -> int:
    """Trials that ``--retry-failed`` reran to the end: Optuna cannot change their FAIL trials, so the
    study gets a COMPLETE copy of each (same parameters, the run's final metrics, user attr ``retry_of``).
    Returns how many were added."""
    if retry_session is None or storage_url is None:
        return 0
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    failed = {t.user_attrs.get("tune_trial_id"): t for t in study.trials if t.state == TrialState.FAIL}
    added = 0
    for run in runs:
        trial = failed.get(run.data.tags.get(keys.TRIAL_ID))
        if (trial is None or run.info.status != "FINISHED" or run.data.tags.get(keys.RETRY_SESSION) != retry_session
                or any(m not in run.data.metrics for m in metrics)):
            continue
        study.add_trial(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions, values=[run.data.metrics[m] for m in metrics],
            user_attrs={**trial.user_attrs, "retry_of": trial.number, "ended": "finished"}))
        added += 1
    return added


def make_searcher(space: SearchSpace, storage_url: str, study_name: str, max_epochs: int, unit: str = EPOCH):
    """OptunaSearch over the space's define-by-run function, with a persistent, seeded study."""
    s = space.sweep
    with warnings.catch_warnings():  # group=True is "experimental" in Optuna 5; it suits conditional spaces
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True)
    storage = optuna.storages.RDBStorage(storage_url)
    metric, mode = (s.metrics, s.modes) if s.is_multi_objective else (s.metric, s.mode)
    return RecordingOptunaSearch(space=space.define_by_run, metric=metric, mode=mode, sampler=sampler,
                                 storage=storage, study_name=study_name, max_epochs=max_epochs, unit=unit)


class StrategyASHAScheduler(ASHAScheduler):
    """ASHA with one bracket per strategy combination (the trial's sampled ``strategies``).

    Plain ASHA compares every trial at a rung with every trial that reached it before, so a strategy
    that starts slowly (HL's branch needs a long schedule before it moves, docs/strategies.md) is
    pruned by faster-starting ones more often than its full-budget rank justifies. Here a trial is
    compared only with trials of its own strategies: each is pruned at its rank within them, and the
    strategies meet at the full budget. Measured in ``benchmarks/asha_bias.py``. A space without a
    ``strategies`` parameter has one bracket: plain ASHA.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._empty_bracket = copy.deepcopy(self._brackets[0])  # before any trial: no rung has values
        self._by_strategy: dict[str, Any] = {}

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)  # checks metric and mode
        key = str(trial.config.get("strategies"))
        if key not in self._by_strategy:
            self._by_strategy[key] = copy.deepcopy(self._empty_bracket)
        self._trial_info[trial.trial_id] = self._by_strategy[key]


def make_scheduler(space: SearchSpace, max_epochs: int, unit: str = EPOCH):
    """ASHA on the trials' progress in their schedule's ``unit`` (``epoch`` or ``iteration``, each
    evaluation's report carries it); ``grace_period`` and ``max_t`` count that unit. With
    ``per_strategy``, one bracket per strategy combination (:class:`StrategyASHAScheduler`)."""
    if space.sweep.scheduler is None:
        return None
    a = space.sweep.scheduler
    kind = StrategyASHAScheduler if a.per_strategy else ASHAScheduler
    return kind(time_attr=unit, metric=space.sweep.metric, mode=space.sweep.mode,
                max_t=a.max_t or max_epochs, grace_period=a.grace_period, reduction_factor=a.reduction_factor)


# -- the driver ---------------------------------------------------------------------
@dataclass
class SweepState:
    """What ``--resume`` needs, saved next to Tune's experiment state."""

    spec: dict[str, Any]
    grid: dict[str, list] | None
    optuna_storage: str | None
    max_epochs: int  # the trials' length in ``unit``
    num_samples: int
    max_concurrent: int
    resources: dict[str, float]
    unit: str = EPOCH  # epoch or iteration (train.iters): Tune's time attribute
    max_failures: int = 0  # Tune's retries of a trial whose worker or node died (ray.max_failures)

    def save(self, folder: str) -> None:
        fs, path = storage_fs(folder)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{STATE_FILE}") as f:
            f.write(json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, folder: str) -> "SweepState":
        fs, path = storage_fs(folder)
        with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
            return cls(**json.loads(f.read().decode()))


def run_sweep(space: SearchSpace, *, config_path: str | None = None, overrides: list[str] | None = None,
              name: str | None = None, grid: dict[str, list] | None = None, kind: str = keys.SWEEP_KIND,
              in_process: bool = True, workdir: Path | None = None,
              parent_tags: dict[str, str] | None = None, configs: dict[str, list[str]] | None = None) -> SweepOutcome:
    """Prepare (:func:`hardseg.platform.prepare.prepare_sweep`, as ``--dry-run`` does), then run the sweep
    (``grid`` set: an ablation grid without a searcher).

    ``parent_tags`` go on the sweep's parent run (``hardseg nightly`` and ``hardseg study`` nest it
    under their own run). ``configs``: named ``--set`` lists a grid's ``config`` key picks
    (:attr:`hardseg.platform.trial.TrialSpec.configs`); each is validated here, before any run.

    Raises:
        ConfigError: an invalid space or config, before any trial or MLflow run starts.
    """
    prepared = prepare_sweep(space, config_path, overrides, name=name, grid=grid, configs=configs, workdir=workdir,
                             precheck=lambda c: precheck_local(trial_need(c, trial_resources(c, in_process)), c.ray))
    name, config_path, base_cfg = prepared.name, prepared.config_path, prepared.base
    overrides = list(overrides or [])
    for line in prepared.warning_lines:  # a setting that cannot act: once
        print(line, flush=True)
    uri = tracking.resolve_tracking_uri(base_cfg.tracking.uri, workdir)
    sweep_root = storage_join(base_cfg.ray.storage_path, SWEEPS_DIR)
    resources = trial_resources(base_cfg, in_process)
    connect_ray(base_cfg)
    need = trial_need(base_cfg, resources)
    missing = check_resources(need)  # a trial the cluster can never place: one line, no run
    num_trials = space.sweep.num_samples if grid is None else _grid_size(grid)
    max_conc = concurrency(base_cfg, resources, space.sweep.max_concurrent, num_trials)
    storage_url = optuna_storage_url(base_cfg, uri) if grid is None else None
    check_multinode(uri, storage_url, base_cfg.ray.storage_path)

    client = tracking.MlflowClient(uri)
    exp_id = tracking.get_or_create_experiment(client, base_cfg.tracking.experiment, uri)
    resolved = [f"data.root={base_cfg.data.root}", f"ray.storage_path={base_cfg.ray.storage_path}/{SWEEPS_DIR}/{name}",
                f"tracking.uri={uri}"]  # evaluations as the config's train.eval_interval says
    unit = unit_of(base_cfg.train)
    extra = {"sweep.name": name, "sweep.max_concurrent": max_conc, "sweep.trial_resources": json.dumps(resources),
             "sweep.unit": unit}
    if storage_url:
        extra["sweep.optuna_storage"] = storage_url
    environment = environment_tags()  # the parent's and every trial's (one git call)
    parent = start_parent_run(client, exp_id, name, kind, space, base_cfg, extra, parent_tags, prepared.data.lineage,
                              environment)
    spec = TrialSpec(sweep_name=name, space=space.to_dict(), config_path=config_path, overrides=overrides + resolved,
                     tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent, metrics=space.sweep.metrics,
                     kind=kind, in_process=in_process, configs=dict(configs or {}),
                     environment=environment)
    state = SweepState(asdict(spec), grid, storage_url, length_of(base_cfg.train), num_trials, max_conc, resources,
                       unit, base_cfg.ray.max_failures)
    state.save(storage_join(sweep_root, name))
    _announce(name, parent, uri, storage_url, max_conc, num_trials, resources, exp_id)
    tuner = _make_tuner(state, sweep_root, space)
    return _fit_and_close(tuner, state, space, client, start=time.perf_counter(),
                          wait=lambda: wait_for_resources(need, missing, base_cfg.ray.resource_timeout_s))


def resume_sweep(name: str, *, storage_path: str | None = None, workdir: Path | None = None,
                 retry_failed: bool = False) -> SweepOutcome:
    """Finish an interrupted sweep: ``Tuner.restore`` with the saved state, same MLflow parent run.

    ``retry_failed`` (``--retry-failed``): also rerun the trials that ended in error, each from its last
    checkpoint in its own child run (reopened; the failed attempt's reason kept in ``hardseg.previous_error``)."""
    base = absolute_location(storage_path or RayConfig().storage_path, (workdir or Path.cwd()).resolve())
    folder = storage_join(base, SWEEPS_DIR, check_name(name))
    if not storage_exists(storage_join(folder, STATE_FILE)):
        raise ConfigError(f"no sweep '{name}' in {storage_join(base, SWEEPS_DIR)}; pass --storage-path where it "
                          f"was run (the config's ray.storage_path)")
    state = SweepState.load(folder)
    spec = TrialSpec(**state.spec)
    if retry_failed:
        spec.retry_session = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        state.spec = asdict(spec)  # _fit_and_close reads the spec from the state
    space = SearchSpace.from_dict(spec.space, source=f"sweep {name}")
    base_cfg = resolve_paths(space.run_config({}, spec.config_path, spec.overrides), workdir)
    connect_ray(base_cfg)
    need = trial_need(base_cfg, state.resources)
    missing = check_resources(need)
    check_multinode(spec.tracking_uri, state.optuna_storage, base)
    client = tracking.MlflowClient(spec.tracking_uri)
    reopen_run(client, spec.parent_run_id)
    _announce(name, spec.parent_run_id, spec.tracking_uri, state.optuna_storage, state.max_concurrent,
              state.num_samples, state.resources, spec.experiment_id)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec, space=space), state.resources)
    drop_pending_decisions(folder)  # a STOP Tune saved for a trial that ended mid-save would stop its rerun
    tuner = tune.Tuner.restore(folder, trainable=trainable, resume_unfinished=True, resume_errored=retry_failed)
    return _fit_and_close(tuner, state, space, client, start=time.perf_counter(),
                          wait=lambda: wait_for_resources(need, missing, base_cfg.ray.resource_timeout_s))


def _grid_size(grid: dict[str, list]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


def _make_tuner(state: SweepState, sweep_root: str, space: SearchSpace):
    spec = TrialSpec(**state.spec)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec, space=space), state.resources)
    s = space.sweep
    # Every trial reuses its actor for the next one (reuse_actors): a new trial skips the process start and
    # the torch/MLflow/hardseg imports (3.5 s a trial on a 2-core box, benchmarks/README.md). A stopped trial
    # that drives a TorchTrainer ends its Train run itself when Tune resets the actor (trial.FitStopper).
    if state.grid is not None:
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=state.max_concurrent,
                                      metric=s.metric, mode=s.mode, reuse_actors=True)
        param_space = {k: tune.grid_search(v) for k, v in state.grid.items()}
    else:
        searcher = make_searcher(space, state.optuna_storage, spec.sweep_name, state.max_epochs, state.unit)
        # metric and mode live on the searcher and the scheduler (Tune's concurrency
        # limiter would not pass TuneConfig's on to the searcher).
        tune_config = tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(space, state.max_epochs, state.unit),
                                      num_samples=s.num_samples, max_concurrent_trials=state.max_concurrent,
                                      reuse_actors=True)
        param_space = {}
    run_config = tune.RunConfig(
        name=spec.sweep_name, storage_path=sweep_root, verbose=0,
        callbacks=[TrialTable(s.metrics[0], state.max_epochs)],
        # a trial whose worker or node dies goes on from its last checkpoint, in the same MLflow run
        # (one that failed in its own code is not trained again: hardseg.platform.trial)
        failure_config=tune.FailureConfig(max_failures=state.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _announce(name, parent, uri, storage_url, max_conc, num_trials, resources, exp_id) -> None:
    print(f"[hardseg] sweep '{name}': {num_trials} trials, up to {max_conc} at once, trial resources {resources}",
          flush=True)
    print(f"[hardseg] MLflow parent run {parent}; UI: {tracking.ui_hint(uri, exp_id)}", flush=True)
    if storage_url:
        print(f"[hardseg] Optuna study '{name}' in {storage_url}; dashboard: optuna-dashboard {storage_url}",
              flush=True)


def _fit_and_close(tuner, state: SweepState, space: SearchSpace, client, start: float,
                   wait=None) -> SweepOutcome:
    spec = TrialSpec(**state.spec)
    resume_hint = f"resume with: hardseg sweep --resume {spec.sweep_name}"
    with RunCloser(client, spec.parent_run_id, resume_hint=resume_hint, wrap_errors=False) as parent:
        if wait is not None:  # an autoscaling cluster's bounded wait for one trial's resources
            wait()
        results = tuner.fit()
        trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []
        interrupted = any(t.status not in ("TERMINATED", "ERROR") for t in trials) or len(trials) < state.num_samples
        close_open_runs(client, spec.experiment_id, spec.parent_run_id, trials, state.max_epochs, interrupted,
                        resume_hint, state.unit)
        record_retries(spec.sweep_name, state.optuna_storage, child_runs(client, spec.experiment_id,
                       spec.parent_run_id), spec.retry_session, space.sweep.metrics)
        info = log_summary(client, spec.experiment_id, spec.parent_run_id, space, state.max_epochs,
                           final=not interrupted)
        wall = time.perf_counter() - start
        if interrupted:
            parent.kill("interrupted")
            print(f"[hardseg] sweep '{spec.sweep_name}' interrupted; {resume_hint}", flush=True)
        else:
            tracking.log_metrics(client, spec.parent_run_id, {keys.WALL_TIME: wall})
    print(f"[hardseg] sweep '{spec.sweep_name}': {info['statuses']} in {wall:.0f}s; best: "
          f"{json.dumps(info['best']) if info['best'] else 'none'}", flush=True)
    print(f"[hardseg] MLflow parent run {spec.parent_run_id}; UI: "
          f"{tracking.ui_hint(spec.tracking_uri, spec.experiment_id)}", flush=True)
    if not interrupted:
        print(f"[hardseg] tables with CIs and paired tests: hardseg report {spec.sweep_name} "
              f"--tracking-uri {spec.tracking_uri}", flush=True)
    return SweepOutcome(spec.sweep_name, spec.parent_run_id, spec.tracking_uri, state.optuna_storage,
                        info["statuses"], info["best"], interrupted, wall,
                        [r.info.run_id for r in child_runs(client, spec.experiment_id, spec.parent_run_id)])


