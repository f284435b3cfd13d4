"""GPU-ready loop pieces, tested as far as a CPU allows (issue 14).

Sliding-window evaluation vs whole-image, SyncBatchNorm conversion, seeded
loader workers, the deferred non-finite check, the cuDNN/determinism switches
and the GPU resource arithmetic on a Ray started with logical GPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from hardseg.config import load_config
from hardseg.data import SYNTHETIC_INFO, build_dataset
from hardseg.errors import ConfigError
from hardseg.strategies.build import build_training_model
from hardseg.trainables.evaluation import evaluate, metrics_for, slide_logits, slide_windows
from hardseg.trainables.loaders import build_train_loader
from hardseg.trainables.loop import convert_sync_bn, train_one_epoch
from hardseg.trainables.settings import StepSettings, configure_backends, slide_settings

from conftest import small_overrides


def _tiny_net(seed: int = 0) -> nn.Module:
    cfg = load_config(None, ["model.width=8"])
    torch.manual_seed(seed)
    tm, _ = build_training_model(cfg, SYNTHETIC_INFO, np.ones(SYNTHETIC_INFO.num_classes))
    return tm.export().eval()


def test_slide_windows_match_mmsegmentation_grid():
    # Cityscapes: 512x1024 windows, 341x683 stride on 1024x2048 -> 3x3 windows ending at the border.
    assert slide_windows(1024, 512, 341) == [0, 341, 512]
    assert slide_windows(2048, 1024, 683) == [0, 683, 1024]
    assert slide_windows(32, 64, 10) == [0]  # the window covers the image
    assert slide_windows(30, 10, 10) == [0, 10, 20]


def test_slide_with_a_window_covering_the_image_equals_whole(one_torch_thread):
    net = _tiny_net()
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        whole = net(images).logits
    assert torch.equal(slide_logits(net, images, (64, 64), (20, 20)), whole)


class PixelwiseNet(nn.Module):
    """A 1x1-conv network: each output pixel depends only on its input pixel (translation-equivariant)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_overlapping_windows_of_an_equivariant_model_agree_with_whole():
    torch.manual_seed(0)
    net = PixelwiseNet().eval()
    images = torch.randn(3, 3, 37, 53)
    with torch.no_grad():
        whole = net(images)
    slid = slide_logits(net, images, (16, 24), (10, 15))  # windows overlap by 6 and 9 pixels, ragged ends
    torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-6)


def test_evaluate_slide_equals_whole_metrics_on_real_data(data_root, one_torch_thread):
    cfg = load_config(None, small_overrides(data_root, **{"eval.mode": "slide", "eval.crop": "[32,32]"}))
    ds = build_dataset(cfg.data, "val", train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    net = _tiny_net()
    whole = evaluate(net, loader, metrics_for(ds.info), StepSettings(torch.device("cpu")))
    slid = evaluate(net, loader, metrics_for(ds.info), StepSettings(torch.device("cpu"), slide=slide_settings(cfg)))
    assert slid == whole
    # AMP (bf16 autocast on CPU) goes through the same evaluation and still gives valid metrics.
    amp = evaluate(net, loader, metrics_for(ds.info), StepSettings(torch.device("cpu"), amp=True,
                                                                    slide=((16, 16), (8, 8))))
    assert 0.0 <= amp["miou"] <= 1.0


def test_slide_settings_defaults_and_error():
    cfg = load_config(None, ["eval.mode=slide", "data.augment.crop=[512,1024]"])
    assert slide_settings(cfg) == ((512, 1024), (341, 682))
    assert slide_settings(load_config(None, ["eval.mode=slide", "eval.crop=64", "eval.stride=[16,32]"])) \
        == ((64, 64), (16, 32))
    assert slide_settings(load_config(None, [])) is None
    with pytest.raises(ConfigError, match="eval.mode=slide needs a window"):
        load_config(None, ["eval.mode=slide"])
    with pytest.raises(ConfigError, match="ray.gpus_per_worker"):
        load_config(None, ["ray.gpus_per_worker=1.5"])


def test_sync_bn_converts_every_batchnorm_for_multi_gpu_ddp_only():
    cfg = load_config(None, ["model.name=deeplabv3_resnet50", "model.aux=true", "model.sync_bn=true"])
    tm, _ = build_training_model(cfg, SYNTHETIC_INFO, np.ones(SYNTHETIC_INFO.num_classes), meta=True)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in tm.modules())
    assert n_bn > 50
    # A CPU (gloo) run and a single worker keep the model as it is.
    assert convert_sync_bn(tm, True, torch.device("cpu"), 4) is tm
    assert convert_sync_bn(tm, True, torch.device("cuda"), 1) is tm
    assert convert_sync_bn(tm, False, torch.device("cuda"), 4) is tm
    synced = convert_sync_bn(tm, True, torch.device("cuda"), 2)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in synced.modules()) == 0
    assert sum(type(m) is nn.SyncBatchNorm for m in synced.modules()) == n_bn
    assert set(synced.state_dict()) == set(tm.state_dict())  # checkpoints stay interchangeable


