"""Images a run logged to MLflow, fetched back for a report: the HL maps of the best HL run.

Training logs the HL strategy's panel (image | ground truth | prediction | hardness, see
:mod:`hardseg.strategies.hl`; visual ``hl/panel``, saved as ``hl_panel.png`` with the checkpoint) with
``MlflowClient.log_image(key="hl_panel", step=epoch)`` (:func:`hardseg.platform.tracking.log_visuals`);
MLflow stores each step as ``images/<key with / as ~>+step+<step>+timestamp+<ms>+<uuid>.png``
(older MLflow: ``%`` separators, ``#`` for ``/``). :func:`latest_image` downloads the last step's PNG.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from hardseg.reports.tables import _label

HL_PANEL_KEY = "hl_panel"
_NAME = re.compile(r"^(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%]\d+[+%][^+%]+\.png$")


def image_steps(client: MlflowClient, run_id: str, key: str) -> dict[int, str]:
    """``{step: artifact path}`` of the full-size PNGs logged under ``key`` (no thumbnails)."""
    wanted = {key.replace("/", "~"), key.replace("/", "#")}
    out: dict[int, str] = {}
    for info in client.list_artifacts(run_id, "images"):
        m = _NAME.match(Path(info.path).name)
        if m and m.group("key") in wanted:
            out[int(m.group("step"))] = info.path
    return out


def latest_image(client: MlflowClient, run_id: str, key: str, dest: Path | str) -> tuple[Path, int] | None:
    """Download the last step's PNG of ``key`` to ``dest`` (a file path); ``(dest, step)`` or None."""
    steps = image_steps(client, run_id, key)
    if not steps:
        return None
    step = max(steps)
    tmp = Path(dest).with_suffix(".download")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, steps[step], str(tmp))
        shutil.copyfile(local, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Path(dest), step


def best_hl_run(df: pd.DataFrame, metric: str = "val/miou", mode: str = "max") -> pd.Series | None:
    """The FINISHED run with HL among its strategies that is best by ``metric``, or None."""
    if metric not in df.columns:
        return None
    hl = df[(df["status"] == "FINISHED") & df[metric].notna()
            & df["strategies"].map(lambda s: "hl" in _label(s).split("+"))]
    if hl.empty:
        return None
    return hl.loc[hl[metric].idxmax() if mode == "max" else hl[metric].idxmin()]
