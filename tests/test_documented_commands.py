"""Every ``hardseg …`` command the docs show is run by a test as written, or listed here with the reason.

How a test runs a documented command, and what counts as one: ``tests/documented.py``. The commands
that train cost minutes each as written (16 epochs, 2 DDP workers, 6-trial sweeps); the suite's
budget (12 minutes on 2 cores) fits them as ``--dry-run`` (the same checks before Ray starts: config,
strategy settings built on the meta device, domains, space, ``--set`` against searched keys, warnings),
run here in-process through ``hardseg.platform.cli.main``. The cluster sequence of docs/operations.md
runs for real in ``tests/test_cluster.py``; ``sweep --resume``, ``study --resume`` and ``report`` in
the sweep, study and report tests (``run_documented`` / ``documented_argv`` calls, found by
:func:`covering_calls`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from hardseg.platform.cli import main as cli

from documented import documented_argv, documented_commands, run_documented

TESTS = Path(__file__).resolve().parent

# The one list of documented commands no test runs, and why.
NOT_RUN_HERE = {
    "hardseg train [CONFIG.yaml] [--set key=value ...] [--tracking-uri URI] [--dry-run]":
        "a usage form (brackets are optional parts); its instances are the examples run below",
    "hardseg train [CONFIG.yaml] [--set key=value ...] [--tracking-uri URI]":
        "a usage form (brackets are optional parts); its instances are the examples run below",
    "hardseg jobs list | status JOB_ID | logs JOB_ID [--follow] | stop JOB_ID":
        "a usage form of four commands; test_cluster.py runs 'jobs list', 'status', 'logs' on the cluster",
    "hardseg train --set data.dataset=cityscapes --set data.root=/data/cityscapes --set model.name=deeplabv3_resnet50":
        "needs the Cityscapes dataset (not distributable, not on this machine) and a GPU for deeplabv3_resnet50; "
        "its --dry-run runs below",
    "hardseg sweep --resume my-sweep --retry-failed":
        "needs a sweep whose trials ran out of retries (a trial process SIGKILLed with ray.max_failures=0); "
        "test_trial_failures.py::test_retry_failed_reruns_a_trial_that_ran_out_of_retries makes one and reruns it "
        "through the same resume_sweep(retry_failed=True) the CLI calls",
    "hardseg study quick":
        "the shipped study runs 4 strategies x 3 seeds, an 8-trial search and a confirmation on 3 fresh seeds "
        "(11 min 25 s measured, benchmarks/README.md); test_study.py runs 'hardseg study FILE' on a small study file",
    "hardseg nightly nightly":
        "the shipped suite is 4 strategies x 5 seeds x 8 epochs (20 trials, beyond the suite's budget); "
        "test_nightly.py runs three nightlies on a small suite file",
    "hardseg nightly my-suite.yaml --set train.epochs=4 --tracking-uri http://mlflow:5000 --out reports/nightly/today":
        "names a remote MLflow server (mlflow:5000); test_nightly.py runs 'nightly SUITE --set ... --out DIR'",
    "hardseg submit --address http://HEAD:8265 -- nightly src/hardseg/platform/suites/nightly.yaml":
        "a remote cluster's head (the KubeRay recipes of deploy/ are structure-tested in test_deploy.py); "
        "test_cluster.py runs 'hardseg submit' on a local cluster",
}


def covering_calls() -> dict[str, list[str]]:
    """Documented command text → the tests (``file::function``) that run it: a test function or fixture
    whose body or ``parametrize`` holds the text (a string literal, or a module-level constant it names)
    and that calls ``run_documented`` or ``documented_argv``, itself or through a function of its module."""
    documented = set(documented_commands())
    found: dict[str, list[str]] = {}
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                     and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                     for t in n.targets if isinstance(t, ast.Name)}

        def calls(fn: ast.FunctionDef) -> set[str]:  # names it calls or passes on (a runner given to a helper)
            return {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | {
                c.func.attr for c in ast.walk(fn) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}

        def runs(fn: ast.FunctionDef, seen: frozenset = frozenset()) -> bool:
            names = calls(fn)
            return bool(names & {"run_documented", "documented_argv"}) or any(
                runs(functions[n], seen | {fn.name}) for n in names if n in functions and n not in seen)

        for fn in (f for f in functions.values() if runs(f)):
            nodes = [n for node in [fn, *fn.decorator_list] for n in ast.walk(node)]
            texts = {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            texts |= {constants[n.id] for n in nodes if isinstance(n, ast.Name) and n.id in constants}
            for text in texts & documented:
                found.setdefault(text, []).append(f"{path.name}::{fn.name}")
    return found


def test_every_documented_command_is_run_by_a_test_or_listed_with_its_reason():
    documented, covered = documented_commands(), covering_calls()
    missing = {c: files for c, files in documented.items() if c not in covered and c not in NOT_RUN_HERE}
    assert not missing, f"documented commands no test runs (run one with tests/documented.py, or list it in " \
                        f"NOT_RUN_HERE with the reason): {missing}"
    stale = sorted(set(NOT_RUN_HERE) - set(documented))
    assert not stale, f"no longer documented (update the test): {stale}"
    assert len(documented) >= 25  # the extraction still finds the docs' code blocks


def test_the_extraction_joins_continuations_and_drops_comments():
    from documented import commands_in

    text = "x\n```bash\n# note\n.venv/bin/hardseg train --set a=1 \\\n    --set b=2   # one run\nls\n```\n" \
           "`hardseg inline` is not a block\n"
    assert commands_in(text) == ["hardseg train --set a=1 --set b=2"]


def _dry(capsys, command: str, *extra: str) -> str:
    """``command`` as documented + ``--dry-run`` (+ ``extra``) through the CLI's main: exit 0, its stdout."""
    assert cli(documented_argv(command, "--dry-run", *extra)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "[hardseg] dry run:" in out and "nothing started" in out, out[-2000:]
    return out


@pytest.mark.parametrize("command", [
    "hardseg train --set strategies=[hl] --set train.epochs=4",
    "hardseg train --set strategies=[hl] --set strategy_params.hl.lr_mult=5",
    "hardseg train --set strategies=[hl] --set train.optimizer=sgd --set train.lr=0.01 --set loss.average=all",
    "hardseg train --set strategies=[hl] --set train.optimizer=sgd --set strategy_params.hl.lam=0.05",
    "hardseg train --set strategies=[hl,coarse_to_fine] --set train.epochs=8",
    "hardseg train --set data.dataset=cityscapes --set data.root=/data/cityscapes --set model.name=deeplabv3_resnet50",
    "hardseg train --set data.eval_domains=[fog-1,fog-3,fog-5,night-3,target]",
    "hardseg sweep quickstart",
    "hardseg ablate --strategies ce hl ohem hl+coarse_to_fine --seeds 0 1 2 --set train.epochs=8 "
    "--set strategy_params.ohem.min_kept_fraction=0.1",
    "hardseg ablate --strategies ce hl ohem --seeds 0 1 2 --set train.epochs=4 --set ray.num_workers=1 "
    "--set strategy_params.ohem.min_kept_fraction=0.1 --name my-ablation",
])
def test_documented_run_commands_pass_their_dry_run_without_a_warning(command, capsys, tmp_path, monkeypatch):
    """Added: ``--dry-run`` (the training itself would exceed the suite's budget). The docs' examples use
    settings that act: no ``[hardseg] warning:`` line (such as HL's λ under AdamW)."""
    monkeypatch.chdir(tmp_path)
    out = _dry(capsys, command)
    assert "[hardseg] warning:" not in out, out
    assert list(tmp_path.iterdir()) == []  # nothing written, no data generated


def test_documented_sweep_of_own_files_passes_its_dry_run(capsys, tmp_path, monkeypatch):
    """``my_space.yaml`` and ``my_run.yaml`` written here (a space over the learning rate, a run config)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_space.yaml").write_text(yaml.safe_dump({
        "name": "mine", "params": {"train.lr": {"loguniform": [1e-3, 1e-2]}},
        "sweep": {"num_samples": 3, "metric": "val/miou", "mode": "max"}}))
    (tmp_path / "my_run.yaml").write_text(yaml.safe_dump({"strategies": ["ohem"], "train": {"batch_size": 8}}))
    out = _dry(capsys, "hardseg sweep my_space.yaml --config my_run.yaml --set train.epochs=6 --name my-sweep")
    assert "# 3 trials sampled by Optuna TPE" in out and "epochs: 6" in out and "- ohem" in out


def test_data_generate_as_documented(capsys, tmp_path, monkeypatch):
    """The usage form's instance ``--set data.synthetic.seed=1 --root DIR``; added: a small set (``--set
    data.synthetic.size=32``, ``n_train=8``, ``n_val=4``, ``n_shift=2``) instead of the default's size."""
    monkeypatch.chdir(tmp_path)
    small = ["--set", "data.synthetic.size=32", "--set", "data.synthetic.n_train=8", "--set",
             "data.synthetic.n_val=4", "--set", "data.synthetic.n_shift=2"]
    argv = documented_argv("hardseg data generate [--set data.synthetic.seed=1] [--root DIR]",
                           *small, replace={"[": "", "]": "", "DIR": str(tmp_path / "synthetic")})
    assert cli(argv) == 0
    assert list((tmp_path / "synthetic").glob("synthetic-s32-n8-4-2-seed1/train_images.npy")), "no seed-1 set"


