"""``hardseg nightly``: the regression rule on hand-made numbers, and three real nightlies on one MLflow store."""

from __future__ import annotations

import json
import math
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient
from scipy import stats

from hardseg.platform.cli import main as cli
from hardseg.platform.nightly import previous_nightly
from hardseg.reports.regression import Key, compare_nights

from conftest import small_overrides

MODES = {"val/miou": "max", "train/loss": "min"}


def _key(strategy: str = "ce", metric: str = "val/miou") -> Key:
    return Key(strategy, "tiny", "synth", metric)


def _one(prev: dict, cur: dict, metric: str = "val/miou", **kw):
    [c] = compare_nights({_key(metric=metric): prev}, {_key(metric=metric): cur}, MODES, **kw)
    return c


# -- the rule ------------------------------------------------------------------------
def test_paired_rule_is_the_one_sided_paired_t_test():
    prev, cur = {0: 0.50, 1: 0.52, 2: 0.54}, {0: 0.40, 1: 0.43, 2: 0.43}
    c = _one(prev, cur)
    # d = [0.10, 0.09, 0.11]: s_d = 0.01, SE = 0.01/√3, df = 2, t_{0.95, 2} = 2.919986
    assert c.paired and c.df == 2 and c.drop == pytest.approx(0.10)
    assert c.se == pytest.approx(0.01 / math.sqrt(3)) and c.t_crit == pytest.approx(2.919986, abs=1e-6)
    assert c.threshold == pytest.approx(2.919986 * 0.01 / math.sqrt(3), rel=1e-6)
    ref = stats.ttest_rel([0.50, 0.52, 0.54], [0.40, 0.43, 0.43], alternative="greater")
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9) and c.status == "regression"
    # The same drop with a seed spread 10x larger is within noise.
    noisy = _one(prev, {0: 0.30, 1: 0.52, 2: 0.44})
    assert noisy.drop == pytest.approx(0.10) and noisy.threshold > 0.10 and noisy.status == "ok"


def test_different_seeds_use_the_pooled_two_sample_test():
    prev, cur = {0: 0.50, 1: 0.54, 2: 0.52}, {3: 0.45, 4: 0.47}
    c = _one(prev, cur)
    ref = stats.ttest_ind([0.50, 0.54, 0.52], [0.45, 0.47], equal_var=True, alternative="greater")
    sp = math.sqrt((2 * 0.02 ** 2 + 1 * 0.0002) / 3)  # s₁ = 0.02, s₂² = 0.0002
    assert not c.paired and c.df == 3 and c.se == pytest.approx(sp * math.sqrt(1 / 3 + 1 / 2))
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert c.threshold == pytest.approx(stats.t.ppf(0.95, 3) * c.se) and c.status == "regression"


def test_only_drops_count_and_min_metrics_drop_upwards():
    assert _one({0: 0.4, 1: 0.41}, {0: 0.6, 1: 0.62}).status == "ok"  # better tonight
    loss_up = _one({0: 1.00, 1: 1.02, 2: 1.01}, {0: 1.50, 1: 1.53, 2: 1.51}, metric="train/loss")
    assert loss_up.drop == pytest.approx(0.503333, abs=1e-6) and loss_up.status == "regression"
    assert _one({0: 1.5, 1: 1.53, 2: 1.51}, {0: 1.0, 1: 1.02, 2: 1.01}, metric="train/loss").status == "ok"


def test_identical_reruns_flag_nothing_and_a_reproducible_change_is_real():
    prev = {_key(s): {0: 0.2 + i / 10, 1: 0.25 + i / 10} for i, s in enumerate(["ce", "hl", "ohem"])}
    same = compare_nights(prev, {k: dict(v) for k, v in prev.items()}, MODES)
    assert all(c.status == "ok" and c.drop == 0 and c.threshold == 0 and c.p_value == 1.0 for c in same)
    # Deterministic training: every cell reruns exactly, so the floor is 0 too; a shift of
    # one cell by the same 0.01 on every seed is a reproducible change, flagged.
    shifted = {k: ({s: x - 0.01 for s, x in v.items()} if k.strategy == "hl" else dict(v)) for k, v in prev.items()}
    flagged = [c for c in compare_nights(prev, shifted, MODES) if c.flagged]
    assert [c.key.strategy for c in flagged] == ["hl"] and flagged[0].se == 0
    # ... but float noise (1e-12) is a tie, not a regression.
    tiny = {k: ({s: x - 1e-12 for s, x in v.items()} if k.strategy == "hl" else dict(v)) for k, v in prev.items()}
    assert not any(c.flagged for c in compare_nights(prev, tiny, MODES))


