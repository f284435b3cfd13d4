"""The one run lifecycle (hardseg.platform.runs): how every run is opened and how it ends."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.errors import ConfigError, TrainingError, one_line
from hardseg.platform import runs, tracking


@pytest.fixture(params=["sqlite", "server"])
def store(request, sqlite_uri):
    """A SQLite store and a real ``mlflow server`` (which accepts only string tag values)."""
    uri = sqlite_uri if request.param == "sqlite" else request.getfixturevalue("mlflow_server")
    client = MlflowClient(uri)
    return client, tracking.get_or_create_experiment(client, f"runs-{request.param}", uri)


def _open(client, exp_id, **kw) -> str:
    return runs.open_run(client, exp_id, "r", keys.TRAIN, **kw)


def test_open_run_records_kind_command_commit_versions_and_what_it_was_given(store, tmp_path):
    client, exp_id = store
    parent = _open(client, exp_id)
    run_id = runs.open_run(client, exp_id, "hl · seed 1", "ablation-trial", parent=parent,
                           tags={"sampled.train.lr": 0.003, keys.SEED: 1}, params={"train.lr": 0.003},
                           texts={"config.yaml": "seed: 1\n"})
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags[keys.KIND] == "ablation-trial" and tags[keys.PARENT] == parent and tags[keys.RUN_NAME] == "hl · seed 1"
    assert tags["sampled.train.lr"] == "0.003" and tags[keys.SEED] == "1"  # strings, also for a server
    assert tags[keys.CLI].startswith("hardseg") and tags[keys.GIT_COMMIT] and tags["torch_version"]
    assert run.data.params == {"train.lr": "0.003"}
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    assert run.info.status == "RUNNING"


def test_trials_take_the_drivers_environment(store):
    client, exp_id = store
    run_id = _open(client, exp_id, environment={keys.GIT_COMMIT: "abc", keys.CLI: "hardseg sweep x"})
    tags = client.get_run(run_id).data.tags
    assert tags[keys.GIT_COMMIT] == "abc" and tags[keys.CLI] == "hardseg sweep x" and "torch_version" not in tags


def test_closer_finished_failed_and_killed_with_their_reason_tags(store):
    client, exp_id = store
    ok = _open(client, exp_id)
    with runs.RunCloser(client, ok):
        pass
    bad_input = _open(client, exp_id)
    with pytest.raises(ConfigError), runs.RunCloser(client, bad_input):
        raise ConfigError("train.lr: must be > 0")
    crash = _open(client, exp_id)
    with pytest.raises(TrainingError, match=f"run {crash} failed: ValueError: boom"), runs.RunCloser(client, crash):
        raise RuntimeError("outer") from ValueError("boom")
    raw = _open(client, exp_id)
    with pytest.raises(RuntimeError), runs.RunCloser(client, raw, resume_hint="resume with: x", wrap_errors=False):
        raise RuntimeError("lost the cluster")
    ctrl_c = _open(client, exp_id)
    with pytest.raises(KeyboardInterrupt), runs.RunCloser(client, ctrl_c, resume_hint="resume with: x"):
        raise KeyboardInterrupt
    stopped = _open(client, exp_id)
    with pytest.raises(SystemExit), runs.RunCloser(client, stopped):
        raise runs.TrialStopped("stopped by the scheduler after epoch 1 of 3")
    killed = _open(client, exp_id)
    with runs.RunCloser(client, killed, resume_hint="resume with: x") as closer:
        closer.kill("interrupted")

    def ended(run_id):
        run = client.get_run(run_id)
        return run.info.status, run.data.tags.get(keys.ERROR), run.data.tags.get(keys.STOP_REASON)

    assert ended(ok) == ("FINISHED", None, None)
    assert ended(bad_input) == ("FAILED", "train.lr: must be > 0", None)
    assert ended(crash) == ("FAILED", "ValueError: boom", None)
    assert ended(raw) == ("FAILED", "RuntimeError: lost the cluster; resume with: x", None)
    assert ended(ctrl_c) == ("KILLED", None, "interrupted (Ctrl-C); resume with: x")
    assert ended(stopped) == ("KILLED", None, "stopped by the scheduler after epoch 1 of 3")
    assert ended(killed) == ("KILLED", None, "interrupted; resume with: x")


def test_close_run_refuses_a_status_that_is_not_terminal(store):
    client, exp_id = store
    with pytest.raises(ValueError, match="RUNNING"):
        runs.close_run(client, _open(client, exp_id), "RUNNING")


def test_reopen_marks_running_with_a_resumed_tag(store):
    client, exp_id = store
    run_id = _open(client, exp_id)
    runs.close_run(client, run_id, "KILLED", "interrupted")
    runs.reopen_run(client, run_id)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[keys.RESUMED]


def test_one_line_is_how_any_exception_is_told():
    """errors.one_line, the one helper for plugin import failures, read errors and a failed run's reason."""
    assert one_line(ImportError("missing dependency\nsecond line")) == "ImportError: missing dependency"
    assert one_line(OSError("  \n  disk gone  \nmore"), typed=False) == "disk gone  "
    assert one_line(KeyError()) == "KeyError" and one_line(ValueError(""), typed=False) == "ValueError"
    worker = RuntimeError("ray::train() (pid=1)\n  File \"x.py\", line 1\nValueError: boom\n\n")
    assert one_line(RuntimeError("outer"), innermost=True) == "RuntimeError: outer"
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = worker
    assert one_line(wrapped, innermost=True) == "RuntimeError: ValueError: boom"  # the traceback's last line
    assert len(one_line(ValueError("x" * 900), innermost=True)) == 500
