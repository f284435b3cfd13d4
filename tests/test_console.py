"""What the commands print: Ray's console knobs, ``--dry-run``, one-line errors, the epoch bar, run names."""

from __future__ import annotations

import io
import logging
import os

import pytest

from hardseg.platform import console
from hardseg.platform.cli import main as cli
from hardseg.platform.names import trial_run_name
from hardseg.trainables import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_env_drops_colour_only_off_a_terminal_and_never_overrides(monkeypatch):
    assert console.console_env(io.StringIO())["RAY_COLOR_PREFIX"] == "0"
    assert "RAY_COLOR_PREFIX" not in console.console_env(_Tty())
    for env in (console.console_env(io.StringIO()), console.console_env(_Tty())):
        assert env["RAY_AIR_NEW_OUTPUT"] == "0" and env["RAY_DEDUP_LOGS"] == "0"
    monkeypatch.setenv("RAY_DEDUP_LOGS", "1")
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    console.quiet_console(io.StringIO())
    assert os.environ["RAY_DEDUP_LOGS"] == "1" and os.environ["RAY_COLOR_PREFIX"] == "0"


def test_ray_notices_are_dropped_and_other_warnings_kept(caplog):
    console.quiet_console(io.StringIO())
    token = "ray._private.authentication.authentication_token_setup"
    with caplog.at_level(logging.WARNING):
        logging.getLogger(token).warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=...")
        logging.getLogger(token).warning("Token authentication is disabled for this Ray cluster. Anyone with ...")
        logging.getLogger("ray.tune.tune").warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune")
        logging.getLogger("ray.tune.tune").warning("Trials did not complete: [x]")
    assert [r.getMessage()[:30] for r in caplog.records] == ["Token authentication is disabl",
                                                             "Trials did not complete: [x]"]


def test_job_sdk_placement_group_cleaner_and_optuna_notices_are_dropped_in_every_ray_worker(caplog):
    """The loggers and messages of Ray 2.60 / Optuna 5 (console module docstring); the same filter runs in
    each Ray worker process, as its worker_process_setup_hook."""
    import importlib

    console.quiet_console(io.StringIO())
    notices = {"ray.dashboard.modules.job.sdk": "WebSocket closed for job raysubmit_x with close code 1000",
               "ray.train.v2._internal.execution.controller.placement_group_cleaner":
                   "Detected that the Ray Train controller actor (ab12) is dead. Cleaning up placement group = [x]",
               "optuna.storages._rdb.storage": "A new study created in RDB with name: quickstart-1"}
    with caplog.at_level(logging.INFO):
        for name, message in notices.items():
            logging.getLogger(name).warning(message)
            logging.getLogger(name).warning("kept: %s", name)
    assert [r.getMessage() for r in caplog.records] == [f"kept: {n}" for n in notices]
    module, _, attr = console.ray_runtime_env()["worker_process_setup_hook"].rpartition(".")
    assert getattr(importlib.import_module(module), attr) is console.quiet_console
    assert console.console_env(io.StringIO())["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


def test_epoch_bar_only_when_a_factory_is_installed():
    loader = [1, 2, 3]
    assert progress.epoch_bar(loader, 0, 2) is loader
    seen = {}

    class Bar:
        def __init__(self, iterable, desc, total):
            seen.update(desc=desc, total=total)
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def close(self):
            seen["closed"] = True

    factory = Bar

    progress.set_bar_factory(factory)
    try:
        assert list(progress.epoch_bar(loader, 1, 4)) == loader
        assert seen == {"desc": "epoch 2/4", "total": 3, "closed": True}
    finally:
        progress.set_bar_factory(None)
    assert console.progress_bar_wanted("train", _Tty()) and not console.progress_bar_wanted("train", io.StringIO())
    assert not console.progress_bar_wanted("ablate", _Tty())


def test_trial_runs_are_named_by_what_differs():
    assert trial_run_name({"strategies": "hl", "seed": 1}) == "hl · seed 1"
    assert trial_run_name({"strategies": "hl+coarse_to_fine", "seed": 0}) == "hl+coarse_to_fine · seed 0"
    assert trial_run_name({"strategies": "hl", "train.lr": 0.003141, "strategy_params.hl.lam": 0.0301}) \
        == "hl lam=0.03 lr=0.0031"
    assert trial_run_name({"train.lr": 0.1}) == "lr=0.1"


def _one_line_error(capsys, argv, *needles) -> None:
    rc = cli(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("argv", [["train"], ["sweep", "quickstart"], ["ablate", "--strategies", "ce"],
                                  ["report", "x"], ["demo"], ["nightly", "nightly"]])
def test_unsupported_tracking_uri_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, [*argv, "--tracking-uri", "ftp://example.org/runs"], "ftp://example.org/runs",
                    "sqlite:///")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "s3://bucket/runs")
    _one_line_error(capsys, argv, "s3://bucket/runs")
    assert list(tmp_path.iterdir()) == []


