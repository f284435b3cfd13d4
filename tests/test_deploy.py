"""The scheduling recipes in deploy/ and .github/workflows/: they parse, have the fields their
schedulers require, valid cron expressions, and call ``hardseg nightly`` with a suite that exists."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from hardseg.platform.cli import build_parser
from hardseg.platform.suite import available_suites, load_suite

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]  # minute hour day-of-month month day-of-week
# KubeRay v1.6 field names (ray-operator/apis/ray/v1/rayjob_types.go, raycronjob_types.go)
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
               "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
               "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
RAYCRONJOB_SPEC = {"schedule", "jobTemplate", "suspend", "timeZone"}


def check_cron(expr: str) -> None:
    """Five fields of numbers, '*', ranges a-b, steps /n and lists, each within its field's range."""
    fields = expr.split()
    assert len(fields) == 5, f"cron needs 5 fields, got {expr!r}"
    for text, (lo, hi) in zip(fields, CRON_RANGES):
        for part in text.split(","):
            base, _, step = part.partition("/")
            assert not step or (step.isdigit() and int(step) >= 1), f"bad step in {expr!r}"
            if base == "*":
                continue
            a, _, b = base.partition("-")
            assert a.isdigit() and (not b or b.isdigit()), f"bad field {text!r} in {expr!r}"
            assert lo <= int(a) <= int(b or a) <= hi, f"{text!r} outside {lo}-{hi} in {expr!r}"


def nightly_args(command: str) -> list[str]:
    """The arguments after ``nightly`` of ``hardseg nightly ...`` or ``hardseg submit ... -- nightly ...``."""
    tokens = shlex.split(command)
    exe = next(i for i, t in enumerate(tokens) if Path(t).name == "hardseg")
    rest = tokens[exe + 1:]
    if rest[0] == "submit":
        rest = rest[rest.index("--") + 1:]
    assert rest[0] == "nightly", command
    return rest[1:]


def check_nightly_command(command: str) -> None:
    """The suite exists in the repository (a path, or a shipped suite's name) and loads; the flags parse."""
    args = nightly_args(command)
    suite = args[0]
    path = ROOT / suite if suite not in available_suites() else ROOT / "src/hardseg/platform/suites" / f"{suite}.yaml"
    assert path.is_file(), f"suite {suite} of {command!r} is not in the repository"
    load_suite(path)
    build_parser().parse_args(["nightly", *args])  # SystemExit on an unknown flag


def test_cron_checker_rejects_bad_expressions():
    check_cron("30 2 * * *")
    check_cron("*/15 0-6,22 1-31/2 * 1-5")
    for bad in ("30 2 * *", "60 2 * * *", "30 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8", "a * * * *",
                "5-1 * * * *"):
        with pytest.raises(AssertionError):
            check_cron(bad)


def test_command_checker_rejects_missing_suites_and_flags():
    check_nightly_command("hardseg submit --address http://h:8265 -- nightly nightly --set train.epochs=1")
    for bad in ("hardseg nightly suites/nope.yaml", "hardseg nightly nightly --nope 1", "hardseg sweep quickstart"):
        with pytest.raises((AssertionError, SystemExit)):
            check_nightly_command(bad)


def test_every_yaml_recipe_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + [WORKFLOW]
    assert {f.name for f in files} >= {"rayjob-nightly.yaml", "raycronjob-nightly.yaml", "nightly.yml"}
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), f


def _check_rayjob_spec(spec: dict) -> None:
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    check_nightly_command(spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0  # no retry into a green run
    cluster = spec["rayClusterSpec"]
    ray_minor = ".".join(version("ray").split(".")[:2])
    assert cluster["rayVersion"].startswith(ray_minor + "."), (cluster["rayVersion"], version("ray"))
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        pods.append(group["template"]["spec"])
    for pod in pods:
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert c["image"] and c["name"]
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["key"]  # a shared store, not sqlite
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
            assert any(m["mountPath"] == "/mnt/shared" for m in c["volumeMounts"])  # Tune storage on every node


def test_kuberay_rayjob_runs_the_nightly_and_shuts_down():
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob-nightly.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"].get("name") or job["metadata"].get("generateName")
    _check_rayjob_spec(job["spec"])
    assert "/mnt/shared" in job["spec"]["entrypoint"]


def test_kuberay_raycronjob_schedules_the_same_job():
    cron = yaml.safe_load((DEPLOY / "kuberay" / "raycronjob-nightly.yaml").read_text())
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob-nightly.yaml").read_text())
    assert cron["apiVersion"] == "ray.io/v1" and cron["kind"] == "RayCronJob" and cron["metadata"]["name"]
    spec = cron["spec"]
    assert set(spec) <= RAYCRONJOB_SPEC and {"schedule", "jobTemplate"} <= set(spec)
    check_cron(spec["schedule"])
    _check_rayjob_spec(spec["jobTemplate"])
    assert spec["jobTemplate"] == job["spec"]  # the two recipes run the same thing


def test_cron_line_submits_the_nightly():
    lines = [ln for ln in (DEPLOY / "cron" / "hardseg-nightly.cron").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#") and "=" not in ln.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split(None, 6)  # /etc/cron.d format: 5 time fields, the user, the command
    check_cron(" ".join(fields[:5]))
    assert fields[5] == "hardseg" and "%" not in fields[6]  # cron turns % into newlines
    command = fields[6].split("&&")[-1].split(">>")[0]
    assert "submit" in command and "flock -n" in command
    check_nightly_command(command)


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_systemd_service_and_timer():
    service = _unit(DEPLOY / "systemd" / "hardseg-nightly.service")
    timer = _unit(DEPLOY / "systemd" / "hardseg-nightly.timer")
    assert service["Service"]["Type"] == "oneshot" and service["Unit"]["Description"]
    check_nightly_command(service["Service"]["ExecStart"])
    assert Path(shlex.split(service["Service"]["ExecStart"])[0]).is_absolute()  # systemd requires it
    assert timer["Timer"]["OnCalendar"] and timer["Timer"]["Unit"] == "hardseg-nightly.service"
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_units(tmp_path):
    timer = _unit(DEPLOY / "systemd" / "hardseg-nightly.timer")
    cal = subprocess.run(["systemd-analyze", "calendar", timer["Timer"]["OnCalendar"]], capture_output=True, text=True)
    assert cal.returncode == 0, cal.stderr
    # verify needs ExecStart to exist: point the unit at this checkout's hardseg
    exe = Path(sys.executable).parent / "hardseg"
    text = (DEPLOY / "systemd" / "hardseg-nightly.service").read_text()
    text = text.replace("/opt/hardseg/.venv/bin/hardseg", str(exe)).replace("/opt/hardseg", str(ROOT))
    text = text.replace("User=hardseg", "User=root").replace("EnvironmentFile=/", "EnvironmentFile=-/")
    (tmp_path / "hardseg-nightly.service").write_text(text)
    shutil.copy(DEPLOY / "systemd" / "hardseg-nightly.timer", tmp_path)
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "hardseg-nightly.service"),
                          str(tmp_path / "hardseg-nightly.timer")], capture_output=True, text=True)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if "hardseg-nightly" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


def test_ci_workflow_schedule():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the key 'on' as True
    assert on["schedule"] and "workflow_dispatch" in on
    for item in on["schedule"]:
        check_cron(item["cron"])
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    runs = [s["run"] for s in steps if "hardseg submit" in s.get("run", "")]
    assert len(runs) == 1
    check_nightly_command(runs[0])
