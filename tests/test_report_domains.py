"""The report's cross-domain matrix, from a real SQLite MLflow store, against hand-computed values."""

from __future__ import annotations

import math
import time

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from scipy import stats

from hardseg.reports.collect import runs_frame
from hardseg.reports.domains import domain_columns, with_robustness
from hardseg.reports.markdown import build_report
from hardseg.reports.tables import default_metrics

T_975_1 = 12.706204736174707  # Student t, 0.975 quantile, 1 degree of freedom

# final metrics of each trial, as the loop logs them at its last epoch (best-epoch model on the domains)
RUNS = [
    ("ce", 0, "FINISHED", {"val/miou": 0.78, "best/val/miou": 0.80, "fog-1/miou": 0.62, "fog-3/miou": 0.40,
                           "night-3/miou": 0.56, "target/miou": 0.30}),
    ("ce", 1, "FINISHED", {"val/miou": 0.70, "best/val/miou": 0.70, "fog-1/miou": 0.56, "fog-3/miou": 0.35,
                           "night-3/miou": 0.35, "target/miou": 0.35}),
    ("hl", 0, "FINISHED", {"val/miou": 0.74, "best/val/miou": 0.75, "fog-1/miou": 0.60, "fog-3/miou": 0.45,
                           "night-3/miou": 0.60, "target/miou": 0.20}),
    ("ce", 2, "FAILED", {"val/miou": 0.10, "best/val/miou": 0.10, "fog-1/miou": 0.9}),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-domains")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp_id = client.create_experiment("hardseg", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="xd", tags={"hardseg.kind": "ablation", "hardseg.sweep": "xd"})
    ts = int(time.time() * 1000)
    for i, (strategy, seed, status, metrics) in enumerate(RUNS):
        run_id = client.create_run(exp_id, tags={"mlflow.parentRunId": parent.info.run_id, "hardseg.sweep": "xd",
                                                 "hardseg.trial_id": f"t{i}", "hardseg.strategies": strategy,
                                                 "hardseg.seed": str(seed)}).info.run_id
        logged = dict(metrics)
        if "fog-3/miou" in metrics:  # what the loop also logs; the report recomputes it with the same formula
            logged["robustness/fog/miou"] = (metrics["fog-1/miou"] + metrics["fog-3/miou"]) / 2 / metrics["best/val/miou"]
        client.log_batch(run_id, metrics=[Metric(k, v, ts, 3) for k, v in logged.items()])
        client.set_terminated(run_id, status)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return client, client.get_run(parent.info.run_id)


def test_robustness_per_run_by_hand(store):
    client, parent = store
    df = runs_frame(client, parent)
    assert domain_columns(df) == ["fog-1/miou", "fog-3/miou", "night-3/miou", "target/miou"]
    assert "robustness/fog/miou" not in default_metrics(df) and "target/miou" in default_metrics(df)
    frame, names = with_robustness(df)
    assert names == ["robustness/fog/miou", "robustness/night/miou"]
    # fog: (fog-1 + fog-3) / 2 / clean; night: night-3 / clean; clean = best/val/miou
    hand = {("ce", 0): (0.80, (0.62 + 0.40) / 2 / 0.80, 0.56 / 0.80),
            ("ce", 1): (0.70, (0.56 + 0.35) / 2 / 0.70, 0.35 / 0.70),
            ("hl", 0): (0.75, (0.60 + 0.45) / 2 / 0.75, 0.60 / 0.75)}
    for key, (clean, fog, night) in hand.items():
        row = frame[(frame.strategies == key[0]) & (frame.seed == key[1])].iloc[0]
        assert row["clean"] == pytest.approx(clean)
        assert row["robustness/fog/miou"] == pytest.approx(fog) == pytest.approx(
            df.loc[row.name, "robustness/fog/miou"])  # the logged value, same formula
        assert row["robustness/night/miou"] == pytest.approx(night)


def test_cross_domain_section_by_hand(store):
    client, parent = store
    _, _, markdown = build_report(client, parent)
    section = markdown[markdown.index("## Cross-domain"):].splitlines()
    header = next(line for line in section if line.startswith("| strategy"))
    assert header == ("| strategy | seeds | clean (val miou) | fog-1 | fog-3 | night-3 | target | robustness fog "
                      "| robustness night |")
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in section if line.startswith("| ce")
            or line.startswith("| hl")}
    ce, hl = rows["ce"], rows["hl"]
    assert ce[1] == "2"  # the FAILED seed is left out

    def cell(a: float, b: float) -> str:
        half = T_975_1 * abs(a - b) / 2  # two values: s/√2 = |a - b| / 2
        return f"{(a + b) / 2:.3f} ± {half:.3f}"

    assert ce[2] == cell(0.80, 0.70) == "0.750 ± 0.635"
    assert ce[3:7] == [cell(0.62, 0.56), cell(0.40, 0.35), cell(0.56, 0.35), cell(0.30, 0.35)]
    fog = ((0.62 + 0.40) / 2 / 0.80, (0.56 + 0.35) / 2 / 0.70)  # 0.6375, 0.65
    assert ce[7] == cell(*fog) == "0.644 ± 0.079"
    assert ce[8] == cell(0.56 / 0.80, 0.35 / 0.70) == "0.600 ± 1.271"
    assert hl[1] == "1" and hl[2] == "0.750 ± n/a (1 seed)" and hl[7] == "0.700 ± n/a (1 seed)"
    assert hl[8] == "0.800 ± n/a (1 seed)"
    assert math.isclose(T_975_1, stats.t.ppf(0.975, 1))


def test_report_of_many_metric_columns_raises_no_performance_warning(tmp_path):
    """A demo-sized run logs hundreds of metrics (per-class IoU on every domain): the report's frames
    stay in one piece, so pandas prints no PerformanceWarning into the demo's console."""
    import warnings

    from pandas.errors import PerformanceWarning

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = client.create_experiment("hardseg", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp_id, tags={"hardseg.kind": "ablation", "hardseg.sweep": "wide"}).info.run_id
    ts = int(time.time() * 1000)
    domains = ["val", "best/val", *(f"{f}-{s}" for f in ("fog", "night", "noise", "blur") for s in (1, 3, 5)), "target"]
    for i, (strategy, seed) in enumerate([(s, k) for s in ("ce", "hl") for k in (0, 1, 2)]):
        run_id = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "hardseg.trial_id": f"t{i}",
                                                 "hardseg.strategies": strategy, "hardseg.seed": str(seed)}).info.run_id
        metrics = [Metric(f"{d}/{m}", 0.5 + 0.01 * j + 0.02 * ((7 * i + len(d)) % 5), ts, 4) for d in domains
                   for j, m in enumerate(["miou", "band_iou", "small_iou", "thin_iou", *(f"iou/c{c}" for c in range(8))])]
        for start in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[start:start + 500])
        client.set_terminated(run_id, "FINISHED")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        _, _, markdown = build_report(client, client.get_run(parent))
    assert "## Cross-domain" in markdown
