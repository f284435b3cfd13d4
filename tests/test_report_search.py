"""The "Search" part of ``hardseg report`` (best trials, Optuna importances, slice plot) and the HL maps,
on a real SQLite MLflow store filled as a hardseg sweep logs it (parent ``space.*`` params, children's
``sampled.*`` tags, HL panels logged with ``log_image(key="hl_panel", step=epoch)``)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import optuna
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from PIL import Image

from hardseg.reports import search
from hardseg.reports.collect import runs_frame
from hardseg.reports.images import best_hl_run, image_steps, latest_image
from hardseg.reports.publish import write_report

SPACE = {"strategies": {"categorical": ["ce", "hl"]}, "train.lr": {"loguniform": [1e-4, 1e-1]},
         "strategy_params.hl.lam": {"loguniform": [1e-3, 1e-1], "when": ["hl"]},
         "train.batch_size": {"categorical": [8]}}
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def _miou(lr: float, strategy: str) -> float:
    """Only the learning rate matters (a peak at 3e-3); the strategy adds nothing."""
    return 0.7 - 0.05 * abs(math.log10(lr) - math.log10(3e-3))


def _panel(step: int) -> np.ndarray:
    img = np.zeros((16, 64, 3), dtype=np.uint8)
    img[:, : 16 * step] = 200  # each epoch's panel differs, so the test can tell which one came back
    return img


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp_id = client.create_experiment("hardseg", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="s", tags={"hardseg.kind": "sweep", "hardseg.sweep": "s"}).info.run_id
    params = {f"space.{k}": json.dumps(v) for k, v in SPACE.items()} | {"sweep.metric": "val/miou", "sweep.mode": "max"}
    client.log_batch(parent, params=[Param(k, v) for k, v in params.items()])
    runs = {}
    for i, (strategy, lr) in enumerate([(s, lr) for s in ("ce", "hl") for lr in LRS]):
        tags = {"mlflow.parentRunId": parent, "hardseg.trial_id": f"t{i}", "hardseg.sweep": "s",
                "sampled.strategies": strategy, "sampled.train.lr": repr(lr), "sampled.train.batch_size": "8"}
        if strategy == "hl":
            tags["sampled.strategy_params.hl.lam"] = repr(10 ** (-3 + (i % 3)))
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param("strategies", str([strategy]))], tags=[RunTag("hardseg.seed", "0")])
        client.log_batch(run_id, metrics=[Metric("val/miou", _miou(lr, strategy), int(time.time() * 1000), 2)])
        if strategy == "hl":
            for step in (1, 2):
                client.log_image(run_id, _panel(step), key="hl_panel", step=step)
        status = "KILLED" if lr == 1e-2 else "FINISHED"  # a stopped trial is counted but not ranked
        client.set_terminated(run_id, status)
        runs[(strategy, lr)] = run_id
    client.set_terminated(parent, "FINISHED")
    return client, client.get_run(parent), runs


def test_distributions_from_the_parent_run(sweep):
    _, parent, _ = sweep
    dists = search.distributions(parent.data.params)
    assert set(dists) == {"strategies", "train.lr", "strategy_params.hl.lam"}  # the one-choice categorical is fixed
    assert dists["train.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["strategies"] == optuna.distributions.CategoricalDistribution(("ce", "hl"))


def test_importances_rank_the_parameter_that_matters(sweep):
    client, parent, _ = sweep
    df = runs_frame(client, parent)
    dists = search.distributions(parent.data.params)
    overall = search.importances(df, dists, "val/miou")
    assert set(overall) == {"strategies", "train.lr"}  # hl.lam is not in every trial
    assert sum(overall.values()) == pytest.approx(1.0) and overall["train.lr"] > 0.9
    hl = search.importances(df[df["strategies"] == "hl"], dists, "val/miou",
                            params=["train.lr", "strategy_params.hl.lam"])
    assert hl["train.lr"] > hl["strategy_params.hl.lam"]
    assert search.importances(df.head(2), dists, "val/miou") is None  # too few trials


def test_best_trials_and_search_section(sweep):
    client, parent, runs = sweep
    df = runs_frame(client, parent)
    best = search.best_trials(df, "val/miou", k=3)
    assert list(best["val/miou"]) == sorted(best["val/miou"], reverse=True)
    assert best.iloc[0]["train.lr"] == pytest.approx(3e-3) and "strategy_params.hl.lam" in best.columns
    killed = set(df.loc[df["status"] == "KILLED", "trial_id"])
    assert len(killed) == 2 and not killed & set(search.best_trials(df, "val/miou", k=12)["trial_id"])
    md = search.search_markdown(df, search.distributions(parent.data.params), "val/miou")
    assert "10 of 12 trials FINISHED" in md and "| all (10) | `train.lr` |" in md
    assert "| hl (5) | `train.lr` |" in md and "| hl (5) | `strategy_params.hl.lam` |" in md


def test_hl_maps_of_the_best_hl_run(sweep, tmp_path):
    client, parent, runs = sweep
    df = runs_frame(client, parent)
    best = best_hl_run(df)
    assert best["run_id"] == runs[("hl", 3e-3)]
    assert set(image_steps(client, best["run_id"], "hl_panel")) == {1, 2}
    path, step = latest_image(client, best["run_id"], "hl_panel", tmp_path / "hl.png")
    assert step == 2 and np.array_equal(np.asarray(Image.open(path).convert("RGB")), _panel(2))
    assert latest_image(client, runs[("ce", 3e-3)], "hl_panel", tmp_path / "none.png") is None


def test_published_report_has_search_and_hl_maps(sweep, tmp_path):
    client, parent, _ = sweep
    paths = write_report(client, parent, tmp_path / "out")
    assert {"slice_png", "hl_maps_png", "html"} <= set(paths)
    md = paths["markdown"].read_text()
    assert "## Search" in md and "### Parameter importances" in md and "## HL maps" in md
    page = paths["html"].read_text()
    assert page.count("<img") == len([k for k in paths if k.endswith("_png")]) and "HL maps of the best HL run" in page
    with Image.open(paths["slice_png"]) as im:
        assert np.asarray(im.convert("L"), dtype=float).std() > 5.0
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/slice.png", "report/hl_maps.png"} <= listed
