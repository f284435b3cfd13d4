"""The cluster path: ``hardseg submit``/``jobs`` error lines, and a real two-node Ray cluster on loopback.

The two-node cluster (``hardseg.platform.local_cluster.up``): a head and a worker
node started with ``ray start``, each with its own temp dir and ports and token
authentication; the worker runs in its own mount namespace with an empty tmpfs
over one folder (``node_local``), so that folder is truly node-local. An
``mlflow server`` on 127.0.0.1 with a fresh PostgreSQL database; the Optuna
study in another. Select with ``-m cluster``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from hardseg.platform.cli import main as cli
from hardseg.platform.local_cluster import ClusterState, node_pids
from hardseg.platform.multinode import is_local_store

from conftest import free_port, small_overrides
from documented import run_documented

PG = "postgres@127.0.0.1:5432"
HARDSEG = str(Path(sys.executable).parent / "hardseg")


# -- argument, address and token errors (no cluster) -------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["submit", "--address", "http://127.0.0.1:9"], "nothing to submit: give a hardseg command after '--'"),
    (["submit", "--", "sweep", "quickstart"], "no Ray cluster address: pass --address"),
    (["submit", "--address", "http://127.0.0.1:9", "--", "sweep", "quickstart"], "cannot reach the Ray dashboard at "
                                                                                  "http://127.0.0.1:9"),
    (["jobs", "status", "raysubmit_x", "--address", "127.0.0.1:9"], "cannot reach the Ray dashboard at "
                                                                    "http://127.0.0.1:9"),
    (["submit", "--env", "NOVALUE", "--", "sweep"], "--env 'NOVALUE': expected KEY=VALUE"),
    (["submit", "--", "cluster", "up"], "'hardseg cluster' runs on this machine"),
    (["submit", "--working-dir", "/nonexistent-dir", "--", "sweep"], "--working-dir /nonexistent-dir: not a directory"),
    (["cluster", "down", "--dir", "/nonexistent-dir"], "no local cluster in /nonexistent-dir"),
])
def test_submit_jobs_cluster_errors_are_one_line(argv, expected, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err, err


def _cluster_up_refused(args: list[str], tmp_path: Path) -> str:
    """``hardseg cluster up ARGS`` through the real entry point: its one error line; nothing started or written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    state = tmp_path / "state"
    out = subprocess.run([HARDSEG, "cluster", "up", "--dir", str(state), *args], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out
    assert out.stderr.startswith("error: ") and not state.exists(), out.stderr
    return out.stderr.strip()


@pytest.mark.parametrize("cpus", ["1.5", "0"])
def test_fractional_cpus_per_node_is_refused_in_one_line(cpus, tmp_path):
    err = _cluster_up_refused(["--workers", "2", "--cpus-per-node", cpus], tmp_path)
    assert f"--cpus-per-node {cpus}: a Ray node has a whole number of logical CPUs" in err


def test_unusable_postgresql_backends_are_one_line_before_anything_starts(tmp_path):
    """Unreachable PostgreSQL; a missing database this role may not create (a role of the test's own,
    without CREATEDB): one line each, exit 2, no state written, no Ray node, no mlflow server."""
    port = free_port()  # nothing listens there
    err = _cluster_up_refused(["--mlflow-backend", f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"],
                              tmp_path)
    assert err == (f"error: cannot connect to PostgreSQL at 127.0.0.1:{port} (--mlflow-backend "
                   f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow): Connection refused; start it or fix the URL")
    role, db = f"hs_nocreate_{uuid.uuid4().hex[:8]}", f"hardseg_missing_{uuid.uuid4().hex[:8]}"
    _pg(f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        err = _cluster_up_refused(["--mlflow-backend", f"postgresql+psycopg2://{role}@127.0.0.1:5432/{db}"], tmp_path)
    finally:
        _pg(f"DROP ROLE IF EXISTS {role}")
    assert err.startswith(f"error: PostgreSQL database '{db}' does not exist at 127.0.0.1:5432 and role '{role}' "
                          "cannot create it (permission denied to create database)"), err
    assert err.endswith(f"; create it as a role that may (e.g. -U postgres): createdb -h 127.0.0.1 -p 5432 "
                        f"-O {role} {db}"), err


def test_local_stores_are_recognised():
    assert all(is_local_store(u) for u in ["sqlite:////tmp/m.db", "file:///tmp/mlruns", "/tmp/mlruns", "mlruns"])
    assert not any(is_local_store(u) for u in ["http://head:5000", "https://x", "postgresql://u@h/db",
                                               "databricks://x"])


# -- a real two-node cluster ----------------------------------------------------------
def _pg(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"postgresql://{PG}/test")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


CLUSTER_UP = ("hardseg cluster up --workers 2 --cpus-per-node 1 "
              "--mlflow-backend postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow")
CLUSTER_DOWN = "hardseg cluster down"
CONSOLE_NOISE = ("View run", "View experiment", "WebSocket closed", "PlacementGroupCleaner",
                 "Detected that the Ray Train controller actor", "A new study created", "Uploading package",
                 "Creating a file package", "already exists, skipping upload", "Runtime env is setting up")


def _timed(what: str, log: list[str], fn, *args, **kwargs) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    log.append(f"$ {what}  ({time.perf_counter() - start:.0f} s, exit {out.returncode})\n{out.stdout}{out.stderr}")
    return out


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """docs/operations.md's cluster, started and stopped with its commands as written (``hardseg cluster
    up`` / ``down`` in the folder the others run in). Replaced: the MLflow database name (one of this
    test's own, which ``cluster up`` creates). Added: ``--private-tmpfs`` (the last worker node's own
    empty tmpfs over ``node_local``, for the node-local refusal; needs root). A head and 2 worker nodes."""
    root = tmp_path_factory.mktemp("cluster")
    node_local = root / "node_local"
    node_local.mkdir()
    dbs = {k: f"hardseg_{k}_{uuid.uuid4().hex[:8]}" for k in ("mlflow", "optuna")}
    _pg(f"CREATE DATABASE {dbs['optuna']}")  # the docs create it with createdb; cluster up creates MLflow's
    # a mount namespace of its own needs root (CAP_SYS_ADMIN); without it the node-local test is skipped
    private = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                             capture_output=True).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    log: list[str] = []
    up = None
    try:
        up = _timed("cluster up", log, run_documented, CLUSTER_UP, *(["--private-tmpfs", str(node_local)] if private
                                                                     else []),
                    replace={"/mlflow": f"/{dbs['mlflow']}"}, cwd=root, env=env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"[hardseg] created PostgreSQL database '{dbs['mlflow']}'" in up.stdout
        exports = dict(ln[len("export "):].split("=", 1) for ln in up.stdout.splitlines() if ln.startswith("export "))
        assert set(exports) == {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"}, exports
        env.update(exports)
        state = ClusterState.load(root / ".hardseg-cluster")
        yield {"state": state, "env": env, "node_local": node_local if private else None, "root": root, "log": log,
               "optuna": f"postgresql+psycopg2://{PG}/{dbs['optuna']}", "dbs": dbs}
    finally:
        left = {}
        if up is not None and (root / ".hardseg-cluster" / "cluster.json").is_file():
            temp_dirs = ClusterState.load(root / ".hardseg-cluster").temp_dirs
            down = _timed("cluster down", log, run_documented, CLUSTER_DOWN, cwd=root, env=env, timeout=120)
            left = {t: node_pids(t) for t in temp_dirs}
            assert down.returncode == 0 and "stopped (" in down.stdout, down.stdout + down.stderr
        for db in dbs.values():
            _pg(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        (root / "console.log").write_text("\n".join(log))
        print("\n".join(log))
        assert not any(left.values()), f"processes left after 'cluster down': {left}"


def _hardseg(args: list[str], env: dict, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([HARDSEG, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _node_ids(gcs: str, env: dict) -> set[str]:
    code = "import json, ray; ray.init(address=%r, logging_level='ERROR'); " \
           "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))" % gcs
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _sweep_args(data_root: Path, storage: Path, tracking_uri: str, name: str, **extra) -> list[str]:
    sets = small_overrides(data_root, **{"ray.num_workers": 1, "train.epochs": 1, "data.eval_domains": "[]",
                                         "ray.storage_path": str(storage), **extra})
    return ["sweep", "space.yaml", "--name", name, "--tracking-uri", tracking_uri,
            *[a for s in sets for a in ("--set", s)]]


def _write_space(folder: Path, num_samples: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump({
        "name": "two-nodes", "params": {"train.lr": {"loguniform": [1e-3, 1e-2]}},
        "sweep": {"num_samples": num_samples, "metric": "val/miou", "mode": "max", "seed": 0}}))


SUBMIT_SWEEP = ("hardseg submit -- sweep quickstart --num-samples 4 "
                "--set tracking.optuna_storage=postgresql+psycopg2://postgres@127.0.0.1:5432/optuna "
                "--set ray.storage_path=/mnt/shared/hardseg-runs --set data.root=/mnt/shared/data/synthetic")
SUBMIT_ABLATE = "hardseg submit --no-wait --env KEY=VALUE -- ablate --strategies ce hl --seeds 0 1"


def _children(uri: str, sweep: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hardseg")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`hardseg.sweep` = '{sweep}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.status for p in parents]
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_documented_cluster_sequence_runs_as_written_with_a_quiet_console(two_nodes, data_root, tmp_path):
    """docs/operations.md's ``submit`` commands as written, on the cluster ``cluster up`` started, from its
    folder (the working directory uploaded). Replaced: the Optuna database, ``ray.storage_path`` and
    ``data.root`` (folders of this test's). Added: the small data set's ``--set``s (``small_overrides``:
    32 px images, 64/32/16 images) with ``data.eval_domains=[]`` and ``train.epochs=2``; for the sweep
    ``--num-samples 3`` (the last one given wins: its DDP trials run one at a time on the 3 one-CPU nodes,
    ~40 s each here, and TPE's seeded start-up samples make the third one the trial ASHA stops); for the ablation
    also ``ray.num_workers=1`` (one-worker trials, so the 3 nodes' single CPUs run 3 at once, one per node).
    The sweep's trials keep the default 2 DDP workers (a TorchTrainer each) and ASHA stops some of them.
    The console: hardseg's own lines, none of MLflow's, Ray's or Optuna's notices (``CONSOLE_NOISE``)."""
    state, env, root, log = two_nodes["state"], two_nodes["env"], two_nodes["root"], two_nodes["log"]
    shared = tmp_path / "shared-runs"  # outside the uploaded working directory
    small = [a for s in small_overrides(data_root, **{"data.eval_domains": "[]", "train.epochs": 2})
             if not s.startswith("data.root=") for a in ("--set", s)]
    sweep = _timed("submit -- sweep quickstart", log, run_documented, SUBMIT_SWEEP, "--num-samples", "3",
                   "--name", "two-nodes", *small,
                   replace={"5432/optuna": f"5432/{two_nodes['dbs']['optuna']}", "/mnt/shared/hardseg-runs": str(shared),
                            "/mnt/shared/data/synthetic": str(data_root)}, cwd=root, env=env, timeout=600)
    assert sweep.returncode == 0 and "SUCCEEDED" in sweep.stdout, (sweep.stdout[-4000:], sweep.stderr[-3000:])
    ablate = _timed("submit --no-wait -- ablate", log, run_documented, SUBMIT_ABLATE, "--name", "abl", *small,
                    "--set", "ray.num_workers=1", "--set", f"ray.storage_path={shared}", cwd=root, env=env, timeout=120)
    assert ablate.returncode == 0, ablate.stdout + ablate.stderr
    job_id = ablate.stdout.split("submitted job ", 1)[1].split()[0]
    # jobs logs --follow / status / list against the same cluster
    follow = _timed("jobs logs JOB_ID --follow", log, _hardseg, ["jobs", "logs", job_id, "--follow"], env, root, 600)
    assert follow.returncode == 0 and "[hardseg] sweep 'abl'" in follow.stdout, follow.stdout[-3000:] + follow.stderr
    assert "SUCCEEDED" in _hardseg(["jobs", "status", job_id], env, root).stdout
    listed = _hardseg(["jobs", "list"], env, root)
    assert job_id in listed.stdout and listed.stdout.count("SUCCEEDED") >= 2
    # Every run in the shared MLflow server: one parent, one closed child per trial.
    nodes = _node_ids(state.gcs_address, env)
    assert len(nodes) == 3
    trials = _children(state.mlflow_url, "two-nodes")
    assert len(trials) == 3 and {c.info.status for c in trials} <= {"FINISHED", "KILLED"}, \
        [(c.info.status, c.data.tags.get("hardseg.error")) for c in trials]
    stopped = [c for c in trials if c.info.status == "KILLED"]
    assert stopped and all("stopped by the" in c.data.tags["hardseg.stop_reason"] for c in stopped)
    assert {c.data.tags["hardseg.node_id"] for c in trials} <= nodes
    cells = _children(state.mlflow_url, "abl")
    assert len(cells) == 4 and all(c.info.status == "FINISHED" for c in cells)
    assert {c.data.tags["hardseg.node_id"] for c in cells} == nodes  # trials ran on every node
    # The Optuna study lives in PostgreSQL, with every trial.
    study = optuna.load_study(study_name="two-nodes", storage=two_nodes["optuna"])
    # in Optuna's terms (issue 25): a finished trial COMPLETE, one ASHA stopped (KILLED in MLflow) PRUNED
    assert sorted(t.state.name for t in study.trials) == sorted(
        {"FINISHED": "COMPLETE", "KILLED": "PRUNED"}[c.info.status] for c in trials), \
        [(t.number, t.state.name) for t in study.trials]
    # A quiet console: hardseg's lines (the live table, the stopped trials, the summary), no one else's.
    for out in (sweep, ablate, follow):
        text = out.stdout + out.stderr
        assert not [n for n in CONSOLE_NOISE if n in text], [ln for ln in text.splitlines()
                                                             if any(n in ln for n in CONSOLE_NOISE)]
    assert "[hardseg] sweep 'two-nodes': {" in sweep.stdout and "'KILLED': " in sweep.stdout  # any order


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_unsafe_multinode_configs_are_refused_before_any_run(two_nodes, data_root, tmp_path):
    state = two_nodes["state"]
    env = {**two_nodes["env"], "RAY_ADDRESS": state.gcs_address}  # a driver on the head, like a job's
    _write_space(tmp_path, num_samples=2)
    sqlite = tmp_path / "mlruns" / "mlflow.db"
    cases = [
        (_sweep_args(data_root, tmp_path / "runs", f"sqlite:///{sqlite}", "refuse-a"),
         f"error: tracking.uri=sqlite:///{sqlite} is a local store, but the Ray cluster has 3 nodes: use an MLflow "
         "tracking server"),
        (_sweep_args(data_root, tmp_path / "runs", state.mlflow_url, "refuse-b"),
         "optuna.db is SQLite, but the Ray cluster has 3 nodes: set tracking.optuna_storage=postgresql+psycopg2://"),
    ]
    _assert_refused(cases, env, tmp_path)
    assert not sqlite.exists()  # nothing written to the local store
    _assert_no_runs(state.mlflow_url, "refuse-")


@pytest.mark.cluster
@pytest.mark.ray
def test_node_local_storage_path_is_refused(two_nodes, data_root, tmp_path):
    """The worker node has an empty tmpfs over ``node_local``: it does not see what the head writes there."""
    if two_nodes["node_local"] is None:
        pytest.skip("no private mount namespace here (needs root): cannot make a truly node-local folder")
    state, local = two_nodes["state"], two_nodes["node_local"]
    env = {**two_nodes["env"], "RAY_ADDRESS": state.gcs_address}
    _write_space(tmp_path, num_samples=2)
    args = _sweep_args(data_root, local / "runs", state.mlflow_url, "local-c",
                       **{"tracking.optuna_storage": two_nodes["optuna"]})
    _assert_refused([(args, f"error: ray.storage_path={local / 'runs'} is not visible from Ray node ")], env, tmp_path)
    _assert_no_runs(state.mlflow_url, "local-")
    assert (local / "runs").is_dir() and not list((local / "runs").iterdir())  # the marker is removed


def _assert_refused(cases: list[tuple[list[str], str]], env: dict, cwd: Path) -> None:
    for args, expected in cases:
        out = _hardseg(args, env, cwd, timeout=180)
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
        assert out.returncode == 2 and len(lines) == 1 and expected in lines[0], (args[3], out.stderr[-3000:])


def _assert_no_runs(uri: str, prefix: str) -> None:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hardseg")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    assert not [r for r in runs if r.data.tags.get("hardseg.sweep", "").startswith(prefix)]


@pytest.mark.cluster
@pytest.mark.ray
def test_token_errors_are_one_line(two_nodes, tmp_path):
    state = two_nodes["state"]
    bare = {k: v for k, v in two_nodes["env"].items() if not k.startswith("RAY_AUTH")}
    bare["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    out = _hardseg(["jobs", "list", "--address", state.dashboard_url], bare, tmp_path)
    assert out.returncode == 2, out
    assert out.stderr.startswith(f"error: the Ray cluster at {state.dashboard_url} requires a token "
                                 "('Missing authentication token'): set RAY_AUTH_MODE=token")
    assert "RAY_AUTH_TOKEN_PATH" in out.stderr and out.stderr.count("\n") == 1
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    out = _hardseg(["jobs", "list", "--address", state.dashboard_url], {**bare, "RAY_AUTH_MODE": "token",
                                                                         "RAY_AUTH_TOKEN_PATH": str(wrong)}, tmp_path)
    assert out.returncode == 2 and "rejected the authentication token" in out.stderr, out


# -- a node dies mid-trial (keep this test last: it leaves the cluster without its worker node) ---------------
def _ray_script(code: str, gcs: str, env: dict) -> str:
    """Run ``code`` in a Ray driver of the cluster (namespace ``hardseg-test``); its last stdout line."""
    prelude = f"import json, ray; ray.init(address={gcs!r}, namespace='hardseg-test', logging_level='ERROR')\n"
    out = subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


HOLD = """
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
@ray.remote(num_cpus=1)
class Hold:
    def ping(self):
        return 1
temp_dirs = %r
alive = [n for n in ray.nodes() if n['Alive']]
nodes = [next(n['NodeID'] for n in alive if n['ObjectStoreSocketName'].startswith(d + '/')) for d in temp_dirs]
holds = [Hold.options(name=f'hold-{i}', lifetime='detached',
                      scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
         for i, node in enumerate(nodes[:-1])]
assert ray.get([h.ping.remote() for h in holds]) == [1] * len(holds)
print(json.dumps(nodes))
"""


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_a_trial_whose_node_dies_finishes_on_the_other_node(two_nodes, data_root, tmp_path):
    """The trial runs on the last worker node (detached actors hold the one CPU of the head and of every
    other worker node); once it has checkpointed, the head's CPU is freed and the last worker node's
    processes (raylet and all) SIGKILLed. Tune retries the trial (``ray.max_failures=1``) on the head
    from its last checkpoint, in the same MLflow run."""
    import time

    from hardseg.platform import local_cluster

    state = two_nodes["state"]
    gcs, worker_dir = state.gcs_address, state.temp_dirs[-1]
    env = {**two_nodes["env"], "RAY_ADDRESS": gcs}  # a driver on the head
    # the node ids of the nodes started with these temp dirs (their sockets live under them); every
    # CPU but the last worker node's held ('hold-0' the head's)
    nodes = json.loads(_ray_script(HOLD % (list(state.temp_dirs),), gcs, env))
    head, worker = nodes[0], nodes[-1]
    _write_space(tmp_path, num_samples=1)
    epochs = 10
    args = _sweep_args(data_root, tmp_path / "shared-runs", state.mlflow_url, "node-kill",
                       **{"tracking.optuna_storage": two_nodes["optuna"], "train.epochs": epochs,
                          "ray.max_failures": 1})
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([HARDSEG, *args], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    client = MlflowClient(state.mlflow_url)

    def trial_run(at_least: int):
        """The trial's run once it has logged ``at_least`` epochs, and how many it has logged."""
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name("hardseg")
            found = client.search_runs([exp.experiment_id], filter_string="tags.`hardseg.sweep` = 'node-kill' and "
                                       "tags.`hardseg.trial_id` != ''") if exp else []
            if found:
                done = max((m.step for m in client.get_metric_history(found[0].info.run_id, "train/loss")), default=0)
                if done >= at_least:
                    return found[0], done
            time.sleep(0.3)
        raise AssertionError(log.read_text()[-3000:])

    try:
        run, _ = trial_run(1)
        assert run.data.tags["hardseg.node_id"] == worker  # where the trial runs first
        _ray_script("ray.kill(ray.get_actor('hold-0')); print('freed')", gcs, env)  # room on the head for the retry
        trial_run(2)  # the checkpoint of epoch 1 at least is stored
        # the node dies: its raylet and every process on it at once, its workers (the raylet's children,
        # renamed 'ray::…', the trial's among them) too; a raylet killed alone leaves the trial training
        # for a while, and a short trial may finish before it notices
        procs = [psutil.Process(p) for p in local_cluster.node_pids(worker_dir)]
        assert any("raylet" in p.cmdline()[0] for p in procs), procs
        procs += [c for p in procs for c in p.children(recursive=True)]
        assert any(c.cmdline()[0].startswith("ray::ImplicitFunc") for c in procs), [c.cmdline() for c in procs]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        killed_at = time.time()
        rc = proc.wait(400)
    finally:
        if proc.poll() is None:
            proc.kill()
        local_cluster.stop_node(worker_dir, grace=2)  # what the dead node left behind
    text = log.read_text()
    assert rc == 0, text[-4000:]
    exp = client.get_experiment_by_name("hardseg")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`hardseg.sweep` = 'node-kill'")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 1, [(c.info.status, c.data.tags.get("hardseg.error")) for c in children]
    child = children[0]
    resumed = int(child.data.tags["hardseg.resumed_from_epoch"])
    history = client.get_metric_history(child.info.run_id, "train/loss")
    steps = sorted({m.step for m in history})
    # epochs the first attempt logged: before the kill (+2 s for one in flight; the retry needs the node's
    # death to be noticed and a new process first)
    logged = max(m.step for m in history if m.timestamp / 1000 < killed_at + 2)
    print(f"\nnode {worker[:12]}'s raylet killed after epoch {logged} was logged; trial retried on node "
          f"{child.data.tags['hardseg.node_id'][:12]} from epoch {resumed}, run {child.info.run_id} "
          f"{child.info.status} (restarts {child.data.tags['hardseg.restarts']}), "
          f"{time.time() - killed_at:.0f} s after the kill; one child run, epochs logged {steps}")
    print("\n".join(line for line in text.splitlines() if "resuming after epoch" in line or "sweep 'node-kill'" in line))
    assert child.info.status == "FINISHED" and child.data.tags["hardseg.node_id"] == head
    assert child.data.tags["hardseg.restarts"] == "1" and 1 <= resumed <= logged
    assert steps == list(range(1, epochs + 1))
    assert f"resuming after epoch {resumed}" in text
