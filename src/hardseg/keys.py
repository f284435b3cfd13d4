"""The names hardseg writes into MLflow and reads back: run tags, run kinds and metric prefixes.

The platform writes these keys (:mod:`hardseg.platform.runs` opens and closes
every run); reports read them. Neither spells a key as a bare string, so a key
is renamed here and nowhere else. This module imports nothing, so any layer
may use it.
"""

from __future__ import annotations

# -- MLflow's own tags ----------------------------------------------------------------------------------
PARENT = "mlflow.parentRunId"  # a child run's parent (sweep -> trial, study/nightly -> sweep)
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # the run's description in the UI
EXPERIMENT_KIND = "mlflow.experimentKind"  # experiment tag: MLflow 3's UI opens the runs table with it
EXPERIMENT_KIND_VALUE = "custom_model_development"

# -- what a run is --------------------------------------------------------------------------------------
KIND = "hardseg.kind"  # one of the kinds below; a sweep's trials are f"{kind}{TRIAL_SUFFIX}"
TRAIN, SWEEP_KIND, ABLATION, STUDY_KIND, NIGHTLY_KIND = "train", "sweep", "ablation", "study", "nightly"
TRIAL_SUFFIX = "-trial"
PARENT_KINDS = (SWEEP_KIND, ABLATION)  # kinds whose children are trials a report compares
CLI = "hardseg.cli"  # the command line that made the run
GIT_COMMIT = "git_commit"  # of the working directory the command ran in

# -- how a run ended ------------------------------------------------------------------------------------
ERROR = "hardseg.error"  # FAILED (or an interrupted parent): why, on one line
STOP_REASON = "hardseg.stop_reason"  # KILLED: who stopped it and how to resume
RESUMED = "hardseg.resumed"  # a resumed sweep or study: when
RESTARTS = "hardseg.restarts"  # a trial reopened by a restored sweep: how often
RESUMED_FROM = "hardseg.resumed_from_epoch"  # a retried trial: the checkpoint's epoch it went on from
PREVIOUS_ERROR = "hardseg.previous_error"  # a trial rerun by sweep --retry-failed: why its last attempt failed
RETRY_SESSION = "hardseg.retry_session"  # the sweep --retry-failed that reran a trial (one rerun per session)
MODEL_LOG_ERROR = "hardseg.model_log_error"  # the MLflow model could not be logged (the run stands)
WARNING_PREFIX = "hardseg.warning."  # hardseg.warning.<strategy>: a setting that defeats the strategy

# A worker's report that carries a failure's message instead of metrics: a Ray Train worker reports its
# NonFiniteLoss this way (an exception would make Ray retry the run), the MLflow logger turns it into
# the hardseg.error tag, and the driver raises NonFiniteLoss again (hardseg.errors).
FAILURE = "error"

# -- what a training run trained ------------------------------------------------------------------------
STRATEGIES = "hardseg.strategies"  # "+"-joined names
SEED = "hardseg.seed"
MODEL = "hardseg.model"
DATASET = "hardseg.dataset"
ENCODER, PRETRAINED, NORMALISATION = "hardseg.encoder", "hardseg.pretrained", "hardseg.normalisation"
INIT_FROM_URI = "hardseg.init_from.uri"
# what a weight file gave (models/pretrained.py): hardseg.<pretrained|init_from>.<source|loaded|missing_keys|...>
WEIGHTS_REPORT = "hardseg.{setting}.{field}"
SELECTION_SPLIT, TEST_SPLIT = "hardseg.selection_split", "hardseg.test_split"

# -- sweeps and their trials ----------------------------------------------------------------------------
SWEEP = "hardseg.sweep"  # a parent run's sweep name (also on studies, whose name it is)
TRIAL_ID = "hardseg.trial_id"  # a child run's Tune trial id
NODE_ID, HOSTNAME = "hardseg.node_id", "hardseg.hostname"  # where a trial ran
BEST_RUN_ID, BEST_TRIAL = "hardseg.best_run_id", "hardseg.best_trial"
SAMPLED_PREFIX = "sampled."  # sampled.<path>: a trial's sampled value (tag)
SPACE_PREFIX = "space."  # space.<path>: a parent's search-space parameter (param)
BEST_PARAM_PREFIX = "best."  # best.<path>: the best trial's sampled value on the parent (param)

# -- studies and nightlies ------------------------------------------------------------------------------
STUDY = "hardseg.study"  # a stage's sweep parent: the study's run id
STAGE = "hardseg.stage"
SUITE = "hardseg.suite"
NIGHTLY_RUN = "hardseg.nightly_run_id"  # on each nightly cell's ablation parent run
NIGHTLY_MODEL, NIGHTLY_DATASET = "hardseg.nightly.model", "hardseg.nightly.dataset"
NIGHTLY_DATE, PREVIOUS_NIGHTLY, REGRESSIONS = "hardseg.nightly_date", "hardseg.previous_nightly", "hardseg.regressions"

# -- metric names: "<prefix><metric>" -------------------------------------------------------------------
TRAIN_PREFIX = "train/"  # training losses and throughput per report (epoch or interval)
ITER_PREFIX = "iter/"  # every train.log_interval iterations (step = iteration): loss terms, lr/<group>, times, memory
VISUALS = "visuals"  # a log's prediction panels as {name: PNG bytes} (not a metric)
VAL_PREFIX = "val/"  # the validation split: model selection, sweeps
TEST_PREFIX = "test/"  # the held-out split: reported, never used to select
BEST_PREFIX = "best/"  # the best epoch's val metrics
ROBUSTNESS_PREFIX = "robustness/"  # robustness/<family>/<metric> (hardseg.robustness)
CORRUPT_PREFIX = "corrupt."  # corruption domains: corrupt.<corruption>-<severity>/<metric>
WALL_TIME = "wall_time_s"
# metric prefixes that are not an evaluation domain (every other "<name>/<metric>" is one)
NOT_DOMAIN_PREFIXES = (VAL_PREFIX, BEST_PREFIX, TRAIN_PREFIX, ROBUSTNESS_PREFIX, TEST_PREFIX, ITER_PREFIX)

# -- metric names after a prefix: "<prefix><name>" (trainables/metrics.py writes them, reports read them) --
MIOU, MACC, AACC = "miou", "macc", "pixel_acc"  # mmsegmentation's mIoU, mAcc (mean class recall) and aAcc
BAND_IOU, SMALL_IOU, THIN_IOU = "band_iou", "small_iou", "thin_iou"  # hard pixels: boundary band, small, thin classes
SUMMARY_METRICS = (MIOU, BAND_IOU, SMALL_IOU, THIN_IOU)  # what a run's summary line and a report's table lead with
VAL_MIOU = VAL_PREFIX + MIOU  # the default metric: the best epoch's, and that of sweeps, studies, suites and reports
IOU_PREFIX, ACC_PREFIX = "iou/", "acc/"  # per class: iou/<class>, acc/<class> (mmseg's per-class IoU and Acc)