def test_documented_40k_iteration_dry_run_prints_the_schedule(capsys, tmp_path):
    """docs/usage.md "Long runs": the paper's 40k-iteration schedule on the user's Cityscapes config. Replaced:
    ``my_cityscapes.yaml`` by a config of a fixture Cityscapes tree in the real layout (tests/fixture_trees.py)."""
    from fixture_trees import cityscapes

    root = cityscapes(tmp_path / "cityscapes", n=8)
    config = tmp_path / "my_cityscapes.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "cityscapes", "root": str(root), "eval_domains": []}}))
    command = ("hardseg train my_cityscapes.yaml --set train.iters=40000 --set train.epochs=null "
               "--set train.optimizer=sgd --set train.lr=0.01 --set train.min_lr=1e-4 --set train.weight_decay=5e-4 "
               "--set train.eval_interval=4000 --set train.batch_size=2 --set ray.num_workers=4 --dry-run")
    assert cli(documented_argv(command, replace={"my_cityscapes.yaml": str(config)})) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "[hardseg] schedule: 40000 iterations" in out and "40000: 0.0001" in out, out[-2000:]
    assert "evaluate after iteration " + ", ".join(str(4000 * k) for k in range(1, 11)) in out, out[-2000:]


def test_documented_plan_prints_the_seeds_and_gpu_hours(tmp_path):
    """docs/usage.md: ``hardseg plan`` from a given σ (the issue's numbers), through the installed script."""
    command = ("hardseg plan --sigma 0.5 --delta 0.9 --strategies 4 --metric-count 3 --iterations 40000 "
               "--seconds-per-iter 0.5 --gpus 4 --simulate 20000")
    done = run_documented(command, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "13" in done.stdout and "1,444" in done.stdout.replace("1444", "1,444"), done.stdout[-2000:]


def test_documented_recipe_dry_run(capsys):
    """docs/usage.md "Recipes". Added: ``model.pretrained=none`` (the recipe's ImageNet ResNetV1c is not
    cached here and nothing is downloaded in tests)."""
    command = "hardseg train recipe:pspnet_r50_d8_769x769_40k_cityscapes --set strategies=[hl] --dry-run"
    assert cli(documented_argv(command, "--set", "model.pretrained=none")) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "[hardseg] expects 4 GPU(s)" in out and "lr at iteration 0: 0.01" in out, out[-2000:]
