"""A prepared GPU check: hardseg's loop against a bare AMP PyTorch loop, strategies, loader, slide evaluation.

One command on a GPU box (no Ray, MLflow, Optuna or pip needed: the loop runs through its plain entry
point, :mod:`hardseg.trainables.local`; pydantic and its few dependencies come from ``.gpu-vendor/``
beside the checkout when present, made by ``benchmarks/gpu_vendor.sh``)::

    python benchmarks/gpu_check.py [--model deeplabv3_resnet50]      # e.g. --model smp:DeepLabV3Plus

On generated Cityscapes-format files (1024×2048, :mod:`cityscapes_files`), 512×1024 crops, batch 8,
AMP and channels_last, it measures

* ``loop_vs_bare``: median step time of hardseg's loop (``run_local``) / a bare AMP loop on the same
  model, data pipeline, optimiser and schedule (target ≤ 1.05), and the same for epoch throughput;
* every strategy's median step time / CE's, and its peak memory;
* peak memory of the hardseg run;
* loader throughput alone (decode + augment, the run's loader workers) / training throughput (target ≥ 3);
* evaluation of one 1024×2048 image by sliding 512×1024 windows, and whole, under autocast: time, peak memory;
* evaluation throughput over ``--eval-images`` val images (whole and slide): images/s, and the metrics'
  share of it (``SegMetrics.update`` on the device alone, on the same predictions, / the evaluation).

Prints a table and writes JSON (default ``benchmarks/results/gpu_check_<model>_<device>.json``).
``--smoke`` runs the same code on CPU at tiny sizes (the test suite runs it, so the script cannot rot).
The JSON lists which of ray/mlflow/optuna got imported (must be none).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = Path(os.environ.get("HARDSEG_GPU_VENDOR", REPO / ".gpu-vendor"))


def _use_vendor() -> None:
    """pydantic & co. for a box without them (benchmarks/gpu_vendor.sh), if built for this Python."""
    stamp = VENDOR / "PYTHON_VERSION"
    if not stamp.is_file():
        return
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if stamp.read_text().strip() == here:
        sys.path.insert(0, str(VENDOR))
    elif importlib.util.find_spec("pydantic") is None:
        print(f"[gpu_check] {VENDOR} is for Python {stamp.read_text().strip()}, not {here}: not used", flush=True)


_use_vendor()
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cityscapes_files import make_cityscapes  # noqa: E402
from hardseg.config import HardsegConfig, load_config  # noqa: E402
from hardseg.data import build_dataset  # noqa: E402
from hardseg.errors import ConfigError  # noqa: E402
from hardseg.keys import FAILURE  # noqa: E402
from hardseg.models import build_model, predict_classes  # noqa: E402
from hardseg.strategies import available_strategies  # noqa: E402
from hardseg.trainables.local import run_local  # noqa: E402
from hardseg.strategies.build import build_training_model, check_strategies_fit  # noqa: E402
from hardseg.trainables.evaluation import _logits, evaluate, metrics_for  # noqa: E402
from hardseg.trainables.loaders import build_eval_loader, build_train_loader  # noqa: E402
from hardseg.trainables.optim import build_optimizer, poly_lambda  # noqa: E402
from hardseg.trainables.settings import StepSettings, autocast_for, slide_settings  # noqa: E402

FORBIDDEN = ("ray", "mlflow", "optuna")


# -- sizes -------------------------------------------------------------------------
def settings(args: argparse.Namespace) -> dict:
    if args.smoke:
        return dict(size=(64, 128), crop=(32, 64), batch=2, steps=args.steps or 3, strategy_steps=2, workers=1,
                    threads=1, loader_batches=4, eval_images=2)
    cpus = os.cpu_count() or 2
    return dict(size=(1024, 2048), crop=(512, 1024), batch=args.batch, steps=args.steps or 16,
                strategy_steps=args.strategy_steps, workers=args.workers if args.workers is not None else cpus - 1,
                threads=cpus, loader_batches=args.steps, eval_images=args.eval_images)


def run_config(model: str, root: Path, s: dict, strategies: list[str], epochs: int) -> HardsegConfig:
    h, w = s["crop"]
    return load_config(None, [
        "data.dataset=cityscapes", f"data.root={root}", f"data.augment.crop=[{h},{w}]", "data.augment.scale=[0.5,2.0]",
        f"data.loader_workers={s['workers']}", "data.eval_domains=[]", f"model.name={model}",
        f"train.batch_size={s['batch']}", f"train.epochs={epochs}", "train.amp=on", "train.channels_last=on",
        f"train.num_threads={s['threads']}", f"train.eval_every={epochs}", "train.log_images_every=0",
        "eval.mode=slide", f"eval.crop=[{h},{w}]", "eval.batch_size=1", f"strategies=[{','.join(strategies)}]",
    ])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a phase: CUDA allocator peak, or on CPU the process's peak RSS (VmHWM, reset
    through /proc/self/clear_refs where the kernel allows it; else the lifetime peak)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "PeakMemory":
        self.mib = float("nan")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.mib = int(line.split()[1]) / 1024
        except OSError:
            import resource

            self.mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the measurements ----------------------------------------------------------------
def hardseg_loop(cfg: HardsegConfig, device: torch.device) -> dict:
    """hardseg's loop through its plain entry point; the last epoch's median step time and throughput."""
    with PeakMemory(device) as mem:
        hist = run_local(cfg, device=str(device))
    last = hist[-1]
    if FAILURE in last:
        raise RuntimeError(last[FAILURE])
    return {"step_time_s": last["train/step_time_s"], "images_per_s": last["train/images_per_s"],
            "epoch_time_s": last["train/epoch_time_s"], "peak_mib": mem.mib, "loss": last["train/loss"]}


def bare_step(net, images: torch.Tensor, target: torch.Tensor, opt, sched, scaler, device: torch.device) -> None:
    """One plain AMP step: channels_last input, forward, CE, scaled backward, optimiser and schedule."""
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    target = target.to(device, non_blocking=True)
    with autocast_for(device, True):
        loss = F.cross_entropy(net(images).logits, target, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()


def bare_loop(cfg: HardsegConfig, device: torch.device) -> dict:
    """The reference: forward, CE, scaled backward, optimiser and poly schedule under autocast, channels_last,
    on the same model, loader (workers, pinned memory) and optimiser as hardseg's run; nothing else."""
    torch.set_num_threads(cfg.train.num_threads or 1)
    torch.manual_seed(cfg.seed)
    ds = build_dataset(cfg.data, "train", train=True)
    loader, sampler = build_train_loader(cfg, ds, 0, 1, device)
    net = build_model(cfg.model.name, ds.info.num_classes, aux=cfg.model.aux, width=cfg.model.width,
                      norm=cfg.model.norm).to(device).to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, net, fused=device.type == "cuda")
    steps = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(cfg.train.epochs * steps, cfg.train.poly_power))
    scaler = torch.amp.GradScaler(device.type)
    net.train()
    with PeakMemory(device) as mem:
        for epoch in range(cfg.train.epochs):
            sampler.set_epoch(epoch)
            times: list[float] = []
            sync(device)
            start = time.perf_counter()
            for images, target in loader:
                t0 = time.perf_counter()
                bare_step(net, images, target, opt, sched, scaler, device)
                times.append(time.perf_counter() - t0)
            sync(device)
            elapsed = time.perf_counter() - start
    return {"step_time_s": statistics.median(times), "images_per_s": steps * cfg.train.batch_size / elapsed,
            "epoch_time_s": elapsed, "peak_mib": mem.mib}


