"""One model per report row: every table reads the checkpoint each run selected (best-by-val), never its
last epoch, on a real SQLite MLflow store logged as the training loop logs it."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from hardseg.reports.collect import BEST_BY_VAL, FROM_HISTORY, NEVER_EVALUATED, runs_frame
from hardseg.reports.markdown import build_report
from hardseg.reports.tables import mean_cell

BEST = {"ce": {0: 0.70, 1: 0.72, 2: 0.71}, "hl": {0: 0.74, 1: 0.73, 2: 0.77}}  # val/miou at the best epoch (2)
LAST_DROP = 0.06  # the last epoch (3) is worse than the best one by this much
FOG = 0.5  # fog-1/miou of the best model = FOG * its val/miou: robustness fog = FOG exactly
TEST_SHIFT = -0.02  # test/miou of the best model = its val/miou + TEST_SHIFT


def _val(miou: float) -> dict[str, float]:
    return {"val/miou": miou, "val/band_iou": miou - 0.3}


def _log(client: MlflowClient, run_id: str, step: int, metrics: dict[str, float]) -> None:
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-checkpoint")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp_id = client.create_experiment("hardseg", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="ck", tags={"hardseg.kind": "ablation", "hardseg.sweep": "ck"})
    pid = parent.info.run_id

    def child(trial: str, strategy: str, seed: int) -> str:
        return client.create_run(exp_id, tags={"mlflow.parentRunId": pid, "hardseg.sweep": "ck",
                                               "hardseg.trial_id": trial, "hardseg.strategies": strategy,
                                               "hardseg.seed": str(seed)}).info.run_id

    for strategy, seeds in BEST.items():
        for seed, best in seeds.items():
            run_id = child(f"{strategy}{seed}", strategy, seed)
            _log(client, run_id, 1, _val(best - 0.1))
            _log(client, run_id, 2, _val(best))
            # the last epoch: its own val/*, and the best epoch's model on val (best/), a domain and test
            _log(client, run_id, 3, {**_val(best - LAST_DROP), "best/epoch": 2,
                                     **{f"best/{k}": v for k, v in _val(best).items()},
                                     "fog-1/miou": FOG * best, "robustness/fog/miou": FOG,
                                     "test/miou": best + TEST_SHIFT})
            client.set_terminated(run_id, "FINISHED")
    killed = child("killed", "hl", 3)  # stopped by a scheduler after epoch 2: no best/ record
    _log(client, killed, 1, _val(0.50))
    _log(client, killed, 2, _val(0.40))
    client.set_tag(killed, "hardseg.stop_reason", "stopped by the ASHA scheduler after epoch 2 of 3")
    client.set_terminated(killed, "KILLED")
    failed = child("failed", "ce", 3)  # failed before any evaluation
    _log(client, failed, 1, {"train/loss": 1.0})
    client.set_tag(failed, "hardseg.error", "NonFiniteLoss: the loss became nan at epoch 1")
    client.set_terminated(failed, "FAILED")
    client.set_terminated(pid, "FINISHED")
    return client, client.get_run(pid)


def test_each_row_is_its_selected_checkpoint(store):
    client, parent = store
    df = runs_frame(client, parent).set_index("trial_id")
    for strategy, seeds in BEST.items():
        for seed, best in seeds.items():
            row = df.loc[f"{strategy}{seed}"]
            assert (row.checkpoint, row.checkpoint_step, row.checkpoint_unit, row.epochs) == (BEST_BY_VAL, 2, "epoch", 3)
            assert row["val/miou"] == pytest.approx(best) and row["val/band_iou"] == pytest.approx(best - 0.3)
    killed, failed = df.loc["killed"], df.loc["failed"]
    assert (killed.checkpoint, killed.checkpoint_step) == (FROM_HISTORY, 1)
    assert killed["val/miou"] == pytest.approx(0.50) and killed["val/band_iou"] == pytest.approx(0.20)
    assert failed.checkpoint == NEVER_EVALUATED and np.isnan(failed["val/miou"])


def test_every_table_reads_the_best_checkpoint(store):
    client, parent = store
    df, table, markdown = build_report(client, parent)
    assert ("Checkpoint: every figure of a run (val, every domain, robustness, test) comes from one model: "
            "best-by-val checkpoint, evaluation at epoch 2 (6 FINISHED runs).") in markdown
    assert "Never evaluated (no val/miou, no figure): failed (FAILED)." in markdown
    for strategy, seeds in BEST.items():
        best = np.array(list(seeds.values()))
        cells = {m: table.loc[strategy, m].to_dict() for m in ("val/miou", "test/miou", "fog-1/miou")}
        assert cells["val/miou"]["mean"] == pytest.approx(best.mean())  # not the last epoch's best - 0.06
        assert cells["test/miou"]["mean"] == pytest.approx(best.mean() + TEST_SHIFT)
        assert cells["fog-1/miou"]["mean"] == pytest.approx(FOG * best.mean())
        val_text = mean_cell(cells["val/miou"], 3, best=False)
        val_row = next(line for line in markdown[:markdown.index("## Cross-domain")].splitlines()
                       if line.startswith(f"| {strategy} |"))
        assert val_row.split(" | ")[2].replace("**", "") == val_text
        # the cross-domain table: clean = the same model's val mIoU, robustness = its fog / its clean
        cross = next(line for line in markdown[markdown.index("## Cross-domain"):].splitlines()
                     if line.startswith(f"| {strategy} |")).strip("| ").split(" | ")
        assert cross[2] == val_text and cross[-1].startswith("1.000" if FOG == 1 else f"{FOG:.3f} ± 0.000")
    last = {s: np.mean([b - LAST_DROP for b in seeds.values()]) for s, seeds in BEST.items()}
    assert all(f"{v:.3f} ±" not in markdown for v in last.values())  # no last-epoch mean anywhere
    assert "best-by-val checkpoint (the model every table of this report reads" in markdown
