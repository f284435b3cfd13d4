"""model.pretrained and model.init_from from self-made weight files, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hardseg.config import load_config
from hardseg.data import dataset_info
from hardseg.errors import ConfigError
from hardseg.models import build_model
from hardseg.models.pretrained import imagenet_file
from hardseg.strategies.build import build_training_model

from test_cli_errors import _check, _no_runs
from conftest import small_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def perturbed_encoder(encoder: str = "resnet18", seed: int = 1) -> dict[str, torch.Tensor]:
    """A Unet encoder's state dict with every float tensor moved away from its init."""
    torch.manual_seed(seed)
    sd = build_model("smp:Unet", 7, encoder=encoder).encoder.state_dict()
    return {k: v + torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()}


def training_model(data_root, **extra):
    cfg = load_config(None, small_overrides(data_root, **{"model.name": "smp:Unet", "model.encoder": "resnet18",
                                                           **extra}))
    info = dataset_info(cfg.data)
    torch.manual_seed(0)
    return build_training_model(cfg, info, np.ones(info.num_classes))[0]


def assert_same(sd: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    own = module.state_dict()
    assert set(own) == set(sd)
    for k, v in sd.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "prefixed"])
def test_pretrained_path_loads_every_encoder_tensor(data_root, tmp_path, fmt):
    sd = perturbed_encoder()
    path = tmp_path / f"enc.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    elif fmt == "prefixed":  # a whole training script's checkpoint: {"state_dict": {"module.encoder.…": …}}
        torch.save({"state_dict": {f"module.encoder.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    else:
        torch.save(sd, path)
    tm = training_model(data_root, **{"model.pretrained": str(path)})
    assert_same(sd, tm.net.encoder)
    (report,) = tm.weight_reports
    assert report.loaded == len(sd) and not report.missing and not report.unexpected
    assert report.prefix == ("module.encoder." if fmt == "prefixed" else "")


def test_missing_and_unexpected_keys_are_counted_not_dropped(data_root, tmp_path):
    sd = perturbed_encoder()
    dropped = "layer4.1.bn2.running_var"
    del sd[dropped]
    sd["fc.weight"] = torch.zeros(1000, 512)  # a classifier's head: not part of the encoder
    torch.save(sd, tmp_path / "enc.pth")
    tm = training_model(data_root, **{"model.pretrained": str(tmp_path / "enc.pth")})
    (report,) = tm.weight_reports
    assert report.missing == [dropped] and report.unexpected == ["fc.weight"]
    tags = report.tags()
    assert tags["hardseg.pretrained.missing_keys"] == "1" and tags["hardseg.pretrained.unexpected_keys"] == "1"
    assert "missing 1 (first: layer4.1.bn2.running_var); unexpected 1 (first: fc.weight)" in report.summary()


def test_shape_mismatch_names_the_first_bad_key(data_root, tmp_path):
    sd = perturbed_encoder()
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"shape mismatch at 'layer2.0.conv1.weight' .* \(128, 64, 5, 5\) in the "
                                          r"file, \(128, 64, 3, 3\) in the encoder"):
        training_model(data_root, **{"model.pretrained": str(tmp_path / "bad.pth")})
    with pytest.raises(ConfigError, match="no tensor of .* matches a parameter of the encoder"):
        torch.save({"x.y": torch.zeros(2)}, tmp_path / "other.pth")
        training_model(data_root, **{"model.pretrained": str(tmp_path / "other.pth")})


def test_imagenet_offline_resolves_from_local_caches_only(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"model.pretrained=imagenet: the ImageNet weights of encoder 'resnet18' "
                                          r"are not cached .*smp-hub/resnet18.imagenet into the Hugging Face cache "
                                          + str(tmp_path / "hf" / "hub")):
        training_model(data_root, **{"model.pretrained": "imagenet"})
    with pytest.raises(ConfigError, match=r"resnet50-0676ba61.pth is not cached and HF_HUB_OFFLINE is set; put "
                                          r"https://download.pytorch.org/models/resnet50-0676ba61.pth into "
                                          + str(tmp_path / "torch" / "hub" / "checkpoints")):
        imagenet_file("fcn_resnet50", None)
    # a file in the Hugging Face cache's layout (snapshots/<revision>/) is found without any network access
    import segmentation_models_pytorch as smp

    rev = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]["revision"]
    snap = tmp_path / "hf" / "hub" / "models--smp-hub--resnet18.imagenet" / "snapshots" / rev
    snap.mkdir(parents=True)
    sd = perturbed_encoder(seed=2)
    save_file(sd, str(snap / "model.safetensors"))
    tm = training_model(data_root, **{"model.pretrained": "imagenet"})
    assert_same(sd, tm.net.encoder)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet50-0676ba61.pth").write_bytes(b"")
    assert imagenet_file("deeplabv3_resnet50", None) == folder / "resnet50-0676ba61.pth"


def test_init_from_export_loads_the_whole_model_and_checks_shapes(data_root, tmp_path):
    src = training_model(data_root, strategies="[coarse_to_fine]")
    export = src.export()
    for p in export.parameters():
        p.data.add_(1.0)
    torch.save({"model": export.state_dict(), "epoch": 1, "config": {}}, tmp_path / "model_export.pt")
    tm = training_model(data_root, strategies="[coarse_to_fine]",
                        **{"model.init_from": str(tmp_path / "model_export.pt")})
    assert_same(export.state_dict(), tm.export())
    # a network with another head (CE: 7 classes; C2F's stage 0 predicts 2 coarse classes)
    with pytest.raises(ConfigError, match=r"model.init_from: shape mismatch at 'net.decode_head.classifier.weight'"):
        training_model(data_root, **{"model.init_from": str(tmp_path / "model_export.pt")})


@pytest.mark.parametrize("override, needles", [
    ("model.pretrained=/nonexistent/enc.pth", ["model.pretrained: weights file not found: /nonexistent/enc.pth"]),
    ("model.init_from=/nonexistent/model_export.pt", ["model.init_from: weights file not found"]),
    ("model.encoder=resnet7", ["unknown encoder 'resnet7' for 'model.encoder'"]),
    ("model.pretrained=imagenet", ["model 'tiny_seg' has no ImageNet weights"]),
])
def test_bad_weights_input_is_one_line_exit_2_and_nothing_logged(capsys, sqlite_uri, data_root, override, needles):
    name = ["--set", "model.name=smp:Unet"] if "encoder" in override else []
    _check(capsys, ["train", "--set", override, *name, "--set", f"data.root={data_root}",
                    "--set", "data.synthetic.size=32", "--set", "data.synthetic.n_train=64",
                    "--set", "data.synthetic.n_val=32", "--set", "data.synthetic.n_shift=16",
                    "--tracking-uri", sqlite_uri], *needles)
    assert _no_runs(sqlite_uri)


def test_wrong_shapes_on_the_command_line(capsys, sqlite_uri, data_root, tmp_path):
    sd = perturbed_encoder()
    sd["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    torch.save(sd, tmp_path / "bad.pth")
    _check(capsys, ["train", *sum((["--set", o] for o in small_overrides(data_root)), []),
                    "--set", "model.name=smp:Unet", "--set", "model.encoder=resnet18",
                    "--set", f"model.pretrained={tmp_path / 'bad.pth'}", "--tracking-uri", sqlite_uri],
           "shape mismatch at 'conv1.weight'")
    assert _no_runs(sqlite_uri)


def test_evaluating_an_export_does_not_read_its_weight_files(data_root, tmp_path):
    from hardseg.trainables.evaluation import load_inference_model

    cfg = load_config(None, small_overrides(data_root, **{"model.pretrained": "/gone/enc.pth"}))
    net = build_model("tiny_seg", 7)
    torch.save({"model": net.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 1},
               tmp_path / "model_export.pt")
    model, cfg2 = load_inference_model(tmp_path / "model_export.pt")
    assert cfg2.model.pretrained == "/gone/enc.pth"
    assert_same(net.state_dict(), model)


# -- downloads, from a mirror on 127.0.0.1 (no internet here) --------------------------------------------
class Mirror:
    """A weights mirror: a folder served over HTTP on 127.0.0.1, answering HEAD like the Hugging Face Hub
    (ETag, X-Repo-Commit) as Hub proxies do; counts the bytes it sends."""

    def __init__(self, root: Path):
        import hashlib
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        self.root, self.sent, self.gets = root, 0, 0
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def end_headers(self):
                path = root / self.path.lstrip("/").split("?")[0]
                if path.is_file():
                    self.send_header("ETag", f'"{hashlib.sha256(path.read_bytes()).hexdigest()}"')
                    parts = self.path.strip("/").split("/")
                    if "resolve" in parts:
                        self.send_header("X-Repo-Commit", parts[parts.index("resolve") + 1])
                super().end_headers()

            def do_GET(self):
                mirror.gets += 1
                path = root / self.path.lstrip("/")
                if path.is_file():
                    mirror.sent += path.stat().st_size
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def put(self, relative: str, write) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return path


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HARDSEG_WEIGHTS_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    m = Mirror(tmp_path / "mirror")
    yield m
    m.server.shutdown()


def _smp_resnet18_revision() -> str:
    import segmentation_models_pytorch as smp

    return smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]["revision"]


def test_smp_imagenet_downloads_from_the_mirror_once_then_reads_the_cache(data_root, tmp_path, mirror):
    import time

    sd = perturbed_encoder(seed=3)
    served = mirror.put(f"smp-hub/resnet18.imagenet/resolve/{_smp_resnet18_revision()}/model.safetensors",
                        lambda p: save_file(sd, str(p)))
    timings = []
    for attempt in (1, 2):
        before, start = mirror.sent, time.perf_counter()
        tm = training_model(data_root, **{"model.pretrained": "imagenet", "model.weights_mirror": mirror.url})
        timings.append((attempt, mirror.sent - before, time.perf_counter() - start))
        assert_same(sd, tm.net.encoder)  # the mirror's file, verified tensor by tensor
    print("\n".join(f"run {a}: {b} bytes from the mirror, {t:.2f} s" for a, b, t in timings))
    assert timings[0][1] == served.stat().st_size and timings[1][1] == 0  # the second run reads the cache
    cached = list((tmp_path / "hf" / "hub" / "models--smp-hub--resnet18.imagenet" / "snapshots").rglob("*.safetensors"))
    assert len(cached) == 1


def test_torchvision_file_downloads_hash_checked_from_the_mirror(tmp_path, mirror):
    """torch.hub checks the SHA-256 prefix in the file's name: a file named after its own hash passes,
    the real enum name (resnet50-0676ba61.pth) holding other bytes does not."""
    import hashlib

    from hardseg.models.pretrained import torch_hub_file

    buf = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.randn(8, 3, 3, 3)}, buf)
    name = f"tiny-{hashlib.sha256(buf.read_bytes()).hexdigest()[:8]}.pth"
    mirror.put(f"models/{name}", lambda p: p.write_bytes(buf.read_bytes()))
    path = torch_hub_file(f"https://download.pytorch.org/models/{name}", mirror.url)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / name and mirror.sent == buf.stat().st_size
    assert torch_hub_file(f"https://download.pytorch.org/models/{name}", mirror.url) == path
    assert mirror.gets == 1  # the second call read the cache
    mirror.put("models/resnet50-0676ba61.pth", lambda p: p.write_bytes(buf.read_bytes()))
    with pytest.raises(ConfigError, match=r"cannot download resnet50-0676ba61.pth from "
                                          + mirror.url + r"/models/resnet50-0676ba61.pth: invalid hash value"):
        imagenet_file("deeplabv3_resnet50", None, mirror.url)
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth").exists()