def step_only(cfg: HardsegConfig, device: torch.device, repeat: int) -> dict:
    """The training step alone: hardseg's ``train_one_epoch`` vs the bare step on the same batches held in
    memory (no loader), alternating ``repeat`` times; each side's fastest median step time."""
    from hardseg.trainables.loop import train_one_epoch

    torch.set_num_threads(cfg.train.num_threads or 1)
    ds = build_dataset(cfg.data, "train", train=True)
    loader, _ = build_train_loader(cfg, ds, 0, 1, device)
    batches = list(loader)
    info = ds.info

    def fresh():
        torch.manual_seed(cfg.seed)
        tm, objective = build_training_model(cfg, info, None)
        tm = tm.to(device).to(memory_format=torch.channels_last)
        opt = build_optimizer(cfg, tm, fused=device.type == "cuda")
        return tm, objective, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), torch.amp.GradScaler(device.type)

    ours, bare = [], []
    for _ in range(repeat):
        tm, objective, opt, sched, scaler = fresh()
        settings = StepSettings(device, amp=True, channels_last=True)
        ours.append(train_one_epoch(tm, objective, batches, opt, sched, 0, settings, scaler)["train/step_time_s"])
        tm, _, opt, sched, scaler = fresh()
        net, times = tm.net.train(), []
        for images, target in batches:
            t0 = time.perf_counter()
            bare_step(net, images, target, opt, sched, scaler, device)
            times.append(time.perf_counter() - t0)
        sync(device)
        bare.append(statistics.median(times))
    return {"hardseg_step_time_s": ours, "bare_step_time_s": bare, "step_time_ratio": min(ours) / min(bare)}


