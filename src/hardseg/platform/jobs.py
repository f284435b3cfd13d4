"""``hardseg submit`` and ``hardseg jobs``: hardseg commands as Ray Jobs on a cluster.

A job runs ``hardseg COMMAND ARGS`` on the cluster's head node, in a copy of
the working directory (uploaded by the Jobs API, ``.gitignore`` honoured), so a
relative config or space file travels with it. Inside the job ``ray.init()``
joins the cluster (Ray sets ``RAY_ADDRESS`` for the entrypoint).

The address is the dashboard's HTTP address (``http://HEAD:8265``), from
``--address`` or ``RAY_ADDRESS``. Clusters with token authentication (the
default for local clusters since Ray 2.59) answer a client without a token
with 401 "Missing authentication token"; the client sends one only when
``RAY_AUTH_MODE=token`` and a token is in ``RAY_AUTH_TOKEN``, the file named by
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from hardseg.errors import HardsegError, one_line

#: not uploaded with the working directory (besides what .gitignore lists); .hardseg-cluster: the
#: state, logs, MLflow artifacts and token of 'hardseg cluster up'
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "mlruns", "hardseg-runs", ".hardseg-cluster"]
#: forwarded to the job when set here and not given with --env
FORWARDED_ENV = ("MLFLOW_TRACKING_URI",)
TOKEN_HELP = ("set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, in a file named by "
              "RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token")


class JobsError(HardsegError):
    """The cluster cannot be reached, refuses us, or does not know the job."""


# Ray's job manager writes this INFO line first into every job's log; hardseg's own lines follow it
JOB_LOG_NOTICE = re.compile(r"^[^\n]*\tINFO job_manager\.py:\d+ -- Runtime env is setting up\.\n?", re.M)


def without_notices(logs: str) -> str:
    """A job's log as hardseg prints it: without Ray's job-manager notice (:data:`JOB_LOG_NOTICE`)."""
    return JOB_LOG_NOTICE.sub("", logs)


def resolve_address(address: str | None) -> str:
    """``--address`` > ``RAY_API_SERVER_ADDRESS`` (Ray's own job CLI reads it first) > ``RAY_ADDRESS``,
    as an HTTP URL of the Ray dashboard."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobsError("no Ray cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS "
                        "(a local cluster: 'hardseg cluster up')")
    return address if "://" in address else f"http://{address}"


def _translate(err: Exception, address: str) -> JobsError:
    """One line saying what to fix, for the errors the Jobs client raises."""
    text = str(err)
    if isinstance(err, AuthenticationError) and "Authentication failed" in text:
        return JobsError(f"the Ray cluster at {address} rejected the authentication token (403 'Invalid "
                         f"authentication token'): use the cluster's token; {TOKEN_HELP}")
    if isinstance(err, AuthenticationError) or "Missing authentication token" in text:
        return JobsError(f"the Ray cluster at {address} requires a token ('Missing authentication token'): "
                         f"{TOKEN_HELP}")
    if isinstance(err, ConnectionError) or "Failed to connect" in text:
        return JobsError(f"cannot reach the Ray dashboard at {address}: is the cluster up and is this its "
                         f"dashboard address (default port 8265)?")
    if "does not exist" in text:
        return JobsError(f"{text.splitlines()[-1].strip()} on {address} ('hardseg jobs list' shows the jobs)")
    return JobsError(f"Ray Jobs API at {address}: {one_line(err, typed=False)}")


class Jobs:
    """A connected :class:`~ray.job_submission.JobSubmissionClient` whose errors are one-liners."""

    def __init__(self, address: str | None):
        self.address = resolve_address(address)
        try:
            self.client = JobSubmissionClient(self.address)
        except Exception as err:  # noqa: BLE001 - translated to one line
            raise _translate(err, self.address) from None

    def call(self, method: str, *args, **kwargs):
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise _translate(err, self.address) from None

    def follow(self, job_id: str) -> None:
        """Print the job's logs as they come until it ends."""
        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                print(without_notices(chunk), end="", flush=True)

        try:
            asyncio.run(tail())
        except Exception as err:  # noqa: BLE001
            raise _translate(err, self.address) from None

    def final_status(self, job_id: str) -> int:
        """0 when the job SUCCEEDED, 1 when it FAILED or was STOPPED (printed), 3 while it still runs."""
        info = self.call("get_job_info", job_id)
        status = str(info.status.value if hasattr(info.status, "value") else info.status)
        print(f"[hardseg] job {job_id}: {status}" + (f" ({info.message})" if info.message else ""), flush=True)
        if status == "SUCCEEDED":
            return 0
        return 1 if status in ("FAILED", "STOPPED") else 3


def parse_env(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings, plus :data:`FORWARDED_ENV` from this environment."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobsError(f"--env {item!r}: expected KEY=VALUE, e.g. --env MLFLOW_TRACKING_URI=http://HEAD:5000")
        env[key] = value
    return env


def submit(address: str | None, command: list[str], *, working_dir: str = ".", env: list[str] | None = None,
           wait: bool = True) -> int:
    """Submit ``hardseg COMMAND...`` as a Ray job; with ``wait``, stream its logs and return its exit status."""
    if not command:
        raise JobsError("nothing to submit: give a hardseg command after '--', e.g. "
                        "hardseg submit -- sweep quickstart --num-samples 4")
    folder = Path(working_dir).resolve()
    if not folder.is_dir():
        raise JobsError(f"--working-dir {working_dir}: not a directory")
    env_vars = parse_env(env or [])
    jobs = Jobs(address)
    entrypoint = shlex.join(["hardseg", *command])
    runtime_env = {"working_dir": str(folder), "excludes": EXCLUDES, "env_vars": env_vars}
    job_id = jobs.call("submit_job", entrypoint=entrypoint, runtime_env=runtime_env,
                       metadata={"hardseg.command": command[0]})
    print(f"[hardseg] submitted job {job_id} to {jobs.address}: {entrypoint}", flush=True)
    if not wait:
        print(f"[hardseg] follow it with: hardseg jobs logs {job_id} --follow; status: hardseg jobs status {job_id}")
        return 0
    try:
        jobs.follow(job_id)
    except KeyboardInterrupt:
        print(f"\n[hardseg] job {job_id} keeps running; stop it with: hardseg jobs stop {job_id}", file=sys.stderr)
        return 130
    return jobs.final_status(job_id)


def status(address: str | None, job_id: str) -> int:
    code = Jobs(address).final_status(job_id)
    return 0 if code == 3 else code


def logs(address: str | None, job_id: str, follow: bool = False) -> int:
    jobs = Jobs(address)
    if follow:
        jobs.follow(job_id)
        return jobs.final_status(job_id)
    print(without_notices(jobs.call("get_job_logs", job_id)), end="", flush=True)
    return 0


def stop(address: str | None, job_id: str) -> int:
    jobs = Jobs(address)
    stopped = jobs.call("stop_job", job_id)
    print(f"[hardseg] job {job_id}: " + ("stop requested" if stopped else "not running (nothing to stop)"))
    return 0


def list_jobs(address: str | None) -> int:
    jobs = Jobs(address)
    rows = sorted(jobs.call("list_jobs"), key=lambda j: j.start_time or 0)
    print(f"{'job':<28} {'status':<10} entrypoint")
    for j in rows:
        job_status = j.status.value if hasattr(j.status, "value") else j.status
        print(f"{j.submission_id or j.job_id:<28} {job_status:<10} {j.entrypoint}")
    return 0
