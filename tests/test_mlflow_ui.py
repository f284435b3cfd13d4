"""The MLflow UI as a user meets it: a real ``mlflow server``, hardseg's experiment and runs, headless Chromium.

The runs are logged with hardseg's own functions (experiment creation, child-run names, the
report on the parent run), then the pages a user opens are rendered and read back: the URL
hardseg prints opens the runs table (not MLflow 3's GenAI overview), the parent run's
description says what the ablation found, and *Compare* shows the children by name.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid
from html import unescape

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from test_report_html import _browser, _image, chromium  # noqa: F401  (chromium: the browser fixture)

from hardseg import keys
from hardseg.platform import tracking
from hardseg.platform.names import trial_run_name
from hardseg.reports.publish import write_report

MIOU = {("ce", 0): 0.70, ("ce", 1): 0.71, ("hl", 0): 0.73, ("hl", 1): 0.75}
RENDER_MS = "15000"  # virtual time for the single-page app to fetch and draw


@pytest.fixture(scope="module")
def ui_runs(mlflow_server, tmp_path_factory):
    """(server URL, experiment id, parent run id, child run ids) of a 2 × 2 ablation logged as hardseg logs it."""
    client = MlflowClient(mlflow_server)
    name = f"ui-{uuid.uuid4().hex[:8]}"
    exp_id = tracking.get_or_create_experiment(client, name, mlflow_server)
    parent = client.create_run(exp_id, run_name=name, tags={"hardseg.kind": "ablation", "hardseg.sweep": name,
                                                             "mlflow.runName": name}).info.run_id
    client.log_batch(parent, params=[Param("sweep.metric", "val/miou"), Param("sweep.mode", "max")])
    children = []
    for i, ((strategy, seed), miou) in enumerate(MIOU.items()):
        run_name = trial_run_name({"strategies": strategy, "seed": seed})
        run_id = client.create_run(exp_id, run_name=run_name, tags={
            "mlflow.parentRunId": parent, "mlflow.runName": run_name, "hardseg.kind": "ablation-trial",
            "hardseg.sweep": name, "hardseg.trial_id": f"t{i:05d}", "hardseg.strategies": strategy,
            "hardseg.seed": str(seed)}).info.run_id
        client.log_batch(run_id, params=[Param("strategies", str([strategy])), Param("seed", str(seed))],
                         metrics=[Metric("val/miou", miou, int(time.time() * 1000), 1),
                                  Metric("train/loss", 1.0 - miou, int(time.time() * 1000), 1)])
        client.set_terminated(run_id, "FINISHED")
        children.append(run_id)
    client.set_terminated(parent, "FINISHED")
    write_report(client, client.get_run(parent), tmp_path_factory.mktemp("ui-report"))
    return mlflow_server, exp_id, parent, children


def _text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def _dom(chromium, tmp_path, url: str) -> str:  # noqa: F811
    result = _browser(chromium, tmp_path, f"--virtual-time-budget={RENDER_MS}", "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    return _text(result.stdout)


def test_experiment_kind_note_and_names_in_the_store(ui_runs):
    url, exp_id, parent, children = ui_runs
    client = MlflowClient(url)
    assert client.get_experiment(exp_id).tags[keys.EXPERIMENT_KIND] == "custom_model_development"
    note = client.get_run(parent).data.tags[keys.NOTE]
    # the report's answer paragraph; two seeds per strategy can carry no verdict
    assert note.startswith("ablation `") and "## Answer" in note and "val/miou" in note and "no verdict" in note \
        and "report/report.html" in note
    assert sorted(client.get_run(c).info.run_name for c in children) == \
        ["ce · seed 0", "ce · seed 1", "hl · seed 0", "hl · seed 1"]
    # an experiment made before hardseg tagged them gets the tag too
    old = client.create_experiment(f"old-{uuid.uuid4().hex[:8]}")
    assert tracking.get_or_create_experiment(client, client.get_experiment(old).name, url) == old
    assert client.get_experiment(old).tags[keys.EXPERIMENT_KIND] == "custom_model_development"


def test_runs_page_description_and_compare_in_chromium(ui_runs, chromium, tmp_path):  # noqa: F811
    url, exp_id, parent, children = ui_runs
    runs_page = tracking.ui_url(exp_id, url)  # the page hardseg's commands print
    shot = tmp_path / "runs.png"
    result = _browser(chromium, tmp_path, "--hide-scrollbars", "--window-size=1400,900",
                      f"--virtual-time-budget={RENDER_MS}", f"--screenshot={shot}", runs_page)
    assert shot.is_file(), f"no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    pixels = _image(shot)
    assert pixels.shape[:2] == (900, 1400) and pixels.std() > 5.0
    text = _dom(chromium, tmp_path, runs_page)
    assert "Run Name" in text and client_name(url, parent) in text, text[:2000]
    assert "No data available" not in text and "Detect Issues" not in text  # not the GenAI overview
    # the parent run's page: its description is the report's opening, the answer paragraph
    text = _dom(chromium, tmp_path, f"{url}/#/experiments/{exp_id}/runs/{parent}?workflowType=machine_learning")
    assert "Description" in text and "Answer" in text and "no verdict" in text, text[:2000]
    # select the children, Compare: each is named by what differs
    query = urllib.parse.urlencode({"runs": json.dumps(children), "experiments": json.dumps([exp_id])})
    text = _dom(chromium, tmp_path, f"{url}/#/compare-runs?{query}")
    for name in ("ce · seed 0", "ce · seed 1", "hl · seed 0", "hl · seed 1"):
        assert name in text, (name, text[:2000])
    assert np.isfinite(pixels).all()


def client_name(url: str, run_id: str) -> str:
    return MlflowClient(url).get_run(run_id).info.run_name
