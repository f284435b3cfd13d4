"""``hardseg report`` on a real SQLite MLflow store filled exactly as a hardseg ablation logs it."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from scipy import stats as sp

from hardseg.platform.cli import main as cli
from hardseg.reports import collect, stats
from hardseg.reports.collect import ReportError, find_parent, runs_frame
from hardseg.reports.markdown import write_report
from hardseg.reports.tables import ablation_table, parquet_safe, to_markdown

from documented import documented_argv

NAME = "abl-test"
EPOCHS = 3
CLASSES = ["background", "pole", "sign"]
# final val/miou per strategy and seed (FINISHED runs)
MIOU = {
    "ce": {0: 0.700, 1: 0.710, 2: 0.690, 3: 0.705},
    "hl": {0: 0.712, 1: 0.708, 2: 0.700},  # Δ vs ce: +0.012, -0.002, +0.010 -> not significant
    "ohem": {0: 0.730, 1: 0.741, 2: 0.722},  # Δ: +0.030, +0.031, +0.032 -> significant
    "focal": {0: 0.695},  # one seed
}
FAILED = ("hl", 3, "TrainingError: the loss became nan at epoch 2")
KILLED = ("ohem", 3, "stopped by the ASHA scheduler after epoch 1 of 3")


def _band(strategy: str, seed: int) -> float:
    return MIOU[strategy][seed] - 0.2 + 0.001 * seed


def _epoch_metrics(value: float, band: float, epoch: int) -> dict[str, float]:
    shift = 0.05 * (EPOCHS - epoch)  # earlier epochs are worse: the report must take the last one
    m = {"train/loss": 1.0 / epoch, "val/miou": value - shift, "val/band_iou": band - shift,
         "val/small_iou": 0.4, "val/small_recall": 0.5, "val/thin_iou": 0.3, "val/pixel_acc": 0.9}
    m.update({f"val/iou/{c}": value for c in CLASSES})
    if epoch == EPOCHS:  # eval domains at the last epoch
        m.update({f"fog-3/{k[4:]}": v - 0.1 for k, v in m.items() if k.startswith("val/")})
    return m


def _child(client: MlflowClient, exp_id: str, parent_id: str, trial: str, strategy: str, seed: int,
           status: str, epochs: int, reason: str | None = None) -> str:
    tags = {"mlflow.parentRunId": parent_id, "hardseg.kind": "ablation-trial", "hardseg.sweep": NAME,
            "hardseg.trial_id": trial, "hardseg.strategies": strategy, "hardseg.seed": str(seed),
            "hardseg.model": "tiny_seg", "mlflow.runName": f"{NAME}-{trial}"}
    run_id = client.create_run(exp_id, run_name=f"{NAME}-{trial}", tags=tags).info.run_id
    params = {"strategies": str([strategy]), "seed": seed, "train.lr": 0.003, "train.epochs": EPOCHS}
    if strategy == "hl":
        params["strategy_params.hl.lam"] = 0.5
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag("sampled.strategies", strategy), RunTag("sampled.seed", str(seed))])
    value = MIOU.get(strategy, {}).get(seed, 0.5)
    band = _band(strategy, seed) if seed in MIOU.get(strategy, {}) else 0.3
    ts = int(time.time() * 1000)
    for epoch in range(1, epochs + 1):
        client.log_batch(run_id, metrics=[Metric(k, v, ts, epoch)
                                          for k, v in _epoch_metrics(value, band, epoch).items()])
    if reason:
        key = "hardseg.error" if status == "FAILED" else "hardseg.stop_reason"
        client.set_tag(run_id, key, reason)
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(uri, client, parent run id, {(strategy, seed, status): run id}) of one ablation."""
    root = tmp_path_factory.mktemp("reports")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("hardseg", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name=NAME, tags={
        "hardseg.kind": "ablation", "hardseg.sweep": NAME, "mlflow.runName": NAME}).info.run_id
    client.log_batch(parent, params=[Param("space.strategies", '{"categorical": ["ce", "hl", "ohem", "focal"]}'),
                                     Param("sweep.metric", "val/miou"), Param("base.train.epochs", str(EPOCHS))])
    runs: dict[tuple[str, int, str], str] = {}
    i = 0
    for strategy, seeds in MIOU.items():
        for seed in seeds:
            runs[(strategy, seed, "FINISHED")] = _child(client, exp_id, parent, f"t{i:05d}", strategy, seed,
                                                        "FINISHED", EPOCHS)
            i += 1
    runs[FAILED[:2] + ("FAILED",)] = _child(client, exp_id, parent, "t_failed", *FAILED[:2], "FAILED", 1, FAILED[2])
    runs[KILLED[:2] + ("KILLED",)] = _child(client, exp_id, parent, "t_killed", *KILLED[:2], "KILLED", 1, KILLED[2])
    # another sweep, so "found:" lists more than one name and its children never leak in
    other = client.create_run(exp_id, run_name="other", tags={"hardseg.kind": "sweep", "hardseg.sweep": "other"})
    _child(client, exp_id, other.info.run_id, "o1", "ce", 0, "FINISHED", 1)
    client.set_terminated(parent, "FINISHED")
    return uri, client, parent, runs


