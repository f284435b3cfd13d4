"""A ``--dry-run`` accepts exactly what the real command accepts (hardseg/platform/prepare.py: every driver and
every dry run prepare through ``prepare_run``/``prepare_sweep``).

Every bad input of tests/test_cli_errors.py is checked there in both forms (its ``_check_both``: the identical
``error:`` line, exit 2). Here, in both forms: the sweep and ablation inputs that only the real command refused
before the drivers shared one preparation path (a ``--set`` on a grid key or on the settings of a strategy no
trial has, an existing sweep name), and the other sweep-level checks. Not equivalent by design: what needs the
machine the run will have (its GPUs, tests/test_resources.py; a dataset root that is not on this machine)."""

from __future__ import annotations

import pytest

from test_cli_errors import _check_both, _no_runs


@pytest.mark.parametrize("argv, needles", [
    (["ablate", "--strategies", "ce", "hl", "--set", "seed=3"], ["--set seed", "'seed' is a parameter of space"]),
    (["sweep", "hl", "--set", "strategy_params.ohem.thresh=0.5"], ["no trial of space hl uses 'ohem'"]),
    (["ablate", "--strategies", "ce", "hl", "--set", "strategy_params.focal.gamma=1"],
     ["no trial of space ablation uses 'focal'"]),
    (["sweep", "hl", "--set", "train.lr=0.1"], ["--set train.lr", "is a parameter of space hl"]),
    (["ablate", "--strategies", "ce", "nonsense"], ["unknown strategy 'nonsense'"]),
    (["ablate", "--strategies", "ce", "--name", "bad/name"], ["invalid sweep name 'bad/name'"]),
    (["sweep", "quickstart", "--name", "taken"], ["sweep 'taken' already exists"]),
])
def test_sweep_inputs_fail_alike_in_both_forms(capsys, tmp_path, monkeypatch, sqlite_uri, argv, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hardseg-runs" / "sweeps" / "taken").mkdir(parents=True)  # ray.storage_path's default, relative
    _check_both(capsys, [*argv, "--tracking-uri", sqlite_uri], *needles)
    assert _no_runs(sqlite_uri)


def test_tracking_uri_of_the_config_fails_alike_in_both_forms(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check_both(capsys, ["sweep", "hl", "--set", "tracking.uri=ftp://host/x"], "tracking URI 'ftp://host/x'")
    assert list(tmp_path.iterdir()) == []
