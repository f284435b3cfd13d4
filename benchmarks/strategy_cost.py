"""What each hard-pixel strategy costs, relative to cross-entropy on the same model.

For every variant (one strategy, or a '+'-joined composition, with optional
``@strategy.param=value,...`` settings) it measures, in one plain process
(TrainingModel + Objective + AdamW, random data of the synthetic set's shape,
no Ray):

* training step time: wall and process-CPU time of steps after warm-up, in
  interleaved rounds (variants take turns, so a load change on a shared
  machine hits them all alike); ratios are medians of per-round paired ratios;
* training FLOPs per step (``torch.utils.flop_counter``, forward + backward;
  its count of a grouped/depthwise convolution's backward ignores the groups,
  so on MobileNetV3 the backward counts ~36× the forward: compare training
  FLOPs only on models without grouped convolutions, e.g. tiny_seg, ResNets);
* memory: bytes of tensors saved for backward (activations, deduplicated by
  storage) + parameters, gradients and AdamW state, and — in a fresh
  subprocess per variant — the peak RSS growth over a few steps after a
  warm-up step (VmHWM after resetting it; on CUDA ``torch.cuda.max_memory_allocated``);
* inference: parameters and median batch time of ``TrainingModel.export()``;
* the decode head's share of the network's forward pass (the reference
  variant's network, training mode): of its FLOPs, and of its wall time
  (median over the rounds of decode / (encode + decode), interleaved with the
  steps). HL's branch is a full copy of the decode head, so its overhead
  follows this share (docs/strategies.md, "Cost").

Targets (issue 16): HL costs no more, relative to CE, than the reference's
full-head copy does on the same architecture, and ≤ 1.10× CE where the decode
head is ≤ 10 % of the forward pass (``hl_target`` in the JSON says which
applies: ``1.10`` or ``head copy``, the latter checked against the HL variant's
own training-FLOP ratio, i.e. the cost of the copy itself); the others ≤ 1.25×
(a guide); HL and SR exports identical to CE's. Writes ``benchmarks/results/strategy_cost.json``
(``strategy_cost_<model>.json`` for another ``--model``).

    python benchmarks/strategy_cost.py                     # tiny_seg, the defaults
    python benchmarks/strategy_cost.py --model lraspp_mobilenet_v3_large --steps 10
    python benchmarks/strategy_cost.py --model smp:DeepLabV3Plus --encoder resnet18 --size 256 --batch 4
    python benchmarks/strategy_cost.py --variants ce hl 'self_regulation@self_regulation.exit_channels=16'
"""

from __future__ import annotations

import argparse
import json
import os
import re
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardseg.models import SegOutput, build_model
from hardseg.strategies import Objective, StrategyContext, TrainingModel

NUM_CLASSES = 7
# The synthetic benchmark's class hierarchy (stuff/things; background/region/polygon/detail).
HIERARCHY = ((0, 0, 0, 1, 1, 1, 1), (0, 1, 1, 2, 2, 3, 3))
DEFAULT_VARIANTS = ["ce", "cb_ce", "focal", "ohem", "hl", "self_regulation",
                    "self_regulation@self_regulation.exit_channels=16",
                    "coarse_to_fine", "hl+coarse_to_fine"]
TARGETS: dict[str, float] = {}  # HL's target depends on the head's share: see hl_target below
DEFAULT_TARGET = 1.25
RESULTS = Path(__file__).resolve().parent / "results" / "strategy_cost.json"


def parse_variant(spec: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``a+b@a.key=1,b.other=x`` → (["a", "b"], {"a": {"key": 1}, "b": {"other": "x"}}).

    Values are JSON where they parse (``a.names=["x","y"]``), else strings.
    """
    names_part, _, params_part = spec.partition("@")
    params: dict[str, dict[str, Any]] = {}
    for item in filter(None, re.split(r",(?=[A-Za-z_]\w*\.\w+=)", params_part)):
        key, _, raw = item.partition("=")
        strategy, _, field = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params.setdefault(strategy, {})[field] = value
    return names_part.split("+"), params


def context() -> StrategyContext:
    freq = np.array([40.0, 25, 20, 6, 5, 3, 1]) * 1e4  # a skewed, synthetic-like class distribution
    return StrategyContext(num_classes=NUM_CLASSES, class_frequencies=freq, hierarchy=HIERARCHY)


class Bench:
    """One variant: its model, objective, optimiser and data."""

    def __init__(self, spec: str, args: argparse.Namespace):
        self.spec = spec
        names, params = parse_variant(spec)
        torch.manual_seed(0)
        net = build_model(args.model, NUM_CLASSES, encoder=args.encoder)
        self.objective = Objective(names, params, context())
        self.tm = TrainingModel(net, self.objective).to(args.device)
        self.opt = torch.optim.AdamW(self.tm.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(args.device)
        self.y = torch.randint(0, NUM_CLASSES, (args.batch, args.size, args.size), generator=g).to(args.device)
        self.y[:, : args.size // 16] = 255  # a band of ignored pixels
        self.device = args.device

    def step(self) -> tuple[float, float]:
        """One training step; (wall seconds, CPU seconds of this process, all threads)."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.opt.zero_grad(set_to_none=True)
        out = SegOutput.from_dict(self.tm(self.x))
        terms = self.objective.losses(out, self.y, progress=0.5)  # SR past its warm-up
        terms["loss"].backward()
        self.opt.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    def flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            out = SegOutput.from_dict(self.tm(self.x))
            self.objective.losses(out, self.y, progress=0.5)["loss"].backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def saved_bytes(self) -> int:
        """Tensors autograd keeps for backward (unique storages) + params, grads, AdamW's two moments."""
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = SegOutput.from_dict(self.tm(self.x))
            loss = self.objective.losses(out, self.y, progress=0.5)["loss"]
        loss.backward()
        self.opt.zero_grad(set_to_none=True)
        params = sum(p.numel() * p.element_size() for p in self.tm.parameters())
        return sum(seen.values()) + 4 * params

    @torch.no_grad()
    def inference(self, steps: int) -> list[float]:
        """Times of ``steps`` forward passes of the exported model (eval mode)."""
        model = self.tm.export().eval()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            model(self.x)
            if self.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        self.tm.train()
        return times

    def head_share_flops(self) -> float:
        """FLOPs of the decode head / FLOPs of the network's forward pass (training mode)."""
        from torch.utils.flop_counter import FlopCounterMode

        net = self.tm.net
        with torch.no_grad(), FlopCounterMode(display=False) as whole:
            hin = net(self.x).head_input  # what the decode head consumed (models may override forward)
        with torch.no_grad(), FlopCounterMode(display=False) as head:
            net.decode(hin)
        return head.get_total_flops() / whole.get_total_flops()

    def head_time(self) -> tuple[float, float]:
        """Wall seconds of (the forward pass without the decode head, the decode head), with autograd on:
        a whole forward pass, then the head alone on what it consumed."""
        net = self.tm.net
        t0 = time.perf_counter()
        hin = net(self.x).head_input
        t1 = time.perf_counter()
        net.decode(hin)
        t2 = time.perf_counter()
        return (t1 - t0) - (t2 - t1), t2 - t1

    def export_params(self) -> int:
        return sum(p.numel() for p in self.tm.export().parameters())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> None:
    """Reset the kernel's RSS high-water mark (Linux ≥ 4.0); ru_maxrss cannot be reset and, after
    fork + exec, still holds the parent's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: peak memory growth over a few training steps of one variant."""
    bench = Bench(args.memory_child, args)
    bench.step()  # first touches of the libraries' code and kernels are not the strategy's memory
    if args.device == "cuda":
        bench.step()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            bench.step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = rss_bytes()  # network, training-only modules, AdamW state; large freed blocks go back to the OS
        reset_peak_rss()
        for _ in range(3):
            bench.step()
        peak = peak_rss_bytes() - base
    print(json.dumps({"peak_bytes": max(0, peak)}))


def peak_memory(spec: str, args: argparse.Namespace) -> int | None:
    cmd = [sys.executable, __file__, "--memory-child", spec, "--model", args.model, "--batch", str(args.batch),
           "--size", str(args.size), "--threads", str(args.threads), "--device", args.device]
    if args.encoder:
        cmd += ["--encoder", args.encoder]
    # A fixed mmap threshold: freed activations go back to the OS, so RSS follows the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if res.returncode != 0:
        print(f"memory child for {spec!r} failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def paired_ratio(rounds: list[list[float]], ref_rounds: list[list[float]]) -> float:
    """Median over rounds of (this variant's median time / the reference's) in the same round."""
    return statistics.median(statistics.median(a) / statistics.median(b) for a, b in zip(rounds, ref_rounds))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny_seg", help="a registered model, e.g. smp:DeepLabV3Plus")
    p.add_argument("--encoder", default=None, help="encoder of an smp:* model, e.g. resnet18")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                   help="strategies, '+'-joined compositions, optional '@strategy.param=value,...'; the first is the reference")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="timed training steps per variant")
    p.add_argument("--rounds", type=int, default=40, help="interleaved rounds the steps are split into")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--infer-steps", type=int, default=30, help="timed inference batches per variant (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON file; default {RESULTS.name} for tiny_seg, strategy_cost_<model>.json otherwise")
    p.add_argument("--flops-only", action="store_true",
                   help="only the decode head's FLOP share and each variant's training FLOPs vs the first (no timing; "
                        "deterministic, quick on a busy machine); writes strategy_flops_<model>.json")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        tag = args.model.replace(":", "_") + (f"_{args.encoder}" if args.encoder else "")
        args.out = RESULTS if args.model == "tiny_seg" else RESULTS.with_name(f"strategy_cost_{tag}.json")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return {}

    if args.flops_only:
        return flops_only(args)
    benches = [Bench(spec, args) for spec in args.variants]
    for b in benches:
        for _ in range(args.warmup):
            b.step()
        b.inference(2)
    # Variants take turns in rounds; each round gives each variant's time relative to the reference's
    # in that round, and the reported ratio is the median of those paired ratios, so a change of load
    # on a shared machine hits both sides of a ratio alike.
    times: dict[str, list[list[float]]] = {b.spec: [] for b in benches}
    cpu: dict[str, list[list[float]]] = {b.spec: [] for b in benches}
    infer: dict[str, list[list[float]]] = {b.spec: [] for b in benches}
    head_shares: list[float] = []
    per_round = max(1, args.steps // args.rounds)
    infer_per_round = max(1, args.infer_steps // args.rounds)
    for _ in range(args.rounds):
        for b in benches:
            wall_cpu = [b.step() for _ in range(per_round)]
            times[b.spec].append([w for w, _ in wall_cpu])
            cpu[b.spec].append([c for _, c in wall_cpu])
            infer[b.spec].append(b.inference(infer_per_round))
        enc, dec = benches[0].head_time()
        head_shares.append(dec / (enc + dec))

    rows = []
    for b in benches:
        rows.append({
            "variant": b.spec,
            "step_ms": 1e3 * statistics.median(sum(times[b.spec], [])),
            "step_ms_min": 1e3 * min(sum(times[b.spec], [])),
            "step_cpu_ms": 1e3 * statistics.median(sum(cpu[b.spec], [])),
            "train_gflop": b.flops() / 1e9,
            "train_params": sum(p.numel() for p in b.tm.parameters()),
            "saved_mb": b.saved_bytes() / 2**20,
            "peak_mb": None if args.no_memory else (m / 2**20 if (m := peak_memory(b.spec, args)) is not None else None),
            "infer_params": b.export_params(),
            "infer_ms": 1e3 * statistics.median(sum(infer[b.spec], [])),
        })
    ref = rows[0]
    for r in rows:
        for k in ("train_gflop", "saved_mb", "peak_mb"):
            r[f"{k}_x"] = ratio(r[k], ref[k])
        r["step_ms_x"] = paired_ratio(times[r["variant"]], times[ref["variant"]])
        r["step_ms_min_x"] = ratio(r["step_ms_min"], ref["step_ms_min"])
        r["step_cpu_ms_x"] = paired_ratio(cpu[r["variant"]], cpu[ref["variant"]])
        r["infer_ms_x"] = paired_ratio(infer[r["variant"]], infer[ref["variant"]])
        names = parse_variant(r["variant"])[0]
        r["target_x"] = None if ref is r or "hl" in names else max(TARGETS.get(n, DEFAULT_TARGET) for n in names)
        r["meets_target"] = None if r["target_x"] is None else r["step_ms_x"] <= r["target_x"]

    head_flops = benches[0].head_share_flops()
    head_time = statistics.median(head_shares)
    for r in rows:
        if "hl" in parse_variant(r["variant"])[0] and r is not ref:
            if head_flops <= 0.10:
                r["hl_target"], r["hl_meets"] = "1.10", r["step_ms_x"] <= 1.10
            else:  # the reference's own overhead on this architecture: a full copy of the head
                r["hl_target"], r["hl_meets"] = "head copy", r["step_ms_x"] <= r["train_gflop_x"] * 1.05
    result = {"model": args.model, "encoder": args.encoder, "batch": args.batch, "size": args.size, "threads": args.threads,
              "device": args.device, "steps": per_round * args.rounds, "torch": torch.__version__,
              "machine": platform.machine(), "reference": ref["variant"],
              "head_share_flops": head_flops, "head_share_time": head_time, "rows": rows}
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return result


def flops_only(args: argparse.Namespace) -> dict[str, Any]:
    """The head's FLOP share and training FLOPs per variant relative to the first variant."""
    rows, ref, share = [], None, None
    for spec in args.variants:
        b = Bench(spec, args)
        share = b.head_share_flops() if share is None else share
        f = b.flops()
        ref = ref or f
        rows.append({"variant": spec, "train_gflop": f / 1e9, "train_gflop_x": f / ref})
        print(f"{args.model} {spec}: train GFLOP {f / 1e9:.3f}, {f / ref:.3f}x {args.variants[0]}", flush=True)
    print(f"{args.model}: decode head {100 * share:.1f} % of the forward pass's FLOPs")
    result = {"model": args.model, "batch": args.batch, "size": args.size, "head_share_flops": share, "rows": rows}
    out = RESULTS.with_name(f"strategy_flops_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def print_table(result: dict[str, Any]) -> None:
    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    print(f"{result['model']}, batch {result['batch']} of {result['size']}×{result['size']}, {result['device']}, "
          f"{result['threads']} threads, {result['steps']} steps; ratios vs {result['reference']} "
          f"(×: median of per-round paired ratios of wall time; ×min: ratio of the fastest steps; "
          f"CPU ×: paired ratio of process CPU time)")
    print(f"decode head's share of the forward pass: {100 * result['head_share_flops']:.1f} % of FLOPs, "
          f"{100 * result['head_share_time']:.1f} % of wall time")
    for r in result["rows"]:
        if r.get("hl_target"):
            print(f"  {r['variant']}: HL target {r['hl_target']}: {r['step_ms_x']:.2f}× CE "
                  f"({r['train_gflop_x']:.2f}× FLOPs) -> {'met' if r['hl_meets'] else 'MISSED'}")
    head = (f"{'variant':<50} {'step ms':>8} {'×':>5} {'×min':>5} {'CPU ×':>5} {'target':>9} {'GFLOP':>7} {'×':>5} {'saved MB':>8} {'×':>5} "
            f"{'peak MB':>8} {'×':>5} {'infer ms':>8} {'×':>5} {'infer params':>12} {'train params':>12}")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        ok = "" if r["meets_target"] is None else ("ok" if r["meets_target"] else "MISS")
        print(f"{r['variant']:<50} {r['step_ms']:>8.1f} {f(r['step_ms_x'], '.2f'):>5} {f(r['step_ms_min_x'], '.2f'):>5} "
              f"{f(r['step_cpu_ms_x'], '.2f'):>5} "
              f"{(f(r['target_x'], '.2f') + ' ' + ok) if r['target_x'] else '':>9} {r['train_gflop']:>7.2f} "
              f"{f(r['train_gflop_x'], '.2f'):>5} {r['saved_mb']:>8.1f} {f(r['saved_mb_x'], '.2f'):>5} "
              f"{f(r['peak_mb'], '.1f'):>8} {f(r['peak_mb_x'], '.2f'):>5} {r['infer_ms']:>8.1f} "
              f"{f(r['infer_ms_x'], '.2f'):>5} {r['infer_params']:>12,} {r['train_params']:>12,}")


if __name__ == "__main__":
    main()