def loader_images_per_s(cfg: HardsegConfig, device: torch.device, batches: int) -> float:
    """The training loader alone (decode, augment, collate, pin): images/s after its first batch."""
    ds = build_dataset(cfg.data, "train", train=True)
    loader, sampler = build_train_loader(cfg, ds, 0, 1, device)
    it, epoch = iter(loader), 0
    next(it)  # worker start-up and the first batch are not throughput
    n, start = 0, time.perf_counter()
    while n < batches * cfg.train.batch_size:
        try:
            images, _ = next(it)
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            it = iter(loader)
            continue
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def eval_one_image(cfg: HardsegConfig, device: torch.device, mode: str) -> dict:
    """One full-size val image, ``mode`` whole or slide, autocast and channels_last as in training."""
    c = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"mode": mode})})
    ds = build_dataset(c.data, "val", train=False)
    ds = torch.utils.data.Subset(ds, [0])
    ds.info = ds.dataset.info  # type: ignore[attr-defined]
    loader = build_eval_loader(c, ds, 0, 1, device)
    torch.manual_seed(0)
    tm, _ = build_training_model(c, ds.info, None)
    net = tm.export().to(device).to(memory_format=torch.channels_last).eval()
    settings = StepSettings(device, amp=True, channels_last=True, slide=slide_settings(c))
    evaluate(net, loader, metrics_for(ds.info), settings)  # warm-up (cuDNN autotune)
    with PeakMemory(device) as mem:
        sync(device)
        t0 = time.perf_counter()
        evaluate(net, loader, metrics_for(ds.info), settings)
        sync(device)
        took = time.perf_counter() - t0
    return {"time_s": took, "peak_mib": mem.mib}


def eval_throughput(cfg: HardsegConfig, device: torch.device, mode: str) -> dict:
    """Images/s of the loop's ``evaluate`` over the val split (``mode`` whole or slide, autocast and
    channels_last), and the metrics' share: ``SegMetrics.update`` alone on the same targets and
    predictions, on the device, over the evaluation's time."""
    c = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"mode": mode})})
    ds = build_dataset(c.data, "val", train=False)
    loader = build_eval_loader(c, ds, 0, 1, device)
    torch.manual_seed(0)
    tm, _ = build_training_model(c, ds.info, None)
    net = tm.export().to(device).to(memory_format=torch.channels_last).eval()
    settings = StepSettings(device, amp=True, channels_last=True, slide=slide_settings(c))
    evaluate(net, loader, metrics_for(ds.info), settings)  # warm-up (cuDNN autotune, loader workers)
    sync(device)
    t0 = time.perf_counter()
    evaluate(net, loader, metrics_for(ds.info), settings)
    sync(device)
    eval_s = time.perf_counter() - t0
    pairs = []
    with torch.no_grad(), autocast_for(device, True):
        for images, target in loader:
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            pairs.append((target, predict_classes(_logits(net(images)))))  # whole-image predictions for both
    metrics = metrics_for(ds.info)
    for target, pred in pairs[:1]:  # warm-up
        metrics.update(target, pred)
    metrics = metrics_for(ds.info)
    sync(device)
    t0 = time.perf_counter()
    for target, pred in pairs:
        metrics.update(target, pred)
    metrics.compute()  # the one host read
    sync(device)
    metrics_s = time.perf_counter() - t0
    return {"images": len(ds), "seconds": eval_s, "images_per_s": len(ds) / eval_s,
            "metrics_s": metrics_s, "metrics_share": metrics_s / eval_s}


