"""Bad input: one-line error naming the thing to fix, exit status 2, nothing in MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardseg.platform.cli import main as cli


def _no_runs(uri: str) -> bool:
    path = Path(uri[len("sqlite:///"):])
    if not path.exists():
        return True
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def _one_line(capsys, argv):
    rc = cli(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _check(capsys, argv, *needles):
    line = _one_line(capsys, argv)
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _check_both(capsys, argv, *needles):
    """:func:`_check`, and the command's ``--dry-run`` fails with the identical line, exit 2 (a dry run prepares
    as the command does: hardseg/platform/prepare.py; tests/test_dry_run_equivalence.py)."""
    line = _check(capsys, argv, *needles)
    assert _one_line(capsys, [*argv, "--dry-run"]) == line, "the dry run accepts what the command refuses"
    return line


@pytest.mark.parametrize("override, needles", [
    ("train.epochz=3", ["unknown key 'train.epochz'"]),
    ("bogus=1", ["unknown key 'bogus'"]),
    ("train.epochs=many", ["'train.epochs'"]),
    ("train.optimizer=adam", ["'train.optimizer'", "'sgd'", "'adamw'"]),
    ("model.name=unet9000", ["unknown model 'unet9000'", "tiny_seg"]),
    ("strategies=[ce,nonsense]", ["unknown strategy 'nonsense'", "ce"]),
    ("data.dataset=imagenet", ["'data.dataset'", "synthetic"]),
    ("strategy_params.ce.aux_weight=-1", ["strategy_params.ce.aux_weight"]),
    ("strategy_params.hl.lam=0.1", ["strategy_params.hl", "'hl' is not in 'strategies'"]),
    ("model.aux_weight=-1", ["'model.aux_weight'"]),
    ("train.batch_size=0", ["'train.batch_size'"]),
])
def test_bad_config_is_one_line_exit_2_and_nothing_logged(capsys, sqlite_uri, override, needles):
    _check_both(capsys, ["train", "--set", override, "--tracking-uri", sqlite_uri], *needles)
    assert _no_runs(sqlite_uri)


def test_bad_yaml_file_and_missing_file(capsys, tmp_path, sqlite_uri):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    _check_both(capsys, ["train", str(bad), "--tracking-uri", sqlite_uri], str(bad), "YAML")
    _check_both(capsys, ["train", str(tmp_path / "nope.yaml"), "--tracking-uri", sqlite_uri], "nope.yaml")
    _check_both(capsys, ["train", "--set", "train.epochs", "--tracking-uri", sqlite_uri], "KEY=VALUE")
    assert _no_runs(sqlite_uri)


def test_sweep_counts_below_one(capsys, sqlite_uri):
    """The space's settings validate assignments (strict.Strict): a count the CLI sets is checked too."""
    for flag in ("--num-samples", "--max-concurrent"):
        _check(capsys, ["sweep", "quickstart", flag, "-1", "--dry-run", "--tracking-uri", sqlite_uri],
               f"{flag} must be at least 1, got -1")
    assert _no_runs(sqlite_uri)


def test_missing_dataset(capsys, tmp_path, sqlite_uri):
    _check_both(capsys, ["train", "--set", "data.dataset=folder", "--set", f"data.root={tmp_path / 'absent'}",
                         "--tracking-uri", sqlite_uri], str(tmp_path / "absent"))
    assert _no_runs(sqlite_uri)


def _folder_dataset(root: Path, bad_value: int | None = None) -> None:
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    (root / "classes.yaml").write_text("classes: [background, thing, other]\n")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / split / f"im{i}.png")
            mask = rng.integers(0, 3, (32, 32), dtype=np.uint8)
            if bad_value is not None and split == "train" and i == 2:
                mask[5, 5] = bad_value
            Image.fromarray(mask).save(root / "masks" / split / f"im{i}.png")