def test_weights_fetch_stages_a_folder_for_torch_home_and_hf_home(tmp_path, mirror, capsys):
    from hardseg.platform.cli import main as cli

    sd = perturbed_encoder(seed=4)
    rev = _smp_resnet18_revision()
    mirror.put(f"smp-hub/resnet18.imagenet/resolve/{rev}/model.safetensors", lambda p: save_file(sd, str(p)))
    to = tmp_path / "shared" / "weights"
    assert cli(["weights", "fetch", "--model", "smp:Unet", "--encoder", "resnet18", "--to", str(to),
                "--mirror", mirror.url]) == 0
    out = capsys.readouterr().out
    assert f"TORCH_HOME={to} HF_HOME={to}" in out, out
    staged = to / "hub" / "models--smp-hub--resnet18.imagenet" / "snapshots" / rev / "model.safetensors"
    assert staged.is_file()


def test_unreachable_mirror_is_one_line_naming_the_url_after_the_timeout(capsys, sqlite_uri, data_root, mirror):
    """A server that accepts connections and never answers (a firewall's black hole)."""
    import socket
    import time

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    start = time.perf_counter()
    try:
        line = _check(capsys, ["train", *sum((["--set", o] for o in small_overrides(data_root)), []),
                               "--set", "model.name=smp:Unet", "--set", "model.encoder=resnet18",
                               "--set", "model.pretrained=imagenet", "--set", f"model.weights_mirror={url}",
                               "--set", "model.weights_timeout_s=1", "--tracking-uri", sqlite_uri],
                      f"model.weights_mirror: {url}/smp-hub/resnet18.imagenet/resolve/", "did not answer",
                      "model.weights_timeout_s=1")
    finally:
        hole.close()
    print(f"{line}  [{time.perf_counter() - start:.1f} s]")
    assert _no_runs(sqlite_uri)


