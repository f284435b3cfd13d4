"""The Markdown report of a sweep: ``report.md`` and ``runs.parquet``.

:func:`build_report` puts together the header, the answer paragraph (:mod:`hardseg.reports.answer`), the
ablation table (:mod:`hardseg.reports.tables`) and the cross-domain section
(:mod:`hardseg.reports.domains`); :func:`write_report` writes and logs it. With figures and HTML:
:func:`hardseg.reports.publish.write_report`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.reports import stats
from hardseg.reports.answer import answer_lines
from hardseg.reports.collect import ReportError, metric_columns, runs_frame
from hardseg.reports.domains import cross_domain_section
from hardseg.reports.tables import (ablation_table, accuracy_section, checkpoint_line, default_metrics, parquet_safe,
                                    tests_line, to_markdown)


def build_report(client: MlflowClient, parent_run: Run, metrics: list[str] | None = None, baseline: str = "ce",
                 alpha: float = 0.05, require_baseline: bool = False,
                 correction: str = "holm") -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """``(runs_frame, ablation_table, report Markdown)`` of a sweep, nothing written.

    The Markdown opens with the header, the tests line and the answer
    (:func:`hardseg.reports.answer.answer_lines`), then the tables.

    ``metrics`` None: :func:`default_metrics`. A metric no run logged, or with ``require_baseline``
    a baseline no run trained, raises :class:`ReportError`.
    """
    df = runs_frame(client, parent_run)
    metrics = list(metrics) if metrics else default_metrics(df)
    unknown = [m for m in metrics if m not in df.columns]
    if unknown and len(df):
        raise ReportError(f"no run of this sweep logged {', '.join(unknown)}; metrics: {', '.join(metric_columns(df))}")
    strategies = sorted(set(df["strategies"].dropna()))
    if require_baseline and baseline not in strategies:
        raise ReportError(f"baseline '{baseline}' is not a strategy of this sweep (strategies: "
                          f"{', '.join(strategies) or 'none'})")
    if correction not in stats.CORRECTIONS:
        raise ReportError(f"unknown correction '{correction}': use one of {', '.join(stats.CORRECTIONS)}")
    table = ablation_table(df, metrics, baseline=baseline, alpha=alpha, correction=correction)
    tags = parent_run.data.tags
    name = tags.get(keys.SWEEP, parent_run.info.run_name)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(table.attrs["statuses"].items()))
    head = [f"# hardseg report: {name}", "",
            f"{tags.get(keys.KIND, 'sweep')} `{name}`, MLflow parent run `{parent_run.info.run_id}` "
            f"({parent_run.info.status}); {len(df)} trial runs: {counts or 'none'}."]
    if tags.get(keys.BEST_RUN_ID):
        head.append(f"Best trial (by the sweep's metric): {tags.get(keys.BEST_TRIAL) or '?'}, "
                    f"run `{tags[keys.BEST_RUN_ID]}`.")
    checkpoint = checkpoint_line(df)
    head += ["", *([checkpoint, ""] if checkpoint else []), tests_line(table), "", *answer_lines(table)]
    markdown = "\n".join(head) + "\n" + to_markdown(table, metrics, header=False)
    cross = cross_domain_section(df, baseline=baseline, alpha=alpha, correction=correction)
    accuracy = accuracy_section(df, alpha=alpha)
    return df, table, markdown + ("\n" + cross if cross else "") + ("\n" + accuracy if accuracy else "")


def save_report(df: pd.DataFrame, markdown: str, out_dir: Path | str) -> dict[str, Path]:
    """Write ``report.md`` and ``runs.parquet`` to ``out_dir``; ``{"markdown": path, "parquet": path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "parquet": out / "runs.parquet"}
    paths["markdown"].write_text(markdown, encoding="utf-8")
    parquet_safe(df).to_parquet(paths["parquet"], engine="pyarrow", index=False)
    return paths


def write_report(client: MlflowClient, parent_run: Run, out_dir: Path | str, metrics: list[str] | None = None,
                 baseline: str = "ce", alpha: float = 0.05, require_baseline: bool = False,
                 correction: str = "holm") -> dict[str, Path]:
    """Write ``report.md`` and ``runs.parquet`` to ``out_dir`` and log both to the parent run under ``report/``.

    ``metrics`` None: :func:`default_metrics`. A metric no run logged, or with ``require_baseline``
    a baseline no run trained, raises :class:`ReportError` before anything is written.
    Returns ``{"markdown": path, "parquet": path}``. With figures and HTML:
    :func:`hardseg.reports.publish.write_report`.
    """
    df, _, markdown = build_report(client, parent_run, metrics, baseline, alpha, require_baseline, correction)
    paths = save_report(df, markdown, out_dir)
    for path in paths.values():
        client.log_artifact(parent_run.info.run_id, str(path), artifact_path="report")
    return paths
