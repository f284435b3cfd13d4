"""What a seeded ASHA sweep leaves in its Optuna storage: trial states, values, intermediate values and
the sampler's next suggestion, read back with ``optuna.load_study``.

Run it with the code under test first on ``PYTHONPATH`` (e.g. the main checkout's ``src`` for "before",
a branch's for "after"); same seeds, same space, same budget, so the two JSON files compare directly:

    flock /tmp/hardseg-heavy.lock timeout 900 env PYTHONPATH=$PWD/src .venv/bin/python \\
        benchmarks/optuna_states.py --label after

Writes ``benchmarks/results/optuna_states_<label>.json`` and prints a table. The next suggestion is
asked of a copy of the storage (the study itself is left as the sweep wrote it) with the sweep's own
sampler settings (``TPESampler(seed=0, multivariate=True, group=True)``; with 6 trials it is still in
its 10 random start-up trials, whose suggestions do not depend on the values) and with
``n_startup_trials=4``, where TPE models the trials (a PRUNED trial as pruned, at the step it reached).
``max_concurrent: 1``: trials run one after another, so ASHA decides the same way before and after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import optuna

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = {"name": "states", "base": {},
         "params": {"strategies": {"categorical": ["ce", "hl", "focal"]},
                    "train.lr": {"loguniform": [1e-3, 1e-2]}},
         "sweep": {"num_samples": 6, "metric": "val/miou", "mode": "max", "seed": 0, "max_concurrent": 1,
                   "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}}
SMALL = {"data.synthetic.size": 32, "data.synthetic.n_train": 64, "data.synthetic.n_val": 32,
         "data.synthetic.n_shift": 16, "train.batch_size": 8, "train.epochs": 3, "data.eval_domains": "[]",
         "ray.num_workers": 1, "tracking.log_model": "false"}


def run(workdir: Path) -> str:
    """Run the seeded sweep in ``workdir``; the Optuna storage URL."""
    import ray

    from hardseg.platform.sweep import run_sweep
    from hardseg.search_spaces import SearchSpace

    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    (workdir / "mlruns").mkdir(parents=True, exist_ok=True)
    overrides = [f"{k}={v}" for k, v in {**SMALL, "data.root": str(workdir / "data"), "tracking.uri": uri,
                                         "ray.storage_path": str(workdir / "runs")}.items()]
    ray.init(num_cpus=2, resources={"trial_driver": 2}, logging_level="WARNING")
    try:
        out = run_sweep(SearchSpace.from_dict(SPACE, source="optuna_states"), overrides=overrides, name="states",
                        workdir=workdir)
    finally:
        ray.shutdown()
    return out.optuna_storage


def read_back(storage: str) -> dict:
    """States, values and intermediate values of every trial; the next suggestion on a copy."""
    from hardseg.search_spaces import SearchSpace

    space = SearchSpace.from_dict(SPACE, source="optuna_states")
    study = optuna.load_study(study_name="states", storage=storage)
    trials = [{"number": t.number, "state": t.state.name, "value": t.value,
               "intermediate": {int(k): v for k, v in sorted(t.intermediate_values.items())},
               "params": t.params, "ended": t.user_attrs.get("ended")} for t in study.trials]
    db = Path(storage[len("sqlite:///"):])
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / db.name
        shutil.copy(db, copy)
        nxt = {}
        for label, startup in (("sweep's sampler", 10), ("TPE past its start-up (n_startup_trials=4)", 4)):
            shutil.copy(db, copy)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True,
                                                     n_startup_trials=startup)
            again = optuna.load_study(study_name="states", storage=f"sqlite:///{copy}", sampler=sampler)
            nxt[label] = []
            for _ in range(3):
                trial = again.ask()
                space.define_by_run(trial)  # the sweep's own define-by-run space
                nxt[label].append(dict(trial.params))
                again.tell(trial, state=optuna.trial.TrialState.FAIL)  # the next ask without this one's value
    return {"trials": trials, "next_suggestions": nxt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", required=True, help="before or after (the result file's suffix)")
    parser.add_argument("--keep", help="keep the work folder here")
    args = parser.parse_args()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="optuna-states-"))
    storage = run(workdir)
    data = read_back(storage)
    print(f"{'#':>2} {'state':9} {'value':>7} {'ended':14} intermediate values (epoch: val/miou)")
    for t in data["trials"]:
        inter = ", ".join(f"{k}: {v:.4f}" for k, v in t["intermediate"].items()) or "none"
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        print(f"{t['number']:>2} {t['state']:9} {value:>7} {t['ended'] or '-':14} {inter}")
    for label, params in data["next_suggestions"].items():
        print(f"next suggestions, {label}:", json.dumps(params))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"optuna_states_{args.label}.json"
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