@pytest.fixture(scope="module")
def frame(store) -> pd.DataFrame:
    _, client, parent, _ = store
    return runs_frame(client, client.get_run(parent))


def _ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval by hand: x̄ ± t_{0.975, n-1} s/√n."""
    x = np.array(values)
    half = sp.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_find_parent_by_name_and_id(store):
    _, client, parent, _ = store
    assert find_parent(client, NAME).info.run_id == parent
    assert find_parent(client, parent).info.run_id == parent
    with pytest.raises(ReportError, match=r"no sweep or ablation named 'nope'.*found: .*abl-test"):
        find_parent(client, "nope")
    with pytest.raises(ReportError, match="no MLflow experiment 'elsewhere'"):
        find_parent(client, NAME, experiment="elsewhere")


def test_find_parent_of_a_sweep_nested_under_a_nightly(tmp_path):
    """A nightly's (or a study's) sweeps are parents of their own trials: ``hardseg report NAME`` finds them."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = client.create_experiment("hardseg", artifact_location=(tmp_path / "artifacts").as_uri())
    nightly = client.create_run(exp_id, tags={"hardseg.kind": "nightly"}).info.run_id
    cell = client.create_run(exp_id, run_name="n-cell", tags={
        "hardseg.kind": "ablation", "hardseg.sweep": "n-cell", "mlflow.parentRunId": nightly}).info.run_id
    _child(client, exp_id, cell, "c1", "ce", 0, "FINISHED", 1)
    assert find_parent(client, "n-cell").info.run_id == cell
    assert find_parent(client, cell).info.run_id == cell
    with pytest.raises(ReportError, match="not the parent run"):
        find_parent(client, nightly)


def test_runs_frame_one_row_per_child_paginated(store, monkeypatch):
    _, client, parent, runs = store
    monkeypatch.setattr(collect, "PAGE", 5)  # 13 runs: three pages
    df = runs_frame(client, client.get_run(parent))
    assert len(df) == 13 and set(df["run_id"]) == set(runs.values())
    assert list(df.columns[:7]) == ["run_id", "trial_id", "strategies", "seed", "status", "reason", "epochs"]
    assert {"val/miou", "val/band_iou", "val/iou/pole", "fog-3/miou", "train/loss", "param:strategies",
            "param:seed"} <= set(df.columns)
    by_id = df.set_index("run_id")
    failed = by_id.loc[runs[("hl", 3, "FAILED")]]
    assert (failed.status, failed.reason, failed.epochs, failed.seed) == ("FAILED", FAILED[2], 1, 3)
    assert math.isnan(failed["fog-3/miou"])
    killed = by_id.loc[runs[("ohem", 3, "KILLED")]]
    assert (killed.status, killed.reason, killed.epochs) == ("KILLED", KILLED[2], 1)
    ok = by_id.loc[runs[("hl", 1, "FINISHED")]]
    assert ok["val/miou"] == pytest.approx(0.708) and ok.epochs == EPOCHS and pd.isna(ok.reason)
    assert ok["param:strategies"] == "hl" and ok["param:seed"] == 1 and ok.trial_id.startswith("t")


