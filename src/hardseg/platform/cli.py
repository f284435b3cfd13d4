"""The ``hardseg`` command line.

Every user error (bad config, unknown name, missing dataset, bad label ids)
is printed as one line ``error: ...`` with exit status 2, before anything is
written to MLflow.

Each command imports the modules it runs inside its own function (the only
function-local imports of the platform): ``hardseg --help``, ``hardseg jobs``
and argument errors then answer without importing torch, Ray and MLflow.
Measured on the 2-core CI machine: ``hardseg --help`` 0.1 s; importing
``hardseg.platform.sweep`` alone 6 s (benchmarks/README.md, "CLI start-up").
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from pathlib import Path

from hardseg import keys, timeline
from hardseg.errors import HardsegError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="run config YAML, or recipe:NAME for a shipped recipe (e.g. "
                   "recipe:pspnet_r50_d8_769x769_40k_cityscapes; default: the embedded default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")


def _add_dry_run(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--dry-run", action="store_true", help=text)


def _count(flag: str, n: int) -> int:
    """A trial count given on the command line: >= 1, as sweep.num_samples and sweep.max_concurrent must be."""
    if n < 1:
        raise HardsegError(f"{flag} must be at least 1, got {n}")
    return n


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    """``evaluate`` and ``predict``: the run's ``eval`` settings, replaced (trainables/evaluation.py)."""
    p.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the run's eval.mode)")
    p.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"), help="slide window (default: the run's)")
    p.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"), help="slide stride (default: the run's)")
    p.add_argument("--tta-scales", nargs="+", type=float, metavar="S", help="test-time scales, e.g. 0.5 0.75 1.0 "
                   "1.25 1.5 1.75 (mmseg's aug_test; default: the run's eval.tta)")
    p.add_argument("--tta-flip", action="store_true", help="also average the horizontally flipped input")
    p.add_argument("--tta-img-scale", nargs=2, type=int, metavar=("W", "H"), help="the size the scales multiply, "
                   "keeping the ratio (mmseg's test img_scale, e.g. 2049 1025; default: each image's own size)")


def _load(args: argparse.Namespace):
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "tracking_uri", None):
        overrides.append(f"tracking.uri={args.tracking_uri}")
    cfg = load_config(args.config, overrides)
    if cfg.tracking.uri:  # --set tracking.uri=... or the config file: checked before Ray starts
        # local: MLflow only once the config is valid, so a bad --set answers without it (module docstring)
        from hardseg.platform.tracking import check_tracking_uri

        check_tracking_uri(cfg.tracking.uri)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        return _resume_train(args)
    cfg = _load(args)  # bad input stops here, before Ray's modules load
    timeline.mark("command: config validated")
    if args.dry_run:
        # local: the dry run's module only (no Ray Train), see the module docstring
        from hardseg.platform.dryrun import dry_run_train

        return dry_run_train(cfg)
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.data.domains import parse_domains
    from hardseg.platform.console import progress_bar_wanted
    from hardseg.platform.tracking import ui_hint
    from hardseg.platform.train_job import run_training
    from hardseg.trainables.progress import BAR_ENV

    timeline.mark("command: train modules imported")
    if progress_bar_wanted("train"):
        os.environ.setdefault(BAR_ENV, "1")  # before Ray starts: its workers inherit it
    out = run_training(cfg)
    m = out.metrics
    summary = " | ".join(f"{k} {m[k]:.4f}" for k in (keys.VAL_PREFIX + n for n in keys.SUMMARY_METRICS)
                         if isinstance(m.get(k), float))
    for domain in (d.name for d in parse_domains(cfg.data.eval_domains)):
        if isinstance(m.get(key := f"{domain}/{keys.MIOU}"), float):
            summary += f" | {key} {m[key]:.4f}"
    print(f"[hardseg] done in {out.wall_s:.0f}s: {summary}")
    print(f"[hardseg] MLflow run {out.run_id}; UI: {ui_hint(out.tracking_uri, out.experiment_id)}")
    _register(args, out.run_id, out.tracking_uri)
    return 0


def _resume_train(args: argparse.Namespace) -> int:
    """``hardseg train --resume RUN_ID [CONFIG] [--set ...]``: the same MLflow run, from its latest checkpoint."""
    if args.dry_run:
        raise HardsegError("--dry-run shows a new run's config; it does not apply to --resume")
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.tracking import ui_hint
    from hardseg.platform.train_job import resume_training

    uri = args.tracking_uri or next((o.split("=", 1)[1] for o in args.overrides if o.startswith("tracking.uri=")), None)
    out = resume_training(args.resume, config_path=args.config, overrides=list(args.overrides), tracking_uri=uri)
    m = out.metrics
    summary = " | ".join(f"{k} {m[k]:.4f}" for k in (keys.VAL_MIOU, keys.VAL_PREFIX + keys.BAND_IOU)
                         if isinstance(m.get(k), float))
    print(f"[hardseg] done in {out.wall_s:.0f}s: {summary}")
    print(f"[hardseg] MLflow run {out.run_id}; UI: {ui_hint(out.tracking_uri, out.experiment_id)}")
    _register(args, out.run_id, out.tracking_uri)
    return 0


def _register(args: argparse.Namespace, run_id: str | None, tracking_uri: str) -> None:
    """``--register NAME``: the run's MLflow model (``runs:/<id>/model``) as a new version of NAME."""
    if not getattr(args, "register", None) or not run_id:
        return
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.export import register

    uri = register(run_id, args.register, tracking_uri)
    print(f"[hardseg] registered runs:/{run_id}/model as {uri}; load it with mlflow.pytorch.load_model('{uri}')")


def _print_sweep(out) -> None:
    if out.interrupted:
        print(f"[hardseg] resume with: hardseg sweep --resume {out.name}")


def cmd_sweep(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.dryrun import dry_run_sweep
    from hardseg.platform.sweep import resume_sweep, run_sweep
    from hardseg.search_spaces import load_space

    if args.resume and args.dry_run:
        raise HardsegError("--dry-run shows a new sweep's trials; it does not apply to --resume")
    if args.retry_failed and not args.resume:
        raise HardsegError("--retry-failed reruns the failed trials of a sweep: give --resume NAME")
    if args.resume:
        out = resume_sweep(args.resume, storage_path=args.storage_path, retry_failed=args.retry_failed)
    else:
        if not args.space:
            raise HardsegError("hardseg sweep needs a SPACE (a preset such as 'quickstart' or a YAML file) "
                               "or --resume NAME")
        space = load_space(args.space)
        if args.num_samples:
            space.sweep.num_samples = _count("--num-samples", args.num_samples)
        if args.max_concurrent:
            space.sweep.max_concurrent = _count("--max-concurrent", args.max_concurrent)
        overrides = list(args.overrides) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
        if args.dry_run:
            return dry_run_sweep(space, args.config, overrides, name=args.name)
        out = run_sweep(space, config_path=args.config, overrides=overrides, name=args.name,
                        in_process=not args.always_trainer)
    _print_sweep(out)
    if not out.interrupted and out.best:
        _register(args, out.best.get("run_id"), out.tracking_uri)
    return 130 if out.interrupted else 0


def cmd_ablate(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.ablation import ablation_space, run_ablation
    from hardseg.platform.dryrun import dry_run_sweep

    overrides = list(args.overrides) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
    if args.dry_run:
        space = ablation_space(args.strategies, args.seeds)
        grid = {"strategies": list(space.params["strategies"].choices), "seed": list(args.seeds)}
        return dry_run_sweep(space, args.config, overrides, grid=grid, name=args.name)
    out = run_ablation(args.strategies, args.seeds, config_path=args.config, overrides=overrides, name=args.name,
                       in_process=not args.always_trainer, max_concurrent=args.max_concurrent)
    _print_sweep(out)
    return 130 if out.interrupted else 0


def cmd_study(args: argparse.Namespace) -> int:
    """Exit 0: done (report written); 130: interrupted (resume with --resume NAME); 2: bad input."""
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.study import load_study, resume_study, run_study

    if args.resume:
        out = resume_study(args.resume, storage_path=args.storage_path)
    else:
        if not args.study:
            raise HardsegError("hardseg study needs a STUDY (a preset such as 'quick' or a YAML file) or --resume NAME")
        overrides = list(args.overrides) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
        out = run_study(load_study(args.study), overrides=overrides, name=args.name,
                        in_process=not args.always_trainer)
    if out.interrupted:
        print(f"[hardseg] resume with: hardseg study --resume {out.name}")
        return 130
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.data.domains import parse_domains
    from hardseg.platform import tracking
    from hardseg.platform.export import is_model_uri, load_logged_model
    from hardseg.robustness import robustness
    from hardseg.trainables.evaluation import evaluate_domains, load_inference_model, with_inference_options

    if is_model_uri(args.checkpoint):  # an MLflow model: runs:/<id>/model, models:/<name>/<version>
        model, cfg = load_logged_model(args.checkpoint, tracking.resolve_tracking_uri(args.tracking_uri))
    else:
        model, cfg = load_inference_model(args.checkpoint)
    cfg = with_inference_options(cfg, args.mode, args.crop, args.stride, args.tta_scales, args.tta_flip,
                                 args.tta_img_scale)
    if args.data_root:
        cfg.data.root = str(Path(args.data_root).resolve())
    domains = args.domains or ["val", *cfg.data.eval_domains]
    metrics = evaluate_domains(model, cfg, domains, device=args.device)
    metrics.update(robustness(metrics))
    print(f"{'domain':<28} {'mIoU':>7} {'mAcc':>7} {'aAcc':>7} {'band':>7} {'small':>7} {'thin':>7}")
    for d in (d.name for d in parse_domains(domains)):
        row = [metrics.get(f"{d}/{k}")
               for k in (keys.MIOU, keys.MACC, keys.AACC, keys.BAND_IOU, keys.SMALL_IOU, keys.THIN_IOU)]
        print(f"{d:<28} " + " ".join(f"{v:7.4f}" if isinstance(v, float) else f"{'-':>7}" for v in row))
    notes = {"mPC": "mean over corruptions and severities of mIoU", "rPC": "mPC / clean mIoU"}
    for key, value in metrics.items():
        if key.startswith(keys.ROBUSTNESS_PREFIX):
            note = notes.get(key.split("/")[1], "mean over severities of shifted / clean mIoU")
            print(f"{key:<28} {value:7.4f}  ({note})")
    if args.run_id:
        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        tracking.log_metrics(tracking.MlflowClient(uri), args.run_id, metrics)
        print(f"[hardseg] logged {len(metrics)} metrics to MLflow run {args.run_id} at {uri}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.export import export_mmseg

    out = Path(args.out or f"{Path(args.run).stem if Path(args.run).is_file() else args.run.split('/')[-1]}"
               f"_{args.format}.pth")
    path = export_mmseg(args.run, out, args.tracking_uri)
    print(f"[hardseg] wrote {path} (mmsegmentation checkpoint: meta + state_dict; its meta['config'] is an mmseg "
          "config for it)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.predict import find_images, load_model, predict_images
    from hardseg.trainables.evaluation import with_inference_options

    images = find_images(args.images)  # bad input first: before the model is loaded
    model, cfg = load_model(args.model, args.tracking_uri)
    cfg = with_inference_options(cfg, args.mode, args.crop, args.stride, args.tta_scales, args.tta_flip,
                                 args.tta_img_scale)
    written = predict_images(model, cfg, images, Path(args.out), args.format, device=args.device)
    tta = f", TTA scales {cfg.eval.tta.scales}{' + flip' if cfg.eval.tta.flip else ''}" if cfg.eval.tta else ""
    print(f"[hardseg] wrote {len(written)} {args.format} predictions to {args.out} ({cfg.eval.mode}{tta})")
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.data.synthetic import generate_command

    cfg = _load(args)
    if cfg.data.dataset != "synthetic":
        raise HardsegError(f"data.dataset is '{cfg.data.dataset}'; 'hardseg data generate' makes the synthetic set only")
    root = Path(args.root or cfg.data.root).resolve()
    generate_command(root, cfg.data.synthetic)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Exit 0: the tree reads cleanly; 2: a problem (the first one named on the error line)."""
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.config import DataConfig
    from hardseg.data.check import check_tree, format_report
    from hardseg.data.registry import get_dataset

    get_dataset(args.dataset)  # unknown name: one line listing the known ones
    cfg = DataConfig(dataset=args.dataset, root=str(Path(args.root).resolve()))
    reports, names = check_tree(cfg, args.split, args.variant)
    print(format_report(reports, names))
    problems = [p for r in reports for p in r.problems]
    if problems:
        more = f" ({len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise HardsegError(problems[0] + more)
    print(f"[hardseg] {sum(r.pairs for r in reports)} pairs in {len(reports)} split(s): no problem found")
    return 0


def cmd_data_corrupt(args: argparse.Namespace) -> int:
    """Corrupted copies of a split, made once, for ``corrupt:`` domains (docs/datasets.md, "Corruption cache")."""
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.config import DataConfig
    from hardseg.data.corruption_cache import default_cache_dir, make_cache, parse_corruptions, parse_severities
    from hardseg.data.registry import get_dataset

    root = Path(args.root).resolve()
    if not root.is_dir():
        raise HardsegError(f"dataset root {root} does not exist or is not a folder")
    get_dataset(args.dataset)  # unknown name: one line listing the known ones
    names, severities = parse_corruptions(args.corruptions), parse_severities(args.severities)
    if args.corruptions == ["all"] and "frost" not in names:
        print("[hardseg] frost skipped: its photographs are missing (docs/datasets.md, \"Corruptions\")")
    out = Path(args.out).resolve() if args.out else default_cache_dir(root)
    cfg = DataConfig(dataset=args.dataset, root=str(root))
    done = make_cache(cfg, args.split, names, severities, out, args.workers, progress=sys.stderr.isatty())
    print(f"[hardseg] {done.out}: {len(names)} corruptions x {len(severities)} severities of {done.images} images "
          f"({done.files} files, {done.bytes / 2 ** 20:.1f} MiB) in {done.seconds:.1f}s ({done.cpu_seconds:.1f} "
          f"CPU-s in this call)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.reports.collect import find_parent, open_client
    from hardseg.reports.publish import write_report

    client, uri = open_client(args.tracking_uri)
    parent = find_parent(client, args.name, experiment=args.experiment)
    name = parent.data.tags.get(keys.SWEEP, args.name)
    out = Path(args.out) if args.out else Path("reports") / name
    # an explicit --baseline must exist; the default 'ce' may not (a sweep over one strategy's weights)
    paths = write_report(client, parent, out, metrics=args.metrics, baseline=args.baseline or "ce",
                         require_baseline=bool(args.baseline), correction=args.correction)
    figures = ", ".join(str(p) for k, p in paths.items() if k.endswith("_png"))
    print(f"[hardseg] report of '{name}': {paths['markdown']}, {paths['html']} and {paths['parquet']}, figures "
          f"{figures} (also artifacts of MLflow run {parent.info.run_id} under report/; store {uri})")
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    """Exit 0: no regressions; 1: regressions (or a watched metric missing tonight); 2: bad input."""
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.nightly import run_nightly
    from hardseg.platform.suite import load_suite

    suite = load_suite(args.suite)
    overrides = list(args.overrides) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
    out = run_nightly(suite, overrides=overrides, out_dir=Path(args.out) if args.out else None,
                      in_process=not args.always_trainer)
    return out.exit_code


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """Stage a model's ImageNet weights in a folder laid out as TORCH_HOME and HF_HOME (shared storage)."""
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.models.pretrained import fetch_weights, mirror_of

    mirror = mirror_of(argparse.Namespace(weights_mirror=args.mirror))
    path = fetch_weights(args.model, args.encoder, Path(args.to), mirror, args.timeout)
    to = Path(args.to).resolve()
    print(f"[hardseg] {path.name} ({path.stat().st_size} bytes) in {path.parent}; on every node set "
          f"TORCH_HOME={to} HF_HOME={to} (or copy {to}/hub into their caches)")
    return 0


def _check_tracking_uri(args: argparse.Namespace) -> None:
    """An unsupported ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` fails here, before Ray or MLflow start."""
    uri = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        # local: MLflow (≈2 s) only when there is a URI to check, so a bad --set, 'cluster up' and 'jobs' answer at once
        from hardseg.platform.tracking import check_tracking_uri

        check_tracking_uri(uri)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan (seeds per comparison and cell, GPU-hours); from a pilot also log it on its parent run."""
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.reports import plan

    common = dict(alpha=args.alpha, correction=args.correction, power=args.power, iterations=args.iterations,
                  gpus=args.gpus)
    plan.check_budget(args.iterations, args.gpus, args.seconds_per_iter, args.simulate)
    client = None
    if args.pilot:
        if args.sigma is not None or args.sigma_diff is not None:
            raise plan.PlanError("give a pilot NAME or --sigma/--sigma-diff, not both")
        from hardseg.reports.collect import open_client  # local: as above, this command's modules only

        client, _ = open_client(args.tracking_uri)
        result = plan.plan_from_pilot(client, args.pilot, delta=args.delta, metrics=args.metrics,
                                      strategies=args.strategies, metric_count=args.metric_count,
                                      baseline=args.baseline, experiment=args.experiment,
                                      seconds_per_iter=args.seconds_per_iter, **common)
    else:
        if args.delta is None:
            raise plan.PlanError("--delta is required with --sigma/--sigma-diff (the effect to detect)")
        result = plan.plan_from_sigma(args.delta, sigma_run=args.sigma, sigma_diff=args.sigma_diff,
                                      strategies=args.strategies or 1, metrics=args.metric_count or 1,
                                      baseline=args.baseline, seconds_per_iter=args.seconds_per_iter,
                                      seconds_source="--seconds-per-iter", **common)
    simulation = plan.simulate_plan(result, args.simulate) if args.simulate else None
    markdown = plan.plan_markdown(result, simulation)
    print(markdown, end="")
    if client is not None:
        plan.log_plan(client, result, markdown, simulation)
        print(f"[hardseg] plan logged on MLflow run {result.pilot_run_id} under {plan.ARTIFACT_DIR}/")
    return 0


DEMO_STRATEGIES = ["ce", "hl", "ohem"]
# Three seeds: the fewest on which a report tests a difference (hardseg.reports.stats.MIN_PAIRED_SEEDS);
# 4 epochs keep the 9 trials (2 at a time on 2 cores) inside the demo's 10-minute budget with set-up.
DEMO_SEEDS = [0, 1, 2]
DEMO_EPOCHS = 4
# the cross-domain matrix: fog and night at three severities each, and the target domain
DEMO_DOMAINS = "[fog-1,fog-3,fog-5,night-1,night-3,night-5,target]"


def cmd_demo(args: argparse.Namespace) -> int:
    """A small ablation on the embedded defaults (CE, HL and OHEM × 3 seeds, one worker per trial),
    then its report (Markdown, HTML, figures, Parquet) under ``reports/<name>/``."""
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform.ablation import run_ablation
    from hardseg.platform.tracking import ui_hint
    from hardseg.reports.collect import open_client
    from hardseg.reports.publish import write_report

    # OHEM's default min_kept (100000 per image, for 769² crops) keeps every pixel of a
    # 64×64 image; 10 % of the pixels is the spec's scaled equivalent (docs/strategies.md §2).
    overrides = [f"train.epochs={DEMO_EPOCHS}", "ray.num_workers=1", "strategy_params.ohem.min_kept_fraction=0.1",
                 f"data.eval_domains={DEMO_DOMAINS}", *args.overrides] + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
    out = run_ablation(DEMO_STRATEGIES, DEMO_SEEDS, overrides=overrides)
    _print_sweep(out)
    if out.interrupted:
        return 130
    client, uri = open_client(out.tracking_uri)
    paths = write_report(client, client.get_run(out.parent_run_id), Path("reports").resolve() / out.name)
    print(f"[hardseg] report: {paths['markdown']} and {paths['html']} (also under report/ of MLflow run "
          f"{out.parent_run_id})")
    exp_id = client.get_run(out.parent_run_id).info.experiment_id
    print(f"[hardseg] compare the runs in the MLflow UI: {ui_hint(uri, exp_id)} "
          "(expand the parent run, select its children, Compare)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform import jobs

    command = args.job_command[1:] if args.job_command[:1] == ["--"] else args.job_command
    if command and command[0] in ("submit", "jobs", "cluster"):
        raise HardsegError(f"'hardseg {command[0]}' runs on this machine; submit a run command (sweep, ablate, "
                           f"train, nightly, ...)")
    return jobs.submit(args.address, command, working_dir=args.working_dir, env=args.env, wait=not args.no_wait)


def cmd_jobs(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform import jobs

    if args.jobs_command == "list":
        return jobs.list_jobs(args.address)
    if args.jobs_command == "logs":
        return jobs.logs(args.address, args.job_id, follow=args.follow)
    return {"status": jobs.status, "stop": jobs.stop}[args.jobs_command](args.address, args.job_id)


def cmd_cluster(args: argparse.Namespace) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.platform import local_cluster

    if args.cluster_command == "down":
        n = local_cluster.down(args.dir)
        print(f"[hardseg] local cluster in {args.dir} stopped ({n} processes)")
        return 0
    backend = None if args.mlflow_backend == "none" else args.mlflow_backend
    state = local_cluster.up(args.dir, workers=args.workers, cpus_per_node=args.cpus_per_node,
                             mlflow_backend=backend, auth=not args.no_auth,
                             private_tmpfs=Path(args.private_tmpfs).resolve() if args.private_tmpfs else None)
    print(f"[hardseg] Ray head {state.gcs_address} + {args.workers} worker node(s), dashboard {state.dashboard_url}"
          + (f", MLflow {state.mlflow_url} ({state.mlflow_backend})" if state.mlflow_url else "")
          + f"; state in {Path(state.dir) / local_cluster.STATE_FILE}. Export:")
    print(state.exports())
    return 0


def _add_cluster_parsers(sub) -> None:
    s = sub.add_parser("submit", help="run a hardseg command as a Ray job on a cluster (Ray Jobs API)")
    s.add_argument("--address", help="Ray dashboard address, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    s.add_argument("--working-dir", default=".", help="folder uploaded as the job's working directory (default: .)")
    s.add_argument("--no-wait", action="store_true", help="print the job id and return; do not follow the logs")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable); MLFLOW_TRACKING_URI is forwarded when set")
    s.add_argument("job_command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                   help="the hardseg command to run, e.g. -- sweep quickstart --num-samples 4")
    s.set_defaults(func=cmd_submit)

    j = sub.add_parser("jobs", help="status, logs, stop or list of Ray jobs")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    for name, text in (("status", "the job's status"), ("logs", "the job's logs"), ("stop", "stop the job"),
                       ("list", "all jobs of the cluster")):
        jp = jsub.add_parser(name, help=text)
        if name != "list":
            jp.add_argument("job_id")
        if name == "logs":
            jp.add_argument("--follow", action="store_true", help="stream until the job ends")
        jp.add_argument("--address", help="Ray dashboard address (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
        jp.set_defaults(func=cmd_jobs)

    c = sub.add_parser("cluster", help="a local multi-node Ray cluster and MLflow server, to try the cluster path")
    csub = c.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="start a head and worker nodes on this machine, and an mlflow server")
    up.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default: 1)")
    up.add_argument("--cpus-per-node", type=float, default=1,
                    help="logical CPUs of each node, a whole number (default: 1)")
    up.add_argument("--mlflow-backend", default="sqlite",
                    help="postgresql+psycopg2://USER@HOST:5432/DB (multi-node), sqlite (a file in --dir) or none")
    up.add_argument("--no-auth", action="store_true", help="no token authentication (RAY_AUTH_MODE=disabled)")
    # tests only (needs root): the last worker node sees an empty tmpfs over this folder (local_cluster.start_worker)
    up.add_argument("--private-tmpfs", help=argparse.SUPPRESS)
    down = csub.add_parser("down", help="stop exactly what 'cluster up' started")
    for cp in (up, down):
        cp.add_argument("--dir", default=".hardseg-cluster", help="state, logs and token (default: .hardseg-cluster)")
        cp.set_defaults(func=cmd_cluster)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hardseg", description="Hard-pixel strategy experiments for semantic "
                                "segmentation on Ray Train, Ray Tune + Optuna and MLflow.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="one DDP training run on Ray Train, logged to MLflow")
    _add_config_args(t)
    t.add_argument("--register", metavar="NAME", help="register the run's MLflow model in the model registry as NAME")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a killed or failed run in the same MLflow run, from "
                   "its latest checkpoint (CONFIG and --set may change only where it runs and logs)")
    _add_dry_run(t, "print the resolved config and exit; no Ray, no MLflow run, no data generated")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    g = dsub.add_parser("generate", help="generate the synthetic hard-pixel benchmark (deterministic by seed)")
    _add_config_args(g)
    g.add_argument("--root", help="output folder (default: data.root of the config)")
    g.set_defaults(func=cmd_data_generate)
    ck = dsub.add_parser("check", help="scan a dataset tree: pairs, missing masks, image sizes, label ids, "
                         "class frequencies; exit 2 on a broken tree")
    ck.add_argument("root", help="the dataset's root folder (layouts: docs/datasets.md)")
    ck.add_argument("--dataset", required=True, help="format: cityscapes, folder, ade20k, voc, gta5, "
                    "foggy_cityscapes, acdc, dark_zurich, or a plugin's name")
    ck.add_argument("--split", nargs="+", help="splits to scan (default: every split found)")
    ck.add_argument("--variant", help="ACDC's condition or Foggy Cityscapes' beta (default: all)")
    ck.set_defaults(func=cmd_data_check)
    cr = dsub.add_parser("corrupt", help="write ImageNet-C corrupted copies of a split once, for corrupt: domains")
    cr.add_argument("root", help="the dataset's root folder")
    cr.add_argument("--dataset", required=True, help="format: cityscapes, folder, ade20k, voc, gta5, ... (as data check)")
    cr.add_argument("--split", nargs="+", default=["val"], help="splits to corrupt (default: val)")
    cr.add_argument("--corruptions", nargs="+", default=["all"], metavar="NAME",
                    help="corruption names, or all (default; frost only when its photographs are present)")
    cr.add_argument("--severities", nargs="+", default=["1-5"], help="e.g. 1-5 (default), 3, 1,3")
    cr.add_argument("--out", help="cache folder (default: <root>-corrupted beside the root, found without "
                    "configuration; elsewhere set data.corruption_cache)")
    cr.add_argument("--workers", type=int, help="processes (default: the CPUs)")
    cr.set_defaults(func=cmd_data_corrupt)

    sw = sub.add_parser("sweep", help="search strategy weights: Ray Tune + Optuna (+ ASHA), one MLflow parent run")
    sw.add_argument("space", nargs="?", help="search space: a preset (quickstart, hl, ohem, ...) or a YAML file")
    sw.add_argument("--config", help="run config YAML the space starts from, or recipe:NAME (default: the embedded "
                    "default)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key for every trial (repeatable)")
    sw.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    sw.add_argument("--name", help="sweep name (default: <space>-<date>-<time>); also the Optuna study's name")
    sw.add_argument("--num-samples", type=int, help="override the space's sweep.num_samples")
    sw.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: what fits)")
    sw.add_argument("--resume", metavar="NAME", help="finish an interrupted sweep")
    sw.add_argument("--storage-path", help="with --resume: the ray.storage_path the sweep ran with")
    sw.add_argument("--retry-failed", action="store_true", help="with --resume: also rerun the trials that "
                    "failed, each from its last checkpoint in its own MLflow child run")
    sw.add_argument("--always-trainer", action="store_true",
                    help="fit a TorchTrainer even for one-worker trials (default: train in the trial's process)")
    sw.add_argument("--register", metavar="NAME",
                    help="register the best trial's MLflow model in the model registry as NAME")
    _add_dry_run(sw, "print the base config and the trials' parameters and exit; nothing started")
    sw.set_defaults(func=cmd_sweep)

    ab = sub.add_parser("ablate", help="strategies × seeds with identical budgets, one MLflow parent run")
    _add_config_args(ab)
    ab.add_argument("--strategies", nargs="+", required=True,
                    help="strategies or '+'-joined combinations, e.g. ce hl ohem hl+coarse_to_fine")
    ab.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (data order, init, augmentation)")
    ab.add_argument("--name", help="ablation name (default: ablation-<date>-<time>)")
    ab.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: what fits)")
    ab.add_argument("--always-trainer", action="store_true",
                    help="fit a TorchTrainer even for one-worker trials")
    _add_dry_run(ab, "print the base config and the grid's trials and exit; nothing started")
    ab.set_defaults(func=cmd_ablate)

    rp = sub.add_parser("report", help="Markdown, HTML, PNG and Parquet report of a sweep or ablation, "
                                          "read from MLflow")
    rp.add_argument("name", help="the sweep's or ablation's name (or its MLflow parent run id)")
    rp.add_argument("--tracking-uri",
                    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    rp.add_argument("--experiment", default="hardseg", help="MLflow experiment (default: hardseg)")
    rp.add_argument("--out", help="output folder (default: reports/<name>)")
    rp.add_argument("--baseline", help="strategy the others are compared with (default: ce)")
    rp.add_argument("--metrics", nargs="+", metavar="METRIC",
                    help="metrics to tabulate, e.g. val/miou val/band_iou fog-3/miou "
                         "(default: val/miou, band, small and thin IoU, and <domain>/miou)")
    rp.add_argument("--correction", default="holm",
                    help="multiple-comparison correction over the report's tests: holm (family-wise error, "
                         "default), bh (Benjamini-Hochberg, false discovery rate) or none")
    rp.set_defaults(func=cmd_report)

    pl = sub.add_parser("plan", help="paired seeds and GPU-hours a verdict needs, from a pilot ablation or a given "
                                     "spread (after the report's correction)")
    pl.add_argument("pilot", nargs="?", help="a pilot: an ablation's name (or parent run id), or a study's name "
                                             "(its first stage); omit with --sigma/--sigma-diff")
    pl.add_argument("--sigma", type=float, help="one run's seed-to-seed sd of the metric (σ_d = √2·σ)")
    pl.add_argument("--sigma-diff", type=float, help="the sd of a paired difference (strategy − baseline)")
    pl.add_argument("--delta", type=float, help="the effect to detect, in the metric's units (default with a "
                                                "pilot: its observed |Δ|)")
    pl.add_argument("--strategies", type=int, help="strategies compared with the baseline in the planned "
                                                   "ablation (default: the pilot's; 1)")
    pl.add_argument("--metrics", nargs="+", metavar="METRIC", help="pilot metrics to plan (default: val/miou)")
    pl.add_argument("--metric-count", type=int, help="metrics (domains included) each strategy is tested on in "
                                                     "the planned report (default: len(--metrics); 1)")
    pl.add_argument("--iterations", type=int, help="iterations per run of the planned recipe")
    pl.add_argument("--seconds-per-iter", type=float, help="wall seconds per iteration (default: the pilot's)")
    pl.add_argument("--gpus", type=int, default=1, help="GPUs per run (default: 1)")
    pl.add_argument("--power", type=float, default=0.8)
    pl.add_argument("--alpha", type=float, default=0.05)
    pl.add_argument("--correction", default="holm", help="the report's correction: holm (default), bh or none")
    pl.add_argument("--baseline", default="ce")
    pl.add_argument("--simulate", type=int, default=0, metavar="N",
                    help="also check the seeds with N simulated paired tables at n and n - 1")
    pl.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    pl.add_argument("--experiment", default="hardseg")
    pl.set_defaults(func=cmd_plan)

    st = sub.add_parser("study", help="the whole question: defaults x seeds, a search over combinations and "
                                      "weights, confirmation on fresh seeds, one report that answers first")
    st.add_argument("study", nargs="?", help="a shipped study ('quick') or a study YAML file")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a run-config key for every run of every stage, after the study's base")
    st.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    st.add_argument("--name", help="study name (default: <study>-<date>-<time>)")
    st.add_argument("--resume", metavar="NAME", help="finish an interrupted study (finished trials are not rerun)")
    st.add_argument("--storage-path", help="with --resume: the ray.storage_path the study ran with")
    st.add_argument("--always-trainer", action="store_true", help="fit a TorchTrainer even for one-worker trials")
    st.set_defaults(func=cmd_study)

    ev = sub.add_parser("evaluate", help="evaluate a trained model on evaluation domains (cross-domain)")
    ev.add_argument("checkpoint", help="model_export.pt (MLflow artifact model/), a checkpoint.pt, or an MLflow "
                    "model URI: runs:/<run id>/model, models:/<name>/<version>")
    ev.add_argument("--domains", nargs="+", help="splits (val fog-1 … night-5 target), corrupt:<name>-<severity>, "
                    "or [NAME=]KIND:PATH[:SPLIT] with KIND cityscapes, folder, ade20k, voc, gta5, dark_zurich, "
                    "acdc (KIND:PATH:<condition>), foggy_cityscapes (docs/datasets.md); default: val and the run's "
                    "data.eval_domains")
    ev.add_argument("--data-root", help="where the model's dataset lives now (default: the run's data.root)")
    ev.add_argument("--device", default="cpu")
    _add_inference_args(ev)
    ev.add_argument("--run-id", help="also log the metrics to this MLflow run")
    ev.add_argument("--tracking-uri")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="write a run's model in another framework's checkpoint layout (mmseg)")
    ex.add_argument("run", help="MLflow run id, runs:/<run id>, a model_export.pt file, or a checkpoint.pt (then "
                    "with HL's branch as weigh_head)")
    ex.add_argument("--format", required=True, choices=["mmseg"],
                    help="mmseg: mmsegmentation 0.22.1's {meta, state_dict} (the mmseg networks only)")
    ex.add_argument("--out", help="output file (default: <run>_<format>.pth)")
    ex.add_argument("--tracking-uri")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="write a model's predictions as PNGs (Cityscapes label ids, train ids or "
                        "colours), as mmsegmentation's test tool does")
    pr.add_argument("model", help="model_export.pt, checkpoint.pt, an MLflow run id, runs:/<id>/model or "
                    "models:/<name>/<version>")
    pr.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    pr.add_argument("--out", required=True, help="folder for the PNGs, one <image stem>.png per image")
    pr.add_argument("--format", default="train-ids", choices=["cityscapes-ids", "train-ids", "color"],
                    help="cityscapes-ids: label ids for the Cityscapes test server; train-ids: class ids; "
                    "color: RGB class colours (default: train-ids)")
    _add_inference_args(pr)
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--tracking-uri", help="where an MLflow run id or URI is looked up")
    pr.set_defaults(func=cmd_predict)

    nt = sub.add_parser("nightly", help="run a fixed suite, compare with the previous nightly, exit 1 on regressions")
    nt.add_argument("suite", help="suite YAML file or a shipped suite ('nightly')")
    nt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a run-config key for every trial, after the suite's budget (repeatable)")
    nt.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    nt.add_argument("--out", help="summary folder (default: reports/nightly/<suite>-<date>-<time>)")
    nt.add_argument("--always-trainer", action="store_true", help="fit a TorchTrainer even for one-worker trials")
    nt.set_defaults(func=cmd_nightly)

    demo = sub.add_parser("demo", help="the demo: a small ablation (ce, hl, ohem × 3 seeds, 4 epochs) on the embedded defaults")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument("--tracking-uri")
    demo.set_defaults(func=cmd_demo)
    _add_cluster_parsers(sub)

    w = sub.add_parser("weights", help="pretrained weight files")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    wf = wsub.add_parser("fetch", help="download a model's ImageNet weights into DIR (TORCH_HOME/HF_HOME layout), "
                                       "to stage them on shared storage for a cluster without internet")
    wf.add_argument("--model", required=True, help="model.name, e.g. deeplabv3_resnet50 or smp:Unet")
    wf.add_argument("--encoder", help="model.encoder of smp:* models (default: the model's default encoder)")
    wf.add_argument("--to", required=True, metavar="DIR", help="folder to fill; point TORCH_HOME and HF_HOME at it")
    wf.add_argument("--mirror", help="base URL of an internal mirror (default: HARDSEG_WEIGHTS_MIRROR, else the "
                                     "providers' servers)")
    wf.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default: 30)")
    wf.set_defaults(func=cmd_weights_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    # local: this command's modules only, so --help and bad input answer at once (module docstring)
    from hardseg.config import resolve_recipe
    from hardseg.platform.console import quiet_console

    timeline.mark("command: started", t=timeline.process_start())
    timeline.mark("command: cli imported")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    quiet_console()  # before any command imports Ray
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "config", None):  # recipe:NAME -> the shipped file, for every command that takes one
            args.config = resolve_recipe(args.config)
        _check_tracking_uri(args)
        return args.func(args)
    except HardsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    """The ``hardseg`` script: :func:`main`, then Ray left (:func:`hardseg.platform.cluster.stop_ray`),
    the ``atexit`` handlers run (MLflow's, logging's, temporary folders') and the process ended.

    Python's own exit after a command that used Ray, torch and MLflow spends 2-2.5 s tearing the
    interpreter down after those handlers (measured here, benchmarks/README.md "Exit"), for nothing
    a finished command needs; it is skipped with ``os._exit``. An uncaught exception, or a thread
    still running, takes Python's ordinary exit.
    """
    try:
        rc = main()
    except SystemExit as done:  # argparse's --help and usage errors
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        rc = done.code if isinstance(done.code, int) else int(done.code is not None)
    timeline.mark("command: exit started")
    if any(not t.daemon and t is not threading.main_thread() for t in threading.enumerate()):
        sys.exit(rc)  # Python's exit waits for such a thread before its atexit handlers (Ray's shutdown among them)
    if "ray" in sys.modules:
        # local: only a command that used Ray needs it, and the module imports Ray
        from hardseg.platform.cluster import stop_ray

        stop_ray()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry_point()
