"""One sweep trial: a Ray Tune function trainable that trains one HardsegConfig.

Each trial is one MLflow child run of the sweep's parent run (tag
``mlflow.parentRunId``), found again by its Tune trial id when a resumed
sweep restarts the trial, so a trial never gets two runs. Training runs

* **in the trial's own process** when the trial has one worker (no
  TorchTrainer launch: the per-trial overhead is Tune's alone), checkpoints
  reported to Tune so a restored sweep resumes the trial's epochs;
* **as a TorchTrainer** with ``ray.num_workers`` DDP workers otherwise; its
  Train run is named ``train-<trial id>`` so a restored trial resumes from
  its last Train checkpoint.

A failing trial (exception, NaN/inf loss) closes its run FAILED with the
reason in ``hardseg.error`` and raises, so Tune marks it ERROR and Optuna
FAIL; the sweep goes on. A trial stopped by the scheduler closes its run KILLED when
Tune resets its actor for the next trial (:class:`FitStopper` ends a TorchTrainer's run);
one whose actor Tune kills instead runs no more code, and the sweep driver closes its run
(``sweep.close_open_runs``).

Failures Tune retries (``FailureConfig(max_failures=ray.max_failures)``): a trial whose worker
process or node died left its run RUNNING; Tune starts it again from its last checkpoint (on
any node) and the trial reopens the same run (``hardseg.restarts``, ``hardseg.resumed_from_epoch``).
A trial that closed its run FAILED itself met an error of its own code or data, which a retry
would meet again: the retry raises the recorded reason at once, without training. Only
``hardseg sweep --resume NAME --retry-failed`` reruns such a trial, once per such session, in
the same run (the failed attempt's reason kept in ``hardseg.previous_error``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune

from hardseg import keys, timeline
from hardseg.errors import HardsegError, NonFiniteLoss
from hardseg.platform import runs, tracking, worker_groups
from hardseg.platform.names import trial_run_name
from hardseg.platform.runs import RunCloser, TrialStopped
from hardseg.platform.trainer import log_result, make_trainer
from hardseg.platform.trial_callbacks import TuneForwarder, for_tune, numeric
from hardseg.search_spaces import SearchSpace
from hardseg.platform.storage import storage_join
from hardseg.trainables.schedule import length_of, unit_of

CONFIG_KEY = "config"  # a grid key naming one of TrialSpec.configs (tag sampled.config)


@dataclass
class TrialSpec:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    sweep_name: str
    space: dict[str, Any]  # SearchSpace.to_dict(), for --resume (the trials get the SearchSpace itself)
    config_path: str | None
    overrides: list[str]  # user --set overrides, then resolved paths and tracking
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metrics: list[str]  # the searcher's / scheduler's metrics: only reports that have them go to Tune
    kind: str = keys.SWEEP_KIND  # or keys.ABLATION
    in_process: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)
    # Named configurations a grid picks with its ``config`` key ({label: [KEY=VALUE, ...]}), applied
    # after ``overrides``: ``hardseg study`` confirms searched configurations this way.
    configs: dict[str, list[str]] = field(default_factory=dict)
    # The driver's command line, git commit and versions (runs.environment_tags), for every trial's run.
    environment: dict[str, str] = field(default_factory=dict)
    # Set by ``sweep --resume --retry-failed``: an id of that session; a trial whose run FAILED is rerun
    # once in it (tag hardseg.retry_session), a FAILED run of any other session re-raises its reason.
    retry_session: str | None = None


def find_trial_run(client: tracking.MlflowClient, spec: TrialSpec, trial_id: str) -> str | None:
    found = client.search_runs([spec.experiment_id], filter_string=(
        f"tags.`{keys.PARENT}` = '{spec.parent_run_id}' and tags.`{keys.TRIAL_ID}` = '{trial_id}'"), max_results=2)
    return found[0].info.run_id if found else None


def finished_run_metrics(client: tracking.MlflowClient, spec: TrialSpec, trial_id: str) -> dict[str, float] | None:
    """The final metrics of the trial's run if it already FINISHED, else None. A trial closes its run
    before its last report to Tune, so a sweep stopped in between restores the trial as unfinished;
    it then reports these metrics instead of training again (a resumed sweep repeats no finished trial)."""
    run_id = find_trial_run(client, spec, trial_id)
    if run_id is None:
        return None
    run = client.get_run(run_id)
    return numeric(dict(run.data.metrics)) if run.info.status == "FINISHED" else None


def node_tags() -> dict[str, str]:
    """Where the trial runs: its Ray node id and host name (tags ``hardseg.node_id``, ``hardseg.hostname``)."""
    return {keys.NODE_ID: ray.get_runtime_context().get_node_id(), keys.HOSTNAME: socket.gethostname()}


class RecordedFailure(HardsegError):
    """A Tune retry of a trial whose own code failed: the recorded reason, raised again without training."""


def open_trial_run(client: tracking.MlflowClient, spec: TrialSpec, cfg, sampled: dict[str, Any],
                   trial_id: str, config_yaml: str) -> str:
    """The trial's child run: reopened if Tune restarts the trial (a restored sweep, a retry after its
    worker or node died, ``--retry-failed``), else opened (see the module docstring for FAILED runs)."""
    run_id = find_trial_run(client, spec, trial_id)
    if run_id is not None:
        run = client.get_run(run_id)
        tags = run.data.tags
        restarts = int(tags.get(keys.RESTARTS, "0")) + 1
        again = {keys.RESTARTS: str(restarts), **node_tags()}
        if run.info.status == "FAILED":
            if spec.retry_session is None or tags.get(keys.RETRY_SESSION) == spec.retry_session:
                raise RecordedFailure(tags.get(keys.ERROR, "the trial failed before"))
            again.update({keys.RETRY_SESSION: spec.retry_session, keys.PREVIOUS_ERROR: tags.get(keys.ERROR, "")})
            if keys.ERROR in tags:
                client.delete_tag(run_id, keys.ERROR)
        runs.reopen_run(client, run_id, again)
        return run_id
    tags = {**runs.training_tags(cfg), **spec.extra_tags, **node_tags(), keys.SWEEP: spec.sweep_name,
            keys.TRIAL_ID: trial_id, **{f"{keys.SAMPLED_PREFIX}{k}": v for k, v in sampled.items()}}
    return runs.open_run(client, spec.experiment_id, trial_run_name(sampled), f"{spec.kind}{keys.TRIAL_SUFFIX}",
                         tags=tags, params=cfg.flat(), texts={"config.yaml": config_yaml}, parent=spec.parent_run_id,
                         environment=spec.environment)


def last_epoch(client: tracking.MlflowClient, run_id: str) -> int:
    history = client.get_metric_history(run_id, f"{keys.TRAIN_PREFIX}loss")
    return max((m.step for m in history), default=0)


def scheduler_stop_point(client: tracking.MlflowClient, run_id: str, length: int) -> int:
    """The epoch (or iteration) after which the scheduler stopped a trial, for its stop reason: the last one the
    run logged, short of the run's ``length``. Tune never sees the final report (:func:`for_tune`), so it cannot
    have decided on it; a final report logged anyway raced the stop (its run's reports reach MLflow from the
    driver while Tune decides, :class:`hardseg.platform.trainer.ReportLogger`)."""
    return min(last_epoch(client, run_id), length - 1)


def stopped_by_tune(err: BaseException) -> bool:
    """Tune stopping a trial removes its placement group, which kills the Train controller inside it."""
    while err is not None:
        if "placement group was removed" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


class FitStopper(threading.Thread):
    """Stops the trial's Train run when Tune stops the trial (``with FitStopper(run_name) as stopper``).

    The sweep reuses a trial's actor for the next trial (:func:`hardseg.platform.sweep._make_tuner`): a trial its
    scheduler stopped is not killed but reset for the next one, and the reset waits for this trial's function to
    return, which waits in ``TorchTrainer.fit``. This thread sees Tune's stop request (the trial session's stop
    event) and kills the run's controller (:func:`hardseg.platform.worker_groups.kill_controller`; its workers die
    with it), so ``fit`` raises and the trial closes its run KILLED. ``stopped`` is set once it did.
    """

    def __init__(self, run_name: str) -> None:
        super().__init__(name="hardseg-fit-stopper", daemon=True)
        # local: Ray Tune's function-trainable session (loaded with Tune already): its stop event is set by reset/stop
        from ray.train._internal.session import get_session

        self.run_name, self.tune_stop = run_name, get_session().stop_event
        self.fit_done, self.stopped = threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.fit_done.is_set():
            if not self.tune_stop.wait(0.2):
                continue
            # the controller records itself as it starts: until then, and until the fit ends, try again
            if not self.fit_done.is_set() and worker_groups.kill_controller(self.run_name):
                self.stopped.set()
                return

    def __enter__(self) -> "FitStopper":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fit_done.set()
        self.join()


def run_trial(sampled: dict[str, Any], spec: TrialSpec, space: SearchSpace) -> None:
    """The Tune function trainable (``tune.with_parameters(run_trial, spec=..., space=...)``): ``sampled`` (Optuna's
    values by dotted path, or a grid cell) applied once to the space's typed tree (:meth:`SearchSpace.run_config`)."""
    for name in ("ray.tune", "ray.train"):  # one "Checkpoint successfully created" line per epoch otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune's reset of this (reused) actor waits this long for a stopped trial's function to return; a trial
    # driving a TorchTrainer needs more than Tune's 2 s to kill its controller and close its run (FitStopper)
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    timeline.mark("trial: process started", t=timeline.process_start())
    timeline.mark("trial: function started")
    trial_id = tune.get_context().get_trial_id()
    chosen = spec.configs[sampled[CONFIG_KEY]] if CONFIG_KEY in sampled else []
    cfg = space.run_config({k: v for k, v in sampled.items() if k != CONFIG_KEY}, spec.config_path,
                           [*spec.overrides, *chosen, f"name={spec.sweep_name}-{trial_id}"])
    config_yaml = runs.config_text(cfg)
    client = tracking.MlflowClient(spec.tracking_uri)
    done = finished_run_metrics(client, spec, trial_id)
    if done is not None:  # restored after its run FINISHED (Ctrl-C before Tune saw the final report)
        tune.report({**done, unit_of(cfg.train): length_of(cfg.train)})
        return
    try:
        run_id = open_trial_run(client, spec, cfg, sampled, trial_id, config_yaml)
    except RecordedFailure as err:
        print(f"[hardseg] trial {trial_id} failed before ({err}); not retried (rerun it with "
              f"'hardseg sweep --resume {spec.sweep_name} --retry-failed')", flush=True)
        raise
    timeline.mark("trial: MLflow run opened")
    epochs, unit = length_of(cfg.train), unit_of(cfg.train)
    start = time.perf_counter()
    with RunCloser(client, run_id):
        if cfg.ray.num_workers == 1 and spec.in_process:
            final = _fit_in_process(cfg, spec, client, run_id, config_yaml, start)
        else:
            trainer = make_trainer(cfg, run_id, spec.tracking_uri, name=f"train-{trial_id}",
                                   callbacks=[TuneForwarder(spec.metrics, epochs, unit)])
            timeline.mark("trial: fit")
            runs.import_export_meanwhile(cfg)  # this process waits for the fit: the export's imports overlap it
            try:
                with FitStopper(f"train-{trial_id}") as stopper:
                    result = trainer.fit()
            except Exception as err:
                if stopper.stopped.is_set() or stopped_by_tune(err):
                    raise TrialStopped(f"stopped by the scheduler after {unit} "
                                       f"{scheduler_stop_point(client, run_id, epochs)} of {epochs}") from None
                raise
            runs.raise_if_run_failed(client, run_id)
            timeline.mark("trial: fit returned")
            final = numeric(dict(result.metrics or {}))
            log_result(client, run_id, result, config_yaml, time.perf_counter() - start)
            timeline.mark("trial: model exported and uploaded")
    timeline.mark("trial: run closed")
    tune.report(final)  # the run is closed: Tune may stop the trial now