def _holm_by_hand(p: list[float]) -> list[float]:
    """Holm's step-down adjustment written out: sorted p_(j) · (m - j + 1), running max, capped at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - j) * p[i]))
        out[i] = running
    return out


def test_ablation_table_matches_hand_and_stats(frame):
    table = ablation_table(frame, ["val/miou", "val/band_iou"], baseline="ce")
    # the family: hl and ohem × 2 metrics are tested (3 paired seeds); focal's 2 Δs (1 seed) are not
    assert (table.attrs["correction"], table.attrs["tests"], table.attrs["comparisons"]) == ("holm", 4, 6)
    level = 0.05 / 6  # MDE and seeds needed at the correction's strictest per-test level
    assert table.attrs["family_alpha"] == pytest.approx(level)
    cells = [(s, m) for s in ("hl", "ohem") for m in ("val/miou", "val/band_iou")]
    raw = [table.loc[s, (m, "p_value")] for s, m in cells]
    for (s, m), adj in zip(cells, _holm_by_hand(raw)):
        assert table.loc[s, (m, "p_adj")] == pytest.approx(adj, rel=1e-12)
        assert table.loc[s, (m, "significant")] == (adj < 0.05) and table.loc[s, (m, "tested")]
    assert list(table.index) == ["ce", "hl", "ohem", "focal"]
    for s in ("ce", "hl", "ohem"):
        mean, low, high = _ci(list(MIOU[s].values()))
        row = table.loc[s, "val/miou"]
        assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((mean, low, high), rel=1e-12)
        assert row["n"] == len(MIOU[s])
    for s in ("hl", "ohem"):  # paired over seeds 0-2, the ones shared with ce (its seed 3 has no partner)
        a, b = list(MIOU[s].values()), [MIOU["ce"][k] for k in MIOU[s]]
        ref = sp.ttest_rel(a, b)
        row = table.loc[s, "val/miou"]
        assert row["n_pairs"] == 3
        assert row["delta"] == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
        assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
        sd = float(np.std(np.subtract(a, b), ddof=1))
        assert row["mde"] == pytest.approx(stats.min_detectable_difference(sd, 3, alpha=level), rel=1e-12)
        assert row["seeds_needed"] == max(3, stats.seeds_needed(row["delta"], sd, alpha=level))
        band = table.loc[s, "val/band_iou"]
        ref_band = stats.paired_test([_band(s, k) for k in MIOU[s]], [_band("ce", k) for k in MIOU[s]])
        assert band["p_value"] == pytest.approx(ref_band.p_value, rel=1e-12)
    assert not table.loc["hl", ("val/miou", "significant")] and table.loc["ohem", ("val/miou", "significant")]
    focal = table.loc["focal", "val/miou"]
    assert focal["mean"] == pytest.approx(0.695) and focal["ci_low"] is None and focal["n"] == 1
    assert focal["delta"] == pytest.approx(-0.005) and focal["p_value"] is None and focal["mde"] is None
    assert not focal["tested"] and not focal["significant"] and focal["p_adj"] is None
    assert table.loc["ce", ("val/miou", "delta")] is None
    assert table.attrs["seeds"] == {"ce": 4, "hl": 3, "ohem": 3, "focal": 1}
    assert all(type(table.loc["hl", ("val/miou", f)]) is int for f in ("n", "n_pairs", "seeds_needed"))
    assert {r["status"] for r in table.attrs["not_finished"]} == {"FAILED", "KILLED"}


def _row(md: str, strategy: str) -> list[str]:
    """The cells of the strategy's row in the first table of ``md``."""
    line = next(line for line in md.splitlines() if line.startswith(f"| {strategy} |"))
    return [c.strip() for c in line.strip()[1:-1].split(" | ")]