def test_the_median_spread_of_the_other_cells_floors_a_cell_without_spread():
    # hl and ohem move by seed-noise amounts between nights (v = 0.0004 and 0.0009 per pair);
    # ce drops by exactly 0.01 on every seed (v = 0): judged with the median v = 0.0004.
    prev = {_key("ce"): {0: 0.50, 1: 0.60, 2: 0.55}, _key("hl"): {0: 0.50, 1: 0.60, 2: 0.55},
            _key("ohem"): {0: 0.50, 1: 0.60, 2: 0.55}}
    cur = {_key("ce"): {0: 0.49, 1: 0.59, 2: 0.54}, _key("hl"): {0: 0.52, 1: 0.60, 2: 0.53},
           _key("ohem"): {0: 0.53, 1: 0.60, 2: 0.52}}
    by = {c.key.strategy: c for c in compare_nights(prev, cur, MODES)}
    assert by["ce"].se_cell == 0 and by["ce"].se == pytest.approx(math.sqrt(0.0004 / 3))
    assert by["ce"].drop == pytest.approx(0.01) and by["ce"].status == "ok"
    # Holm over the 3 comparisons: ce's p is the smallest, so its level is α/3: t_{1-0.05/3, 2}
    assert by["ce"].t_crit == pytest.approx(stats.t.ppf(1 - 0.05 / 3, 2))
    assert _one(prev[_key("ce")], cur[_key("ce")], correction="none").status == "regression"  # alone: no floor


def test_the_family_is_adjusted_with_the_reports_holm():
    # Three keys with one-sided p ≈ 0.002, 0.019, 1: Bonferroni's α/3 = 0.0167 flags the first only;
    # Holm's step-down flags the first two (0.002·3 = 0.007, 0.019·2 = 0.038 < 0.05), and its p_adj is adjust_p's.
    from hardseg.reports.stats import adjust_p
    prev = {_key(s): {0: 0.50, 1: 0.60, 2: 0.55} for s in ("ce", "hl", "ohem")}
    cur = {_key("ce"): {0: 0.40, 1: 0.51, 2: 0.44}, _key("hl"): {0: 0.48, 1: 0.56, 2: 0.51},
           _key("ohem"): {0: 0.52, 1: 0.58, 2: 0.55}}
    out = compare_nights(prev, cur, MODES)
    by = {c.key.strategy: c for c in out}
    ps = [by[s].p_value for s in ("ce", "hl", "ohem")]
    assert [by[s].p_adj for s in ("ce", "hl", "ohem")] == pytest.approx(list(adjust_p(ps, "holm")))
    assert all(c.correction == "holm" for c in out)
    assert ps[0] < 0.05 / 3 < ps[1] < 0.05 / 2 < ps[2]
    assert [by[s].status for s in ("ce", "hl", "ohem")] == ["regression", "regression", "ok"]
    assert by["hl"].level == pytest.approx(0.05 / 2) and by["hl"].drop > by["hl"].threshold
    # the old name reads as holm; none judges each key at α
    assert [c.status for c in compare_nights(prev, cur, MODES, correction="bonferroni")] == [c.status for c in out]
    assert all(c.level == 0.05 for c in compare_nights(prev, cur, MODES, correction="none"))


def test_missing_and_new_metrics():
    prev = {_key("ce"): {0: 0.5, 1: 0.6}, _key("hl"): {0: 0.5, 1: 0.6}}
    cur = {_key("ce"): {0: 0.5, 1: 0.6}, _key("ohem"): {0: 0.5, 1: 0.6}}
    by = {c.key.strategy: c for c in compare_nights(prev, cur, MODES)}
    assert by["hl"].status == "missing" and by["hl"].flagged
    assert by["ohem"].status == "new" and not by["ohem"].flagged and by["ce"].status == "ok"