# -- report ------------------------------------------------------------------------
def table(res: dict) -> str:
    rows = [("model", res["model"], ""), ("device", res["device"], ""),
            ("step time hardseg / bare (median)", f"{res['loop_vs_bare']['step_time_ratio']:.3f}", "<= 1.05"),
            ("epoch time hardseg / bare", f"{res['loop_vs_bare']['epoch_time_ratio']:.3f}", ""),
            ("step alone hardseg / bare (in-memory batches)", f"{res['step_only']['step_time_ratio']:.3f}", "<= 1.05"),
            ("hardseg step time (s)", f"{res['hardseg']['step_time_s']:.4f}", ""),
            ("bare step time (s)", f"{res['bare']['step_time_s']:.4f}", ""),
            ("hardseg peak memory (MiB)", f"{res['hardseg']['peak_mib']:.0f}", ""),
            ("train images/s (hardseg)", f"{res['hardseg']['images_per_s']:.2f}", ""),
            (f"loader images/s ({res['settings']['workers']} workers)", f"{res['loader_images_per_s']:.2f}", ""),
            ("loader / train throughput", f"{res['loader_vs_train']:.2f}", ">= 3")]
    for name, r in res["strategies"].items():
        if "skipped" in r:
            rows.append((f"strategy {name}", "skipped: " + r["skipped"], ""))
        else:
            rows.append((f"strategy {name}: step / CE, peak MiB",
                         f"{r['step_vs_ce']:.3f}, {r['peak_mib']:.0f}", ""))
    for mode, r in res["eval_one_image"].items():
        rows.append((f"eval 1 image {res['settings']['size'][0]}x{res['settings']['size'][1]} {mode}: s, peak MiB",
                     f"{r['time_s']:.3f}, {r['peak_mib']:.0f}", ""))
    for mode, r in res.get("eval_throughput", {}).items():
        rows.append((f"eval {mode} over {r['images']} images: images/s, metrics' share",
                     f"{r['images_per_s']:.2f}, {r['metrics_share']:.1%}", ""))
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b:<22} {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplabv3_resnet50", help="a registered model name (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (the test suite's run)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, help="training steps per epoch of the loop comparison (16; --smoke: 3)")
    p.add_argument("--repeat", type=int, default=1, help="alternate bare and hardseg runs this often; the "
                   "ratios use each side's fastest run (a busy machine's noise only adds time)")
    p.add_argument("--strategy-steps", type=int, default=10, help="steps of each strategy's one-epoch run")
    p.add_argument("--workers", type=int, help="loader workers (default: CPUs - 1)")
    p.add_argument("--strategies", nargs="*", help="default: every registered strategy")
    p.add_argument("--eval-images", type=int, default=8, help="val images of the evaluation throughput")
    p.add_argument("--device", help="default: cuda if available, cpu with --smoke")
    p.add_argument("--data", type=Path, help="folder for the generated Cityscapes-format files (default: a temp dir)")
    p.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/gpu_check_<model>_<device>.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    s = settings(args)
    tmp = tempfile.TemporaryDirectory(prefix="hardseg-gpu-check-")
    root = args.data or Path(tmp.name) / "cityscapes"
    n_train = max(s["batch"] * s["steps"], s["batch"] * s["strategy_steps"])
    t0 = time.perf_counter()
    make_cityscapes(root, n_train, s["eval_images"], s["size"], unique=min(8, n_train))
    print(f"[gpu_check] {n_train} Cityscapes-format files at {s['size']} in {time.perf_counter() - t0:.1f}s; "
          f"device {device}", flush=True)

    def cfg_for(strategies: list[str], epochs: int) -> HardsegConfig:
        return run_config(args.model, root, s, strategies, epochs)

    res: dict = {"model": args.model, "settings": {**s, "size": list(s["size"]), "crop": list(s["crop"])},
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
                 "torch": torch.__version__, "smoke": args.smoke}
    main_cfg = cfg_for(["ce"], 2)
    _limit_train_files(root, s["batch"] * s["steps"])
    bare, ours = [], []
    for _ in range(args.repeat):
        bare.append(bare_loop(main_cfg, device))
        ours.append(hardseg_loop(main_cfg, device))
    res["bare"] = min(bare, key=lambda r: r["step_time_s"])
    res["hardseg"] = min(ours, key=lambda r: r["step_time_s"])
    res["runs"] = {"bare_step_time_s": [r["step_time_s"] for r in bare],
                   "hardseg_step_time_s": [r["step_time_s"] for r in ours]}
    print(f"[gpu_check] loop: hardseg {res['hardseg']['step_time_s']:.4f}s/step, bare "
          f"{res['bare']['step_time_s']:.4f}s/step", flush=True)
    res["loop_vs_bare"] = {"step_time_ratio": res["hardseg"]["step_time_s"] / res["bare"]["step_time_s"],
                           "epoch_time_ratio": res["hardseg"]["epoch_time_s"] / res["bare"]["epoch_time_s"]}
    res["step_only"] = step_only(main_cfg, device, max(2, args.repeat))
    res["loader_images_per_s"] = loader_images_per_s(main_cfg, device, s["loader_batches"])
    res["loader_vs_train"] = res["loader_images_per_s"] / res["hardseg"]["images_per_s"]

    _limit_train_files(root, s["batch"] * s["strategy_steps"])
    res["strategies"] = {}
    names = args.strategies or available_strategies()
    for name in ["ce"] + [n for n in names if n != "ce"]:
        cfg = cfg_for([name], 1)
        if args.smoke:  # the worker code path ran above; spare the suite a worker start per strategy
            cfg.data.loader_workers = 0
        try:
            check_strategies_fit(cfg)
        except ConfigError as err:
            res["strategies"][name] = {"skipped": str(err)}
            continue
        r = hardseg_loop(cfg, device)
        r["step_vs_ce"] = r["step_time_s"] / res["strategies"]["ce"]["step_time_s"] if name != "ce" else 1.0
        res["strategies"][name] = r
        print(f"[gpu_check] strategy {name}: {r['step_time_s']:.4f}s/step", flush=True)
    res["eval_one_image"] = {mode: eval_one_image(main_cfg, device, mode) for mode in ("slide", "whole")}
    res["eval_throughput"] = {mode: eval_throughput(main_cfg, device, mode) for mode in ("whole", "slide")}
    res["imported"] = sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))

    print(table(res))
    out = args.out or REPO / "benchmarks" / "results" / f"gpu_check_{args.model.replace(':', '_')}_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"[gpu_check] wrote {out}")
    tmp.cleanup()
    return 0


def _limit_train_files(root: Path, n: int) -> None:
    """Keep the first ``n`` training files visible (so an epoch has exactly the wanted steps); the rest are
    moved aside, not deleted."""
    for kind, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png")):
        d, aside = root / kind / "train" / "bench", root / kind / "train_aside"
        aside.mkdir(exist_ok=True)
        for f in list(aside.iterdir()):
            f.rename(d / f.name)
        for f in sorted(d.glob(f"*{suffix}"))[n:]:
            f.rename(aside / f.name)


if __name__ == "__main__":
    raise SystemExit(main())