def test_loader_workers_default_to_the_worker_cpus_beyond_the_training_process():
    from hardseg.trainables.loaders import loader_workers

    assert loader_workers(load_config(None, [])) == 0  # 1 CPU per worker: the training process decodes
    assert loader_workers(load_config(None, ["ray.cpus_per_worker=8"])) == 7
    assert loader_workers(load_config(None, ["ray.cpus_per_worker=8", "data.loader_workers=2"])) == 2


def test_loader_workers_give_the_same_batches_as_the_training_process(data_root):
    """Each sample's augmentation is seeded from (seed, epoch, index): 0 or 2 workers, same batches."""
    batches = {}
    for workers in (0, 2):
        cfg = load_config(None, small_overrides(data_root, **{"data.loader_workers": workers}))
        ds = build_dataset(cfg.data, "train", train=True)
        loader, sampler = build_train_loader(cfg, ds, 0, 1, torch.device("cpu"))
        assert loader.num_workers == workers and (workers == 0 or loader.persistent_workers)
        got = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            got.append([b for _, b in zip(range(2), loader)])
        batches[workers] = got
    for (a_img, a_msk), (b_img, b_msk) in zip(sum(batches[0], []), sum(batches[2], [])):
        assert torch.equal(a_img, b_img) and torch.equal(a_msk, b_msk)
    # Epochs differ (reshuffled and re-augmented).
    assert not torch.equal(batches[0][0][0][0], batches[0][1][0][0])


def test_non_finite_loss_is_found_at_its_step_when_checked_every_n_steps(one_torch_thread):
    cfg = load_config(None, ["model.width=8", "train.amp=off"])
    torch.manual_seed(0)
    tm, objective = build_training_model(cfg, SYNTHETIC_INFO, np.ones(SYNTHETIC_INFO.num_classes))
    opt = torch.optim.SGD(tm.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batches = [(torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))) for _ in range(7)]
    batches[2][0][0, 0, 0, 0] = float("nan")  # step 3
    with pytest.raises(FloatingPointError, match=r"loss became nan .* at epoch 1, step 3$"):
        train_one_epoch(tm, objective, batches, opt, sched, 0, StepSettings(torch.device("cpu"), check_every=4))
    # The flag is read at step 4, not before: steps 1-4 ran (the scheduler stepped 3 times).
    assert sched.last_epoch == 3
    # A clean epoch (fresh weights: step 3's NaN gradients were applied) returns the mean loss terms read at the end.
    tm, objective = build_training_model(cfg, SYNTHETIC_INFO, np.ones(SYNTHETIC_INFO.num_classes))
    opt = torch.optim.SGD(tm.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stats = train_one_epoch(tm, objective, batches[3:], opt, sched, 0,
                            StepSettings(torch.device("cpu"), check_every=4))
    assert np.isfinite(stats["train/loss"]) and stats["train/images_per_s"] > 0


def test_cudnn_and_determinism_switches():
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled())
    try:
        configure_backends(load_config(None, ["train.deterministic=true"]))
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        configure_backends(load_config(None, []))
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[:2]
        torch.use_deterministic_algorithms(before[2])


