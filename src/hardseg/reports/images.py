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

import matplotlib
import matplotlib.image as mpimg
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.reports.tables import label

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


def best_hl_run(df: pd.DataFrame, metric: str = keys.VAL_MIOU, mode: str = "max") -> pd.Series | None:
    """The FINISHED run with HL among its strategies that is best by ``metric``, or None."""
    if metric not in df.columns:
        return None
    hl = df[(df["status"] == "FINISHED") & df[metric].notna()
            & df["strategies"].map(lambda s: "hl" in label(s).split("+"))]
    if hl.empty:
        return None
    return hl.loc[hl[metric].idxmax() if mode == "max" else hl[metric].idxmin()]


HL_COLUMNS = ("image", "ground truth", "prediction", "hardness w")
PANEL_GAP = 2  # white pixels between tiles (hardseg.strategies.visuals.grid)


def hl_maps_figure(panel_png: Path | str, path: Path | str, offset: float = 0.1, title: str = "") -> Path:
    """Re-draw the HL panel (rows of image | ground truth | prediction | hardness, tiles separated by
    :data:`PANEL_GAP` white pixels) with column titles, a colour bar for the hardness w ∈ [offset,
    1 + offset] and tiles large enough to read. The panel's hardness ramp is viridis' anchor colours
    (``hardseg.strategies.visuals``), so the bar uses matplotlib's viridis."""
    img = mpimg.imread(str(panel_png))[..., :3]
    ncol = len(HL_COLUMNS)
    w = (img.shape[1] + PANEL_GAP) // ncol - PANEL_GAP
    nrow = max(1, (img.shape[0] + PANEL_GAP) // (w + PANEL_GAP))
    h = (img.shape[0] + PANEL_GAP) // nrow - PANEL_GAP
    fig = Figure(figsize=(2.0 * ncol + 1.0, 2.0 * nrow + 0.7), dpi=110, layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for r in range(nrow):
        for c in range(ncol):
            ax = axes[r, c]
            y0, x0 = r * (h + PANEL_GAP), c * (w + PANEL_GAP)
            ax.imshow(img[y0:y0 + h, x0:x0 + w], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(HL_COLUMNS[c], fontsize=10)
    bar = ScalarMappable(norm=Normalize(offset, 1.0 + offset), cmap=matplotlib.colormaps["viridis"])
    fig.colorbar(bar, ax=list(axes[:, -1]), label="hardness w (easy → hard)", fraction=0.08, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, format="png")
    return path
