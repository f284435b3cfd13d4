"""The per-worker loop without Ray: AMP and channels_last code paths, NaN handling."""

import math

from hardseg.config import load_config
from hardseg.trainables.local import run_local

from conftest import small_overrides


def test_amp_and_channels_last_paths_run_on_cpu(data_root):
    # On CUDA 'auto' turns both on; on CPU force them (bf16 autocast) to exercise the code path.
    cfg = load_config(None, small_overrides(data_root, **{"train.amp": "on", "train.channels_last": "on",
                                                          "train.epochs": 1, "data.eval_domains": "[]"}))
    hist = run_local(cfg)
    assert math.isfinite(hist[-1]["train/loss"]) and 0.0 <= hist[-1]["val/miou"] <= 1.0


def test_nan_loss_is_reported_not_raised(data_root):
    cfg = load_config(None, small_overrides(data_root, **{"train.lr": "1e12", "train.optimizer": "sgd",
                                                          "data.eval_domains": "[]"}))
    hist = run_local(cfg)
    assert "non-finite loss" in hist[-1]["error"]
