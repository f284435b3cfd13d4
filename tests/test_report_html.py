"""Figures and the self-contained HTML page of ``hardseg report``, checked down to a headless Chromium render."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_reports import CLASSES, MIOU, NAME, store  # noqa: F401  (store: the shared MLflow fixture)

from hardseg.reports import plots
from hardseg.reports.html import markdown_to_html, render_html
from hardseg.reports.publish import write_report
from hardseg.reports.tables import ablation_table

BROWSER_TIMEOUT = 120
APT_TIMEOUT = 900


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):  # noqa: F811
    _, client, parent, _ = store
    out = tmp_path_factory.mktemp("html") / "out"
    return client, parent, write_report(client, client.get_run(parent), out)


def _image(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=float)


def _apt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=APT_TIMEOUT, env=env)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The ``chromium`` executable, installed from Debian's packages when missing; fails (never skips)
    when it cannot be had."""
    found = shutil.which("chromium")
    if found:
        return found
    install = ("install", "-y", "--no-install-recommends", "chromium")
    log = ""
    try:
        result = _apt(*install)
        log = result.stderr[-2000:]
        if result.returncode != 0:
            update = _apt("update")
            result = _apt(*install)
            log = update.stderr[-1000:] + result.stderr[-2000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        log = f"{type(exc).__name__}: {exc}"
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is needed to check the rendered HTML report and could not be installed with "
                    f"'apt-get install -y --no-install-recommends chromium' (needs root and Debian's "
                    f"package mirror): {log.strip() or 'no output'}")
    return found


def _browser(chromium: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT)


def test_files_and_artifacts(report):
    client, parent, paths = report
    assert set(paths) == {"markdown", "parquet", "forest_png", "metrics_png", "per_class_png", "domains_png", "html"}
    assert {p.name for p in paths.values()} == {"report.md", "runs.parquet", "forest.png", "metrics.png",
                                                "per_class.png", "domains.png", "report.html"}
    assert all(p.parent == paths["markdown"].parent and p.stat().st_size > 0 for p in paths.values())
    listed = {a.path for a in client.list_artifacts(parent, "report")}
    assert listed == {f"report/{p.name}" for p in paths.values()}


def test_pngs_are_valid_and_not_blank(report):
    _, _, paths = report
    for key in ("forest_png", "metrics_png", "per_class_png", "domains_png"):
        pixels = _image(paths[key])
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5.0, key


def test_plots_skip_what_runs_did_not_log(tmp_path):
    df = pd.DataFrame({"run_id": list("abc"), "trial_id": list("abc"), "strategies": ["ce", "ce", "hl"],
                       "seed": pd.array([0, 1, 0], dtype="Int64"), "status": ["FINISHED"] * 3, "reason": [None] * 3,
                       "epochs": pd.array([1] * 3, dtype="Int64"), "val/miou": [0.5, 0.6, 0.7]})
    assert plots.domain_matrix(df, tmp_path / "d.png") is None and not (tmp_path / "d.png").exists()
    assert plots.per_class_bars(df, tmp_path / "c.png") is None and not (tmp_path / "c.png").exists()
    table = ablation_table(df, ["val/miou"])  # hl: one seed, so no CI and no error bar
    assert table.loc["hl", ("val/miou", "half_width")] is None
    assert _image(plots.metric_bars(table, ["val/miou"], tmp_path / "m.png")).std() > 5.0