def test_worker_resources_and_scaling_config():
    from hardseg.platform.cluster import worker_resources
    from hardseg.platform.trainer import scaling_config

    cfg = load_config(None, ["ray.use_gpu=true", "ray.gpus_per_worker=0.5", "ray.cpus_per_worker=4",
                             "ray.num_workers=2"])
    assert worker_resources(cfg) == {"CPU": 4, "GPU": 0.5}
    sc = scaling_config(cfg)
    assert sc.num_workers == 2 and sc.use_gpu and sc.resources_per_worker == {"CPU": 4, "GPU": 0.5}
    assert worker_resources(load_config(None, ["ray.gpus_per_worker=0.5"])) == {"CPU": 1}  # no use_gpu: no GPU


_LOGICAL_GPUS = textwrap.dedent("""
    import json, os, ray
    from hardseg.config import load_config
    from hardseg.platform.cluster import concurrency, trial_resources

    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    out = {}
    half = load_config(None, ["ray.use_gpu=true", "ray.gpus_per_worker=0.5", "ray.num_workers=1",
                              "ray.cpus_per_worker=0.5"])
    res = trial_resources(half, in_process=True)
    out["trial_resources"] = res
    out["half"] = concurrency(half, res, None, 10)
    whole = half.model_copy(update={"ray": half.ray.model_copy(update={"gpus_per_worker": 1.0})})
    out["whole"] = concurrency(whole, trial_resources(whole, True), None, 10)
    ddp = half.model_copy(update={"ray": half.ray.model_copy(update={"num_workers": 2, "cpus_per_worker": 0.25})})
    out["ddp_half"] = concurrency(ddp, {"CPU": 0.5, "GPU": 1.0}, None, 10)

    @ray.remote
    class Trial:
        def gpu(self):
            return ray.get_gpu_ids()

    actors = [Trial.options(**{"num_cpus": res["CPU"], "num_gpus": res["GPU"]}).remote() for _ in range(5)]
    refs = [a.gpu.remote() for a in actors]
    ready, pending = ray.wait(refs, num_returns=4, timeout=60)
    out["placed"] = sorted(str(g) for r in ready for g in ray.get(r))
    _, still = ray.wait(pending, timeout=2)
    out["fifth_waits"] = len(still) == 1
    ray.shutdown()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.ray
def test_fractional_gpus_on_a_ray_with_logical_gpus():
    """Two logical GPUs, 0.5 GPU per one-worker trial: four trials at once, two per GPU, a fifth waits."""
    proc = subprocess.run([sys.executable, "-c", _LOGICAL_GPUS], capture_output=True, text=True, timeout=240)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    assert out["trial_resources"] == {"CPU": 0.5, "GPU": 0.5}
    assert out["half"] == 4 and out["whole"] == 2 and out["ddp_half"] == 2
    assert out["placed"] == ["0", "0", "1", "1"] and out["fifth_waits"]


def test_gpu_check_smoke_runs_without_ray_mlflow_optuna(tmp_path):
    """benchmarks/gpu_check.py --smoke: the GPU check's code on CPU at tiny sizes, in a fresh process."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--model", "tiny_seg", "--out", str(out),
                           "--data", str(tmp_path / "cs")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["imported"] == []  # ray, mlflow, optuna
    assert res["loop_vs_bare"]["step_time_ratio"] > 0 and res["loader_vs_train"] > 0
    from hardseg.strategies import available_strategies

    assert set(res["strategies"]) == set(available_strategies())
    assert all("step_vs_ce" in r for r in res["strategies"].values())
    assert set(res["eval_one_image"]) == {"slide", "whole"}
    assert all(r["images_per_s"] > 0 and 0 < r["metrics_share"] for r in res["eval_throughput"].values())
    assert "step time hardseg / bare" in proc.stdout