def _fit_in_process(cfg, spec: TrialSpec, client: tracking.MlflowClient, run_id: str, config_yaml: str,
                    start: float) -> dict[str, Any]:
    """Train in the trial's process (:class:`~hardseg.platform.tune_session.TuneSession`: each epoch to
    MLflow and, with its checkpoint, to Tune), then log the last checkpoint's final artifacts.

    Returns the final epoch's metrics (for Tune, once the run is closed). A non-finite loss
    raises NonFiniteLoss with the same message as a TorchTrainer run's (``raise_if_run_failed``).
    """
    # Only a trial that trains in its own process needs the loop; one that drives a TorchTrainer leaves
    # it to its workers.
    # local: the loop (torchvision, the data and model code) costs seconds to import (issue 26)
    from hardseg.platform.tune_session import TuneSession
    from hardseg.trainables.loop import fit

    epochs, unit = length_of(cfg.train), unit_of(cfg.train)
    logger = tracking.MLflowEpochLogger(spec.tracking_uri, run_id)
    best_dir = storage_join(cfg.ray.storage_path, f"best-{tune.get_context().get_trial_id()}")
    with TuneSession(logger, lambda m: for_tune(m, spec.metrics, epochs, unit), epochs,
                     device="cuda" if cfg.ray.use_gpu else "cpu", best_dir=best_dir, unit=unit) as session:
        try:
            fit(cfg, session)
        except NonFiniteLoss as err:
            raise NonFiniteLoss.of_run(run_id, str(err)) from None
        runs.log_checkpoint_artifacts(client, run_id, session.kept, config_yaml, time.perf_counter() - start)
    return numeric(session.last)