def test_label_id_out_of_range_names_the_file(capsys, tmp_path, sqlite_uri):
    _folder_dataset(tmp_path / "ds", bad_value=7)
    line = _check_both(capsys, ["train", "--set", "data.dataset=folder", "--set", f"data.root={tmp_path / 'ds'}",
                                "--set", "data.eval_domains=[]", "--tracking-uri", sqlite_uri], "im2.png", "7")
    assert "masks" in line
    assert _no_runs(sqlite_uri)


def test_unknown_eval_domain(capsys, data_root, sqlite_uri):
    from conftest import small_overrides

    args = ["train"]
    for o in small_overrides(data_root, **{"data.eval_domains": "[fog-9]"}):
        args += ["--set", o]
    _check_both(capsys, args + ["--tracking-uri", sqlite_uri], "fog-9")
    assert _no_runs(sqlite_uri)


@pytest.mark.parametrize("strategy, key, value", [
    ("coarse_to_fine", "skip", "layer9"),
    ("coarse_to_fine", "mid_skip", "layer9"),
    ("self_regulation", "exits", "[stem,layer9]"),
])
def test_strategy_setting_that_does_not_fit_the_model(capsys, data_root, sqlite_uri, strategy, key, value):
    """Checked on the driver against the model (meta device) before any run exists."""
    from conftest import small_overrides

    args = ["train"]
    for o in small_overrides(data_root, **{"strategies": f"[{strategy}]",
                                           f"strategy_params.{strategy}.{key}": value}):
        args += ["--set", o]
    _check_both(capsys, args + ["--tracking-uri", sqlite_uri], f"strategy_params.{strategy}.{key}", "layer9", "stage4")
    assert _no_runs(sqlite_uri)


def test_sweep_checks_every_strategy_choice_against_the_model(capsys, data_root, tmp_path, sqlite_uri):
    from conftest import small_overrides

    space = tmp_path / "space.yaml"
    space.write_text("base:\n  strategy_params.coarse_to_fine.skip: layer9\n"
                     "params:\n  strategies: {categorical: [ce, coarse_to_fine]}\n"
                     "sweep: {num_samples: 2, metric: val/miou, mode: max}\n")
    args = ["sweep", str(space), "--tracking-uri", sqlite_uri]
    for o in small_overrides(data_root):
        args += ["--set", o]
    _check_both(capsys, args, "strategy_params.coarse_to_fine.skip", "layer9")
    assert _no_runs(sqlite_uri)


@pytest.mark.parametrize("model", ["tiny_seg", "lraspp_mobilenet_v3_large", "deeplabv3_resnet50"])
def test_every_strategy_passes_the_driver_side_check(model):
    from hardseg.config import load_config
    from hardseg.strategies.build import check_strategies_fit

    for name in ["ce", "cb_ce", "focal", "ohem", "hl", "self_regulation", "coarse_to_fine"]:
        check_strategies_fit(load_config(None, [f"strategies=[{name}]", f"model.name={model}"]))
    check_strategies_fit(load_config(None, ["strategies=[focal,cb_ce,ohem,hl,self_regulation,coarse_to_fine]"]))


@pytest.mark.parametrize("argv, status, out, err", [
    (["--help"], 0, "usage: hardseg", ""),
    (["no-such-command"], 2, "", "invalid choice: 'no-such-command'"),
    (["train", "--set", "train.epochs=abc"], 2, "", "error: default config: invalid value 'abc' for 'train.epochs'"),
])
def test_the_script_exits_with_the_commands_status_and_all_its_output(argv, status, out, err, tmp_path):
    """The installed ``hardseg`` (``cli.entry_point``, which ends the process with ``os._exit``): the
    status of ``main`` or of argparse, stdout and stderr flushed in full to a pipe."""
    import subprocess
    import sys

    done = subprocess.run([str(Path(sys.executable).parent / "hardseg"), *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == status, done
    assert out in done.stdout and err in done.stderr, done
    assert all(text.endswith("\n") for text in (done.stdout, done.stderr) if text), done  # nothing cut off
