"""``hardseg cluster up|down``: a multi-node Ray cluster on this machine, for trying the cluster path.

``up`` starts a head node and N worker nodes with ``ray start``, each with its
own ``--temp-dir`` and its own ports (several nodes and other people's Ray
share the machine), ``--num-cpus`` and the ``trial_driver`` custom resource the
sweeps need; token authentication with a token file of the cluster's own; and
an ``mlflow server`` on 127.0.0.1 (PostgreSQL backend for the real multi-node
setup, or SQLite). Before anything starts, ``up`` checks the arguments: whole
logical CPUs per node (``ray start --num-cpus`` takes an integer), and a
PostgreSQL backend that answers and has its database (created when the role may
create databases, else one line naming the command that does). Its state file (``cluster.json`` in ``--dir``) records the
addresses, the temporary dirs, the MLflow server's pid and the environment a
client exports.

``down`` stops exactly what ``up`` started: the processes whose command line
names one of the cluster's temporary dirs (every Ray process of a node does)
and the MLflow server. It never runs a global ``ray stop``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import URL, make_url

from hardseg.errors import HardsegError, one_line

STATE_FILE = "cluster.json"
DEFAULT_DIR = ".hardseg-cluster"
OBJECT_STORE_BYTES = 512 * 1024**2  # per node; small runs need little, /dev/shm is shared


class ClusterError(HardsegError):
    """The local cluster could not start, or there is none to stop."""


@dataclass
class ClusterState:
    dir: str
    gcs_address: str
    dashboard_url: str
    temp_dirs: list[str]  # one per node, head first
    env: dict[str, str]  # what a client exports (RAY_ADDRESS, MLFLOW_TRACKING_URI, RAY_AUTH_*)
    mlflow_url: str | None = None
    mlflow_pid: int | None = None
    mlflow_backend: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def save(self) -> Path:
        path = Path(self.dir) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "ClusterState":
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise ClusterError(f"no local cluster in {folder} (no {STATE_FILE}); pass the --dir given to 'cluster up'")
        return cls(**json.loads(path.read_text()))

    def exports(self) -> str:
        return "\n".join(f"export {k}={v}" for k, v in self.env.items())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_bin() -> str:
    """The ``ray`` script of this interpreter's environment."""
    return str(Path(sys.executable).parent / "ray")


def node_env(auth_env: dict[str, str]) -> dict[str, str]:
    """Environment of a node: this venv first on PATH (job entrypoints call ``hardseg``), the auth settings."""
    env = {**os.environ, **auth_env, "RAY_worker_niceness": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def node_ports() -> list[str]:
    """Own ports for everything a node listens on (defaults such as 52365 would clash between nodes)."""
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "a") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=180)
    if done.returncode != 0:
        tail = log.read_text()[-1500:]
        raise ClusterError(f"'{' '.join(cmd[:3])} ...' failed (exit {done.returncode}); see {log}: {tail}")


def whole_cpus(cpus: float) -> int:
    """``cpus`` as an int ≥ 1 (``--cpus-per-node``): Ray gives a node whole logical CPUs.

    Raises:
        ClusterError: a fractional or non-positive count (one line; nothing started).
    """
    if cpus != int(cpus) or cpus < 1:
        raise ClusterError(f"--cpus-per-node {cpus:g}: a Ray node has a whole number of logical CPUs "
                           f"('ray start --num-cpus' takes an integer); give 1, 2, ...")
    return int(cpus)


def postgres_url(backend: str | None) -> URL | None:
    """The SQLAlchemy URL of a ``postgresql[+driver]://`` backend, else None."""
    if not backend or not backend.startswith("postgresql"):
        return None
    return make_url(backend)


def ensure_postgres_database(backend: str | None, timeout: float = 5) -> str | None:
    """Check a PostgreSQL ``backend`` before anything starts; create its database when missing.

    Returns a note when the database was created, else None (not PostgreSQL, or the database exists).

    Raises:
        ClusterError: one line: PostgreSQL does not answer, or the database is missing and this role
            may not create it (with the command that creates it).
    """
    url = postgres_url(backend)
    if url is None:
        return None
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": int(timeout)},
                                          poolclass=sqlalchemy.pool.NullPool)
    except ImportError as err:
        raise ClusterError(f"--mlflow-backend {url.render_as_string()}: the driver is not installed ({err}); "
                           f"pip install psycopg2-binary") from None
    try:
        with engine.connect():
            return None
    except sqlalchemy.exc.OperationalError as err:
        reason = _pg_reason(err)
        if f'database "{url.database}" does not exist' not in reason:
            raise ClusterError(f"cannot connect to PostgreSQL at {where} (--mlflow-backend {url.render_as_string()}): "
                               f"{reason}; start it or fix the URL") from None
    finally:
        engine.dispose()
    admin = sqlalchemy.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                                     connect_args={"connect_timeout": int(timeout)}, poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{url.database}"'))
    except sqlalchemy.exc.DBAPIError as err:
        owner = f" -O {url.username}" if url.username else ""
        raise ClusterError(f"PostgreSQL database '{url.database}' does not exist at {where} and role "
                           f"'{url.username or 'default'}' cannot create it ({_pg_reason(err)}); create it as a role "
                           f"that may (e.g. -U postgres): createdb -h {url.host or 'localhost'} -p {url.port or 5432}"
                           f"{owner} {url.database}") from None
    finally:
        admin.dispose()
    return f"created PostgreSQL database '{url.database}' at {where} for the MLflow server (it did not exist)"