def test_markdown(frame):
    table = ablation_table(frame, ["val/miou", "fog-3/miou"], baseline="ce")
    md = to_markdown(table)
    assert "## val" in md and "## fog-3" in md
    hl, ohem, focal = (_row(md, s) for s in ("hl", "ohem", "focal"))
    p_hl, half_hl = table.loc["hl", ("val/miou", "p_value")], table.loc["hl", ("val/miou", "half_width")]
    adj_hl = table.loc["hl", ("val/miou", "p_adj")]
    mean_hl = np.mean(list(MIOU["hl"].values()))
    assert hl == ["hl", "3", f"{mean_hl:.3f} ± {half_hl:.3f}",
                  f"+0.007 (p={p_hl:.2g}, adj. p={adj_hl:.2g}, n.s.)"]  # no bold: neither best nor significant
    mean, _, high = _ci(list(MIOU["ohem"].values()))
    assert ohem[2] == f"**{mean:.3f}** ± {high - mean:.3f}"  # the best mean, the only bold
    assert ohem[3].endswith(", significant)") and "**" not in ohem[3]
    assert focal[2] == "0.695 ± n/a (1 seed)" and focal[3] == "-0.005 (1 paired seed: no test, needs ≥ 3)"
    assert _row(md, "ce")[3] == "baseline"
    assert md.startswith("Tests: 4 paired t-tests vs **ce** (α = 0.05), multiple-comparison correction: "
                         "Holm-Bonferroni (family-wise error rate) over all 4 tests")
    assert "2 of 6 differences have fewer than 3 paired seeds" in md
    # one power table for the whole report, not one paragraph per domain
    power = md.split("## Seeds and power", 1)[1].split("## Failed", 1)[0]
    assert md.count("## Seeds and power") == 1 and "MDE" in power
    hl_power = _row(power, "hl")
    mde, need = table.loc["hl", ("val/miou", "mde")], table.loc["hl", ("val/miou", "seeds_needed")]
    assert hl_power[:3] == ["hl", "3", f"{mde:.3f} / {need}"]
    assert _row(power, "focal")[:3] == ["focal", "1", "n/a / ≥ 3 (spread unknown)"]
    assert "Fewer seeds than others: hl (3 of 4), ohem (3 of 4), focal (1 of 4)" in md
    failed_section = md.split("## Failed or stopped runs", 1)[1]
    assert "| t_failed | hl | 3 | FAILED | TrainingError: the loss became nan at epoch 2 |" in failed_section
    assert "| t_killed | ohem | 3 | KILLED | stopped by the ASHA scheduler after epoch 1 of 3 |" in failed_section


def test_table_without_baseline_or_with_duplicates():
    df = pd.DataFrame({"run_id": list("abcd"), "trial_id": list("abcd"), "strategies": ["hl", "hl", "hl", "ohem"],
                       "seed": pd.array([0, 0, 1, 0], dtype="Int64"), "status": ["FINISHED"] * 4,
                       "reason": [None] * 4, "epochs": pd.array([2] * 4, dtype="Int64"),
                       "val/miou": [0.5, 0.7, 0.4, float("nan")]})
    table = ablation_table(df, ["val/miou"], baseline="ce")
    assert table.loc["hl", ("val/miou", "mean")] == pytest.approx((0.6 + 0.4) / 2)  # seed 0 averaged
    assert table.loc["ohem", ("val/miou", "n")] == 0  # NaN is no value
    md = to_markdown(table)
    assert "Baseline 'ce' has no FINISHED run" in md and "averaged per seed): hl" in md
    assert "n/a (no finished run)" in _row(md, "ohem") and "None: every run FINISHED." in md