def test_forest_plot_marks_verdicts(tmp_path):
    """One row per strategy × metric; a significant Δ is a filled marker, a 2-seed Δ grey and hollow."""
    df = pd.DataFrame({"run_id": [f"r{i}" for i in range(8)], "trial_id": [f"t{i}" for i in range(8)],
                       "strategies": ["ce"] * 3 + ["ohem"] * 3 + ["hl"] * 2,
                       "seed": pd.array([0, 1, 2, 0, 1, 2, 0, 1], dtype="Int64"), "status": ["FINISHED"] * 8,
                       "reason": [None] * 8, "epochs": pd.array([1] * 8, dtype="Int64"),
                       "val/miou": [0.70, 0.71, 0.72, 0.75, 0.761, 0.770, 0.71, 0.70]})
    table = ablation_table(df, ["val/miou"], correction="none")
    assert table.loc["ohem", ("val/miou", "significant")] and not table.loc["hl", ("val/miou", "tested")]
    pixels = _image(plots.forest_plot(table, tmp_path / "f.png"))
    assert pixels.shape[0] > 100 and pixels.std() > 5.0
    only_ce = ablation_table(df[df["strategies"] == "ce"], ["val/miou"])
    assert plots.forest_plot(only_ce, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_hl_maps_figure_has_titles_colour_bar_and_size(tmp_path):
    from hardseg.reports.images import hl_maps_figure

    tile, gap, rows = 16, 2, 3
    panel = np.full((rows * (tile + gap) - gap, 4 * (tile + gap) - gap, 3), 255, dtype=np.uint8)
    rng = np.random.default_rng(0)
    for r in range(rows):
        for c in range(4):
            panel[r * (tile + gap): r * (tile + gap) + tile, c * (tile + gap): c * (tile + gap) + tile] = \
                rng.integers(0, 255, (tile, tile, 3))
    Image.fromarray(panel).save(tmp_path / "panel.png")
    pixels = _image(hl_maps_figure(tmp_path / "panel.png", tmp_path / "hl.png", offset=0.1, title="t"))
    # 4 columns of ~2 inches at 110 dpi plus the bar: far larger than the 70-px-wide raw panel
    assert pixels.shape[1] >= 800 and pixels.shape[0] >= 3 * 180 and pixels.std() > 5.0


def test_html_is_self_contained(report):
    _, _, paths = report
    page = paths["html"].read_text(encoding="utf-8")
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page, re.I)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    embedded = [base64.b64decode(link.split(",", 1)[1]) for link in links]
    assert embedded == [paths[k].read_bytes() for k in ("forest_png", "metrics_png", "per_class_png", "domains_png")]
    assert all(Image.open(io.BytesIO(b)).format == "PNG" for b in embedded)
    assert page.count("<figcaption>") == 4
    for strategy in MIOU:
        assert f"<td>{strategy}</td>" in page
    assert re.search(r"<td>(<strong>)?0\.\d{3}(</strong>)? ± 0\.\d{3}", page)
    assert f"<h1>hardseg report: {NAME}</h1>" in page and "<h2>fog-3</h2>" in page
    assert "<td>t_failed</td>" in page and "the loss became nan" in page


def test_markdown_subset():
    md = ("# Title `x`\n\nline one with **bold**\nline two & <tag>\n\n"
          "| a | b \\| c |\n|---|---|\n| **1** | `2` |\n\n- item *\n- item `two`\n\n## Next")
    body = markdown_to_html(md)
    assert "<h1>Title <code>x</code></h1>" in body and "<h2>Next</h2>" in body
    assert "<p>line one with <strong>bold</strong> line two &amp; &lt;tag&gt;</p>" in body
    assert "<thead><tr><th>a</th><th>b | c</th></tr></thead>" in body
    assert "<tr><td><strong>1</strong></td><td><code>2</code></td></tr>" in body
    assert "<ul>\n<li>item *</li>\n<li>item <code>two</code></li>\n</ul>" in body
    page = render_html(md, {})
    assert page.startswith("<!DOCTYPE html>") and "<title>Title `x`</title>" in page and "<figure" not in page


def test_chromium_renders_report(report, chromium, tmp_path):
    _, _, paths = report
    url = paths["html"].resolve().as_uri()
    shot = tmp_path / "shot.png"
    result = _browser(chromium, tmp_path, "--hide-scrollbars", "--window-size=1200,1600",
                      f"--screenshot={shot}", url)
    assert shot.is_file(), f"no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    pixels = _image(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 5.0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10
    dom = _browser(chromium, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == 4 and 'src="data:image/png;base64,' in dom.stdout
    for strategy in MIOU:
        assert f"<td>{strategy}</td>" in dom.stdout
    assert "± " in dom.stdout and f"hardseg report: {NAME}" in dom.stdout
    assert all(f"<td>{c}</td>" not in dom.stdout for c in CLASSES)  # classes are in the figure, not a table