def _pg_reason(err: Exception) -> str:
    """The first line of the driver's message, without libpq's 'connection to server ... failed:' prefix."""
    text = one_line(getattr(err, "orig", err), typed=False)
    return text.split("failed: ", 1)[-1].replace("FATAL:  ", "").strip()


def node_resources(cpus: int) -> str:
    """``ray start --resources``: the trial-driver slots of a node (one per CPU) as JSON."""
    # local: hardseg.platform.cluster imports Ray and torch (6 s); the argument checks answer before that
    from hardseg.platform.cluster import TRIAL_DRIVER_RESOURCE

    return json.dumps({TRIAL_DRIVER_RESOURCE: max(1, cpus)})


def start_head(temp_dir: Path, cpus: int, env: dict[str, str], log: Path) -> tuple[str, str]:
    """``ray start --head`` with its own ports; returns (GCS address, dashboard URL) once the dashboard answers."""
    port, dash = free_port(), free_port()
    cmd = [ray_bin(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--ray-client-server-port", str(free_port()), "--num-cpus", str(cpus),
           "--resources", node_resources(cpus), "--temp-dir", str(temp_dir),
           "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats", *node_ports()]
    _run(cmd, env, log)
    url = f"http://127.0.0.1:{dash}"
    wait_http(f"{url}/api/version", 90, "the Ray dashboard")
    return f"127.0.0.1:{port}", url


def start_worker(gcs_address: str, temp_dir: Path, cpus: int, env: dict[str, str], log: Path,
                 private_tmpfs: Path | None = None) -> None:
    """``ray start --address`` with its own temp dir and ports.

    ``private_tmpfs``: run the node in its own mount namespace with an empty
    tmpfs over that folder, so the node truly does not see what the others
    write there (a node-local path, for the multi-node refusal tests; needs root).
    """
    cmd = [ray_bin(), "start", "--address", gcs_address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
           "--resources", node_resources(cpus), "--temp-dir", str(temp_dir),
           "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats", *node_ports()]
    if private_tmpfs is not None:
        script = f"mount -t tmpfs tmpfs {private_tmpfs} && exec \"$@\""
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
    _run(cmd, env, log)


def wait_http(url: str, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ClusterError(f"{what} exited with status {proc.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # it answers (401 without a token is an answer)
            return
        except OSError:
            time.sleep(0.5)
    raise ClusterError(f"{what} did not answer at {url} within {timeout:.0f} s")


def server_env() -> dict[str, str]:
    """The environment of an ``mlflow server`` hardseg starts: without MLflow's job runner (its GenAI jobs; hardseg
    submits none). With it, the server starts 7 more processes (huey consumers, each importing MLflow), 24 CPU-s
    against 5 in its first 15 s here, and they poll the store while it runs."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def launch_mlflow(backend: str, folder: Path) -> tuple[str, subprocess.Popen]:
    """Start ``mlflow server`` on 127.0.0.1 with artifacts served through it; returns (URL, process) at once,
    before it answers (:func:`await_mlflow`)."""
    if backend == "sqlite":
        backend = f"sqlite:///{folder / 'mlflow.db'}"
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend, "--artifacts-destination", str(folder / "mlflow-artifacts"),
           "--workers", "1"]
    with open(folder / "mlflow.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env())
    return f"http://127.0.0.1:{port}", proc


def await_mlflow(url: str, proc: subprocess.Popen, folder: Path) -> None:
    """Wait until the server :func:`launch_mlflow` started answers; ClusterError with its log's last line if not."""
    try:
        wait_http(f"{url}/health", 120, "mlflow server", proc)
    except ClusterError as err:
        _kill_group(proc.pid)
        tail = (folder / "mlflow.log").read_text().strip().splitlines()[-1:]
        raise ClusterError(f"{err}: {tail[0] if tail else 'no output'} (see {folder / 'mlflow.log'})") from None


def up(folder: str | Path = DEFAULT_DIR, *, workers: int = 1, cpus_per_node: float = 1,
       mlflow_backend: str | None = "sqlite", auth: bool = True,
       private_tmpfs: Path | None = None) -> ClusterState:
    """Start a head, ``workers`` worker nodes and an MLflow server; save and return the state.

    Args:
        cpus_per_node: whole logical CPUs (:func:`whole_cpus`).
        mlflow_backend: ``postgresql+psycopg2://...`` (multi-node; SQLAlchemy's plain ``postgresql://``
            wants psycopg 3), ``sqlite`` (a file in ``folder``) or None (no server).
        auth: token authentication with a token file of this cluster's own.
        private_tmpfs: see :func:`start_worker` (applied to the last worker node).

    Raises:
        ClusterError: bad arguments or an unusable backend (checked before anything starts), or a node
            or the server that failed to start (what did start is stopped again).
    """
    root = Path(folder).resolve()
    if (root / STATE_FILE).is_file():
        raise ClusterError(f"a local cluster is already recorded in {root}; 'hardseg cluster down --dir {folder}' first")
    cpus = whole_cpus(cpus_per_node)
    if note := ensure_postgres_database(mlflow_backend):
        print(f"[hardseg] {note}", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    auth_env: dict[str, str] = {"RAY_AUTH_MODE": "disabled"}
    if auth:
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = node_env(auth_env)
    # Short temp dirs: Ray's unix socket paths under them must stay below 108 characters.
    temp_dirs = [Path(tempfile.mkdtemp(prefix=f"hs{i}-", dir="/tmp")) for i in range(workers + 1)]
    state = ClusterState(str(root), "", "", [str(t) for t in temp_dirs], {})
    state.save()  # from here on, 'down' finds whatever started
    try:
        # What waits overlaps: the MLflow server starts beside the nodes, the worker nodes beside each other
        # ('ray start' spends most of its time waiting for the processes it started).
        if mlflow_backend:
            state.mlflow_backend = mlflow_backend
            state.mlflow_url, server = launch_mlflow(mlflow_backend, root)
            state.mlflow_pid = server.pid
            state.save()
        state.gcs_address, state.dashboard_url = start_head(temp_dirs[0], cpus, env, root / "ray.log")
        state.save()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            started = [pool.submit(start_worker, state.gcs_address, t, cpus, env, root / "ray.log",
                                   private_tmpfs if i == workers else None) for i, t in enumerate(temp_dirs[1:], 1)]
            for future in started:
                future.result()
        if mlflow_backend:
            await_mlflow(state.mlflow_url, server, root)
    except BaseException:
        down(root)
        raise
    state.env = {"RAY_ADDRESS": state.dashboard_url, **auth_env}
    if state.mlflow_url:
        state.env["MLFLOW_TRACKING_URI"] = state.mlflow_url
    state.save()
    return state


def node_pids(temp_dir: str) -> list[int]:
    """Processes whose command line names ``temp_dir`` (all of a node's Ray processes do)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if any(a == temp_dir or a.endswith(f"={temp_dir}") or f"{temp_dir}/" in a for a in _args(int(entry.name))):
            pids.append(int(entry.name))
    return pids


def _args(pid: int) -> list[str]:
    """The command line of process ``pid`` (empty once it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(temp_dir: str, pids: set[int], deadline: float) -> None:
    while time.time() < deadline and pids & set(node_pids(temp_dir)):
        time.sleep(0.1)


def stop_node(temp_dir: str, grace: float = 10) -> int:
    """Stop the node's processes (SIGKILL after ``grace`` s for any left); returns how many there were.

    In an order they exit in at once: Ray's autoscaler monitor SIGKILLed (it outlives a SIGTERM by far),
    the others SIGTERMed, and a head's GCS server last. Signalled together with its GCS, a head's raylet
    outlived 12 s here (waiting for the GCS, it seems); signalled first, it and the GCS were gone in 0.3 s.
    """
    pids = node_pids(temp_dir)
    deadline = time.time() + grace
    roles = {pid: " ".join(_args(pid)) for pid in pids}
    gcs = [pid for pid, cmd in roles.items() if "gcs_server" in cmd]
    _signal([pid for pid, cmd in roles.items() if "autoscaler/_private/monitor.py" in cmd], signal.SIGKILL)
    _signal([pid for pid in pids if pid not in gcs], signal.SIGTERM)
    _wait_gone(temp_dir, set(pids) - set(gcs), deadline)
    _signal(gcs, signal.SIGTERM)
    _wait_gone(temp_dir, set(pids), deadline)
    _signal(node_pids(temp_dir), signal.SIGKILL)
    return len(pids)


def down(folder: str | Path = DEFAULT_DIR) -> int:
    """Stop the nodes and the MLflow server that :func:`up` started in ``folder`` and remove the nodes'
    temp dirs; returns the number of processes stopped."""
    state = ClusterState.load(folder)
    stopped = 0
    if state.mlflow_pid:
        _kill_group(state.mlflow_pid)
        stopped += 1
    workers, head = state.temp_dirs[1:], state.temp_dirs[:1]
    for group in (workers, head):  # the worker nodes first, each group's nodes at once
        with ThreadPoolExecutor(max_workers=max(1, len(group))) as pool:
            stopped += sum(pool.map(stop_node, group))
        for temp_dir in group:
            shutil.rmtree(temp_dir, ignore_errors=True)  # up made it; the nodes' logs go with it
    (Path(state.dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped
