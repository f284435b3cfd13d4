"""Is ASHA biased against a strategy? Rank agreement per rung and pruned fraction vs full-budget rank.

Every trial of a ``hardseg study`` search stage is trained here to the full budget (no scheduler), on the
embedded synthetic benchmark with ``tiny_seg``, logging ``val/miou`` at every epoch. ASHA is then replayed
offline on these curves, exactly as Ray's ``AsyncHyperBandScheduler`` decides (one bracket, rungs at
``grace · η^k`` epochs below ``max_t``; a trial reaching a rung is stopped when its value is below the
``1 - 1/η`` quantile of the values recorded there before it), over many random arrival orders. Per
strategy:

* **rank agreement**: Spearman ρ between the trials' ``val/miou`` at each rung and at the full budget
  (within the strategy, and over all trials);
* **pruned**: the mean fraction of its trials ASHA stops, against **justified**: the fraction the same
  rule stops when every rung shows the full-budget value (the pruning its full-budget rank justifies).
  ``excess`` = pruned − justified; a strategy with excess > 0 is pruned beyond its rank;
* **answer**: how often the search's best COMPLETE trial (what the confirm stage starts from) is of each
  strategy, and how often it is the true best trial (the best at full budget).

Rules replayed: the study's current one (``grace 1, η 2``), a later grace period, per-strategy brackets
(a trial is compared only with trials of its own strategy at each rung) and no pruning.

    flock /tmp/hardseg-heavy.lock timeout 900 env PYTHONPATH=$PWD/src .venv/bin/python benchmarks/asha_bias.py \\
        [--trials 4] [--epochs 3] [--n-train 160] [--orders 2000]

Writes ``benchmarks/results/asha_bias.json`` (curves and tables) and prints the tables. ``--curves FILE``
replays saved curves without training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results" / "asha_bias.json"
# the quick study's search stage (platform/studies/quick.yaml): strategies and weight ranges, seed 100
STRATEGIES = ["hl", "ohem", "focal", "hl+ohem"]
WEIGHTS = {"hl": ("strategy_params.hl.lam", "log", 1e-3, 1e-1),
           "ohem": ("strategy_params.ohem.thresh", "lin", 0.5, 0.9),
           "focal": ("strategy_params.focal.gamma", "lin", 0.5, 3.0)}
BASE = ["ray.num_workers=1", "data.eval_domains=[]", "tracking.log_model=false", "seed=100"]
OHEM = "strategy_params.ohem.min_kept_fraction=0.1"  # the quick study's base, for trials with OHEM


# -- curves ---------------------------------------------------------------------------------------
def sample_trials(trials: int, seed: int = 0) -> list[dict]:
    """``trials`` per strategy, each with its strategies' weights sampled from the study's ranges."""
    rng = np.random.default_rng(seed)
    out = []
    for strategy in STRATEGIES:
        for _ in range(trials):
            params = {}
            for name in strategy.split("+"):
                key, scale, lo, hi = WEIGHTS[name]
                u = rng.uniform()
                params[key] = float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if scale == "log"
                                    else lo + u * (hi - lo))
            out.append({"strategy": strategy, "params": params})
    return out


def train_curves(trials: list[dict], epochs: int, size: int, n_train: int, n_val: int, batch: int) -> list[dict]:
    """Train every trial to ``epochs`` in this process; adds ``curve`` (val/miou per epoch) and ``seconds``."""
    import torch  # local: only when training (a --curves replay needs neither torch nor hardseg)

    from hardseg.config import load_config  # local: as above
    from hardseg.data.synthetic import ensure_synthetic  # local: as above
    from hardseg.trainables.local import run_local  # local: as above

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="asha-bias-"))
    data = [f"data.root={root}", f"data.synthetic.size={size}", f"data.synthetic.n_train={n_train}",
            f"data.synthetic.n_val={n_val}", "data.synthetic.n_shift=2", f"train.batch_size={batch}",
            f"train.epochs={epochs}", "train.eval_every=1", "train.num_threads=1", "data.loader_workers=0"]
    cfg0 = load_config(None, BASE + data)
    ensure_synthetic(root, cfg0.data.synthetic)
    for i, t in enumerate(trials):
        sets = BASE + data + [f"strategies=[{t['strategy'].replace('+', ',')}]"] + \
            [f"{k}={v}" for k, v in t["params"].items()] + ([OHEM] if "ohem" in t["strategy"] else [])
        t0 = time.perf_counter()
        history = run_local(load_config(None, sets))
        t["seconds"] = time.perf_counter() - t0
        t["curve"] = [float(h.get("val/miou", math.nan)) for h in history]
        print(f"[{i + 1}/{len(trials)}] {t['strategy']:8} {json.dumps(t['params'])}: "
              f"{' '.join(f'{v:.4f}' for v in t['curve'])} ({t['seconds']:.0f} s)", flush=True)
    return trials


# -- ASHA, replayed -------------------------------------------------------------------------------
def rungs(grace: int, eta: float, max_t: int) -> list[int]:
    """Ray's one-bracket ASHA milestones below ``max_t`` (a trial at max_t is stopped as finished)."""
    k = int(math.log(max_t / grace) / math.log(eta) + 1)
    return [m for m in (int(grace * eta ** i) for i in range(k)) if m < max_t]


def replay(curves: np.ndarray, groups: list[str], order: np.ndarray, milestones: list[int], eta: float,
           per_group: bool) -> np.ndarray:
    """Epochs each trial runs under ASHA with trials arriving in ``order`` (one after another).

    At a milestone a trial is stopped when its value is below the ``1 - 1/eta`` quantile of the values
    recorded at that milestone before it (its group's only, with ``per_group``)."""
    n, max_t = curves.shape
    ran = np.full(n, max_t)
    recorded: dict[tuple[str, int], list[float]] = {}
    for i in order:
        for m in milestones:
            key = (groups[i] if per_group else "", m)
            seen = recorded.setdefault(key, [])
            value = curves[i, m - 1]
            stop = bool(seen) and value < np.nanpercentile(seen, (1 - 1 / eta) * 100)
            seen.append(value)
            if stop:
                ran[i] = m
                break
    return ran


RULES = {  # name: (grace, eta, per-strategy brackets); None grace: no pruning
    "grace 1, η 2 (study's)": (1, 2, False),
    "grace 2, η 2": (2, 2, False),
    "grace 1, η 2, per-strategy brackets": (1, 2, True),
    "no pruning": (None, 2, False),
}


def evaluate_rule(curves: np.ndarray, groups: list[str], grace: int | None, eta: float, per_group: bool,
                  orders: int, seed: int = 0) -> dict:
    """Pruned vs justified fraction per strategy, the search's winner, and the epochs spent."""
    n, max_t = curves.shape
    milestones = [] if grace is None else rungs(grace, eta, max_t)
    full = curves[:, -1]
    oracle = np.repeat(full[:, None], max_t, axis=1)  # every rung shows the full-budget value
    rng = np.random.default_rng(seed)
    strategies = list(dict.fromkeys(groups))
    pruned = {s: [] for s in strategies}
    justified = {s: [] for s in strategies}
    winners = {s: 0 for s in strategies}
    true_best, epochs = 0, []
    best = int(np.argmax(full))
    for _ in range(orders):
        order = rng.permutation(n)
        ran = replay(curves, groups, order, milestones, eta, per_group)
        ideal = replay(oracle, groups, order, milestones, eta, per_group)
        for s in strategies:
            idx = [i for i in range(n) if groups[i] == s]
            pruned[s].append(np.mean(ran[idx] < max_t))
            justified[s].append(np.mean(ideal[idx] < max_t))
        complete = np.flatnonzero(ran == max_t)
        win = int(complete[np.argmax(full[complete])])
        winners[groups[win]] += 1
        true_best += win == best
        epochs.append(ran.sum())
    return {"rungs": milestones,
            "per_strategy": {s: {"trials": groups.count(s), "pruned": float(np.mean(pruned[s])),
                                 "justified": float(np.mean(justified[s])),
                                 "excess": float(np.mean(pruned[s]) - np.mean(justified[s])),
                                 "wins": winners[s] / orders} for s in strategies},
            "true_best_found": true_best / orders, "epochs": float(np.mean(epochs)) / (n * max_t)}


def rank_agreement(curves: np.ndarray, groups: list[str]) -> dict:
    """Spearman ρ of val/miou at each epoch vs the full budget, per strategy and over all trials."""
    out: dict[str, dict[int, float | None]] = {}
    for s in [*dict.fromkeys(groups), "all"]:
        idx = [i for i in range(len(groups)) if s == "all" or groups[i] == s]
        out[s] = {}
        for epoch in range(1, curves.shape[1]):
            a, b = curves[idx, epoch - 1], curves[idx, -1]
            rho = stats.spearmanr(a, b).statistic if len(idx) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0 else None
            out[s][epoch] = None if rho is None or not np.isfinite(rho) else float(rho)
    return out


def full_rank(curves: np.ndarray, groups: list[str]) -> dict[str, float]:
    """Each strategy's mean rank (1 = best) of its trials at the full budget among all trials."""
    ranks = stats.rankdata(-curves[:, -1])
    return {s: float(np.mean([r for r, g in zip(ranks, groups) if g == s])) for s in dict.fromkeys(groups)}


def tables(data: dict) -> str:
    curves = np.array([t["curve"] for t in data["trials"]])
    groups = [t["strategy"] for t in data["trials"]]
    agree, mean_rank = data["rank_agreement"], full_rank(curves, groups)
    lines = [f"{len(groups)} trials, {curves.shape[1]} epochs each (full budget), "
             f"{data['orders']} arrival orders replayed", "",
             "Rank agreement (Spearman ρ, val/miou at epoch e vs at the full budget) and full-budget mean rank:",
             "| strategy | trials | mean rank | " + " | ".join(f"ρ epoch {e}" for e in agree["all"]) + " |",
             "|---|---|---|" + "---|" * len(agree["all"])]
    for s, row in agree.items():
        n = len(groups) if s == "all" else groups.count(s)
        rank = "-" if s == "all" else f"{mean_rank[s]:.1f}"
        lines.append(f"| {s} | {n} | {rank} | " + " | ".join("n/a" if v is None else f"{v:+.2f}"
                                                         for v in row.values()) + " |")
    for rule, res in data["rules"].items():
        lines += ["", f"Rule: {rule} (rungs {res['rungs'] or 'none'}); epochs spent {res['epochs']:.0%} of the "
                      f"full grid; the search's best COMPLETE trial is the true best in {res['true_best_found']:.0%} "
                      f"of orders",
                  "| strategy | trials | pruned | justified by full-budget rank | excess | search winner |",
                  "|---|---|---|---|---|---|"]
        for s, r in res["per_strategy"].items():
            lines.append(f"| {s} | {r['trials']} | {r['pruned']:.2f} | {r['justified']:.2f} | {r['excess']:+.2f} | "
                         f"{r['wins']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per strategy")
    parser.add_argument("--epochs", type=int, default=3, help="the full budget (the quick study's 3)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-val", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--orders", type=int, default=2000, help="random arrival orders replayed")
    parser.add_argument("--curves", help="replay the curves of a previous result JSON instead of training")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.curves:
        data = json.loads(Path(args.curves).read_text())
        trials = data["trials"]
    else:
        t0 = time.perf_counter()
        trials = train_curves(sample_trials(args.trials), args.epochs, args.size, args.n_train, args.n_val,
                              args.batch)
        data = {"setup": vars(args) | {"train_s": time.perf_counter() - t0, "machine": platform.platform(),
                                       "strategies": STRATEGIES}, "trials": trials}
    curves = np.array([t["curve"] for t in trials])
    groups = [t["strategy"] for t in trials]
    data["orders"] = args.orders
    data["rank_agreement"] = rank_agreement(curves, groups)
    data["rules"] = {rule: evaluate_rule(curves, groups, *spec, orders=args.orders) for rule, spec in RULES.items()}
    text = tables(data)
    print(text)
    data["tables"] = text
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