def test_init_from_a_run_is_staged_on_uri_storage_for_every_worker(data_root, tmp_path, sqlite_uri):
    """``ray.storage_path`` as a URI: the driver uploads the run's export there, workers read the URI."""
    from mlflow.tracking import MlflowClient

    from hardseg.platform.prepare import resolve_paths

    src = training_model(data_root)
    export = src.export()
    for p in export.parameters():
        p.data.add_(0.5)
    (tmp_path / "art").mkdir()
    torch.save({"model": export.state_dict(), "epoch": 1, "config": {}}, tmp_path / "art" / "model_export.pt")
    client = MlflowClient(sqlite_uri)
    run = client.create_run(client.create_experiment("e"))
    client.log_artifact(run.info.run_id, str(tmp_path / "art" / "model_export.pt"), "model")
    storage = f"file://{tmp_path / 'storage'}"
    cfg = load_config(None, small_overrides(data_root, **{
        "model.name": "smp:Unet", "model.encoder": "resnet18", "ray.storage_path": storage,
        "tracking.uri": sqlite_uri, "model.init_from": f"runs:/{run.info.run_id}/model"}))
    resolved = resolve_paths(cfg)
    assert resolved.model.init_from.startswith(f"{storage}/init_from/") and \
        resolved.model.init_from.endswith("/model_export.pt")
    assert (tmp_path / "storage" / resolved.model.init_from[len(storage) + 1:]).is_file()
    tm = training_model(data_root, **{"model.init_from": resolved.model.init_from})  # as a worker builds it
    assert_same(export.state_dict(), tm.export())