def test_previous_nightly_is_the_latest_finished_one_of_the_suite(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    exp = client.create_experiment("hardseg")

    def night(suite: str, status: str) -> str:
        run = client.create_run(exp, tags={"hardseg.kind": "nightly", "hardseg.suite": suite})
        client.set_terminated(run.info.run_id, status)
        time.sleep(0.01)
        return run.info.run_id

    first = night("s", "FINISHED")
    night("other", "FINISHED")
    night("s", "FAILED")
    now = int(time.time() * 1000) + 1
    assert previous_nightly(client, exp, "s", now).info.run_id == first
    assert previous_nightly(client, exp, "nobody", now) is None
    assert previous_nightly(client, exp, "s", client.get_run(first).info.start_time) is None


# -- the command ----------------------------------------------------------------------------
SEEDS = (0, 1, 2)  # the fewest a paired test with a spread needs (df = 2)


def _suite_file(tmp_path, seeds=SEEDS, **extra) -> str:
    suite = {"name": "t-nightly", "strategies": ["ce", "focal", "ohem"], "models": {"tiny": {"model.name": "tiny_seg"}},
             "datasets": {"synth": {"data.dataset": "synthetic"}}, "seeds": list(seeds),
             "budget": {"ray.num_workers": 1, "strategy_params.ohem.min_kept_fraction": 0.1},
             "watch": [{"metric": "val/miou", "mode": "max"}],
             "max_concurrent": 1, **extra}  # one trial process a night (each costs seconds of imports)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def test_bad_suites_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [({"seeds": [0]}, "seeds"), ({"strategies": ["ce", "nope"]}, "nope"),
             ({"watch": [{"metric": "miou"}]}, "watch.0.metric"), ({"colour": 1}, "colour")]
    for extra, word in cases:
        assert cli(["nightly", _suite_file(tmp_path, **extra)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and word in err[0], err
    assert cli(["nightly", _suite_file(tmp_path), "--set", "seed=3"]) == 2
    assert "'seeds' make the grid" in capsys.readouterr().err
    assert cli(["nightly", str(tmp_path / "missing.yaml")]) == 2
    assert "nightly suite not found" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_three_nightlies_flag_exactly_the_planted_regression(ray_local, data_root, sqlite_uri, tmp_path, capsys):
    suite = _suite_file(tmp_path)
    sets = sum((["--set", o] for o in small_overrides(data_root, **{
        "ray.storage_path": str(tmp_path / "runs"), "tracking.uri": sqlite_uri, "data.eval_domains": "[]"})), [])

    def nightly(out: str, *extra: str) -> tuple[int, dict]:
        rc = cli(["nightly", suite, *sets, *extra, "--out", str(tmp_path / out)])
        return rc, json.loads((tmp_path / out / "summary.json").read_text())

    rc, base = nightly("n1")
    assert rc == 0 and base["previous_run_id"] is None
    assert {c["status"] for c in base["comparisons"]} == {"new"} and len(base["comparisons"]) == 3

    rc, rerun = nightly("n2")  # unchanged code, same seeds: within seed noise
    assert rc == 0 and rerun["previous_run_id"] == base["run_id"] and rerun["regressions"] == 0
    assert all(c["status"] == "ok" and c["paired"] and c["n_cur"] == len(SEEDS) for c in rerun["comparisons"])

    # Planted: OHEM keeps only pixels below 0.1 % confidence and no minimum, i.e. almost nothing.
    rc, bad = nightly("n3", "--set", "strategy_params.ohem.thresh=0.001", "--set", "strategy_params.ohem.min_kept=0",
                      "--set", "strategy_params.ohem.min_kept_fraction=0")
    assert rc == 1 and bad["previous_run_id"] == rerun["run_id"]
    flagged = {(c["key"]["strategy"], c["key"]["metric"]) for c in bad["comparisons"] if c["flagged"]}
    assert flagged == {("ohem", "val/miou")}
    for c in bad["comparisons"]:
        if c["flagged"]:  # it really dropped, far beyond its threshold
            assert c["cur_mean"] < 0.5 * c["prev_mean"] and c["drop"] > c["threshold"] > 0
        else:  # the other strategies did not change at all
            assert c["status"] == "ok" and c["key"]["strategy"] in ("ce", "focal")
    out = capsys.readouterr().out
    assert "REGRESSION ohem × tiny × synth val/miou" in out and "REGRESSION ce" not in out

    # MLflow: three nightly parents with date, commit and verdict; one nested ablation each.
    client = MlflowClient(sqlite_uri)
    exp = client.get_experiment_by_name("hardseg").experiment_id
    nights = client.search_runs([exp], "tags.`hardseg.kind` = 'nightly'", order_by=["attributes.start_time ASC"])
    assert [r.info.run_id for r in nights] == [base["run_id"], rerun["run_id"], bad["run_id"]]
    assert [r.data.tags["hardseg.regressions"] for r in nights] == ["0", "0", "1"]
    for r in nights:
        assert r.info.status == "FINISHED" and r.data.tags["hardseg.suite"] == "t-nightly"
        assert r.data.tags["hardseg.nightly_date"] == time.strftime("%Y-%m-%d", time.localtime(r.info.start_time / 1000))
        assert len(r.data.tags["git_commit"]) in (40, len("unknown"))
        assert {a.path for a in client.list_artifacts(r.info.run_id, "nightly")} == {
            "nightly/summary.md", "nightly/summary.json", "nightly/suite.yaml"}
        [cell] = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{r.info.run_id}'")
        assert cell.data.tags["hardseg.kind"] == "ablation" and cell.info.status == "FINISHED"
        assert cell.data.params["sweep.max_concurrent"] == "1"  # the suite's max_concurrent
        trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{cell.info.run_id}'")
        assert len(trials) == 3 * len(SEEDS) and all(t.info.status == "FINISHED" for t in trials)
    assert nights[2].data.tags["hardseg.previous_nightly"] == rerun["run_id"]
    assert "ohem.tiny.synth/val/miou" in nights[2].data.metrics
    md = (tmp_path / "n3" / "summary.md").read_text()
    assert "**1 regression(s)**" in md and "**REGRESSION**" in md