def test_parquet_safe_mixed_columns(tmp_path):
    df = pd.DataFrame({"a": [1, 0.5, None], "b": [1, "x", None], "c": ["x", "y", None]}, dtype=object)
    with pytest.raises(Exception):  # what parquet_safe is for
        df.to_parquet(tmp_path / "raw.parquet", engine="pyarrow")
    parquet_safe(df).to_parquet(tmp_path / "safe.parquet", engine="pyarrow")
    back = pd.read_parquet(tmp_path / "safe.parquet")
    assert back["a"].tolist()[:2] == [1.0, 0.5] and back["b"].tolist()[:2] == ["1", "x"]
    assert back["c"].tolist()[:2] == ["x", "y"] and back.iloc[2].isna().all()


def test_write_report_files_and_artifacts(store, tmp_path):
    _, client, parent, _ = store
    paths = write_report(client, client.get_run(parent), tmp_path / "out", metrics=["val/miou", "val/band_iou"])
    assert paths["markdown"].read_text().startswith(f"# hardseg report: {NAME}")
    back = pd.read_parquet(paths["parquet"])
    assert len(back) == 13 and {"run_id", "status", "reason", "seed", "val/miou", "param:strategies"} <= set(back)
    assert back["seed"].dropna().astype(int).isin([0, 1, 2, 3]).all()
    listed = {a.path for a in client.list_artifacts(parent, "report")}
    assert listed == {"report/report.md", "report/runs.parquet"}
    with pytest.raises(ReportError, match="no run of this sweep logged val/nope"):
        write_report(client, client.get_run(parent), tmp_path / "x", metrics=["val/nope"])
    with pytest.raises(ReportError, match="baseline 'sgd'"):
        write_report(client, client.get_run(parent), tmp_path / "x", baseline="sgd", require_baseline=True)
    assert not (tmp_path / "x").exists()


def _one_line_error(capsys, argv) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_report(store, tmp_path, capsys):
    uri, client, parent, _ = store
    out = tmp_path / "r"
    # README's step 3 as written, on this store's ablation (named NAME here); added: --tracking-uri, --out
    assert cli(documented_argv("hardseg report my-ablation", "--tracking-uri", uri, "--out", str(out),
                               replace={"my-ablation": NAME})) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "## val" in md and "## fog-3" in md and "small_iou" in md  # default metrics and eval domains
    assert "**0.400**" not in md and "**0.300**" not in md  # all means equal: no bold
    assert len(pd.read_parquet(out / "runs.parquet")) == 13
    line = _one_line_error(capsys, ["report", "nope", "--tracking-uri", uri])
    assert "no sweep or ablation named 'nope'" in line and NAME in line and "other" in line
    assert "val/nope" in _one_line_error(capsys, ["report", NAME, "--tracking-uri", uri, "--out", str(out),
                                                  "--metrics", "val/nope"])
    assert "baseline 'sgd'" in _one_line_error(capsys, ["report", NAME, "--tracking-uri", uri, "--out", str(out),
                                                        "--baseline", "sgd"])
    assert "unknown correction 'bonf'" in _one_line_error(capsys, ["report", NAME, "--tracking-uri", uri, "--out",
                                                                   str(tmp_path / "c"), "--correction", "bonf"])
    assert not (tmp_path / "c").exists()
    assert cli(["report", NAME, "--tracking-uri", uri, "--out", str(tmp_path / "bh"), "--correction", "bh"]) == 0
    bh = (tmp_path / "bh" / "report.md").read_text()
    assert "correction: Benjamini-Hochberg (false discovery rate)" in bh and "adj. p=" in bh
    assert bh.index("## Answer") < bh.index("## val")  # the answer before the tables
    missing = tmp_path / "none" / "mlflow.db"
    assert "no MLflow store" in _one_line_error(capsys, ["report", NAME, "--tracking-uri", f"sqlite:///{missing}"])
    assert not missing.exists()


def test_reports_import_neither_torch_nor_ray():
    code = ("import sys, hardseg.reports as r, hardseg.platform.cli; r.write_report; r.find_parent; "
            "assert not {'torch', 'ray'} & set(sys.modules), sorted({'torch', 'ray'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)