def test_dry_run_prints_config_and_trials_and_starts_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["train", "--dry-run", "--set", "strategies=[hl]", "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "strategies:\n- hl\n" in out and "epochs: 3" in out and "dry run: config valid" in out
    assert cli(["ablate", "--strategies", "ce", "hl", "--seeds", "0", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# 4 trials" in out and all(f"{s} · seed {k}" in out for s in ("ce", "hl") for k in (0, 1))
    assert cli(["sweep", "quickstart", "--dry-run", "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "# 6 trials sampled by Optuna TPE" in out and "strategy_params.hl.lr_mult" in out
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no Tune folder, no generated data
    _one_line_error(capsys, ["ablate", "--strategies", "ce", "nonsense", "--dry-run"], "nonsense")
    _one_line_error(capsys, ["sweep", "quickstart", "--dry-run", "--set", "train.lr=0.1"], "train.lr")
    _one_line_error(capsys, ["ablate", "--strategies", "ce", "--name", "bad/name", "--dry-run"], "bad/name")
    _one_line_error(capsys, ["train", "--dry-run", "--set", "tracking.uri=ftp://host/x"], "ftp://host/x")
    assert list(tmp_path.iterdir()) == []


HL_LAM_WARNING = ("[hardseg] warning: 'strategy_params.hl.lam' has no effect under train.optimizer=adamw (its "
                  "per-parameter step normalisation cancels λ, docs/strategies.md §1)")


def test_a_setting_that_cannot_act_is_one_warning_line_in_every_dry_run_and_a_run_tag(capsys, tmp_path, monkeypatch):
    """HL's λ under the default AdamW: one line in train/sweep/ablate --dry-run (train and sweep print the same
    lines through hardseg.platform.runs.warning_lines) and the hardseg.warning.hl tag every run gets."""
    from hardseg.config import load_config
    from hardseg.platform.runs import training_tags

    monkeypatch.chdir(tmp_path)
    lam = ["--set", "strategies=[hl]", "--set", "strategy_params.hl.lam=0.5"]
    assert cli(["train", "--dry-run", *lam]) == 0
    warned = [ln for ln in capsys.readouterr().out.splitlines() if "warning:" in ln]
    assert len(warned) == 1 and warned[0].startswith(HL_LAM_WARNING), warned
    assert cli(["train", "--dry-run", *lam, "--set", "train.optimizer=sgd"]) == 0  # λ acts under SGD
    assert cli(["train", "--dry-run", "--set", "strategies=[hl]", "--set", "strategy_params.hl.lr_mult=5"]) == 0
    assert "warning:" not in capsys.readouterr().out
    assert cli(["ablate", "--strategies", "ce", "hl", "hl+coarse_to_fine", "--seeds", "0", "1", "--dry-run",
                "--set", "strategy_params.hl.lam=0.5"]) == 0
    warned = [ln for ln in capsys.readouterr().out.splitlines() if "warning:" in ln]
    assert len(warned) == 1 and warned[0].startswith(HL_LAM_WARNING), warned  # once, not per trial
    assert cli(["sweep", "hl", "--dry-run", "--set", "train.optimizer=adamw"]) == 0  # the preset searches λ
    warned = [ln for ln in capsys.readouterr().out.splitlines() if "warning:" in ln]
    assert len(warned) == 1 and warned[0].startswith(HL_LAM_WARNING), warned
    assert cli(["sweep", "hl", "--dry-run"]) == 0  # under the preset's SGD: nothing to say
    assert "warning:" not in capsys.readouterr().out
    tags = training_tags(load_config(None, ["strategies=[hl]", "strategy_params.hl.lam=0.5"]))
    assert HL_LAM_WARNING.startswith("[hardseg] warning: " + tags["hardseg.warning.hl"][:60])
    assert "hardseg.warning.hl" not in training_tags(load_config(None, ["strategies=[hl]"]))  # λ left at default
    assert list(tmp_path.iterdir()) == []
