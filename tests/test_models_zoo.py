"""The smp model zoo behind SegModel: every model × every strategy, one short training per family."""

from __future__ import annotations

import math

import pytest
import torch

from hardseg.config import load_config
from hardseg.errors import ConfigError
from hardseg.models import SegOutput, available_models, build_model
from hardseg.models.smp import ARCHITECTURES, SmpHead
from hardseg.strategies import Objective, TrainingModel
from hardseg.trainables.local import run_local

from conftest import small_overrides
from test_strategies_models import CASES, CTX, K

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMP = [f"smp:{a}" for a in ARCHITECTURES]
# Small encoders keep the tests cheap (resnet18 on the meta device); Segformer also with its own mit_b0.
ENCODER = {"smp:Segformer": "mit_b0"}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta_training_model(model: str, case: str) -> TrainingModel:
    names, params = CASES[case]
    objective = Objective(names, params, CTX)  # as build_training_model: the objective's tensors stay real
    with torch.device("meta"):
        net = build_model(model, K, encoder="resnet18" if model.startswith("smp:") else None)
        return TrainingModel(net, objective)


@pytest.mark.parametrize("model", available_models())
def test_every_model_takes_every_strategy_on_the_meta_device(model):
    """HL and SR exports equal CE's on every model; C2F's export has its stages (and a coarse head)."""
    export = {}
    for case in CASES:
        tm = meta_training_model(model, case)
        assert all(p.device.type == "meta" for p in tm.parameters())
        export[case] = n_params(tm.export())
        assert n_params(tm) >= export[case]
    assert export["hl"] == export["self_regulation"] == export["ce"]
    assert export["coarse_to_fine"] != export["ce"]  # its stages are part of the prediction


@pytest.mark.parametrize("model", SMP)
def test_smp_model_output_features_and_new_head(model):
    torch.manual_seed(0)
    net = build_model(model, K, aux=True, encoder=ENCODER.get(model, "resnet18")).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert isinstance(out, SegOutput) and out.logits.shape == (1, K, 64, 64)
    assert (out.aux is not None) == (model.split(":")[1] in ("DeepLabV3", "DeepLabV3Plus", "PSPNet", "UPerNet"))
    assert list(out.features) == list(net.feature_channels)
    for name, feat in out.features.items():
        assert feat.shape[1] == net.feature_channels[name]
        assert 64 // feat.shape[-1] == net.feature_strides[name], name
    net.train()  # every parameter gets a gradient (DDP without find_unused_parameters)
    out = net(torch.randn(2, 3, 64, 64))
    (out.logits.sum() + (out.aux.sum() if out.aux is not None else 0)).backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]
    head = net.new_head(1)
    assert isinstance(head, SmpHead) and n_params(head) < n_params(net.decode_head)
    assert not any(torch.equal(a, b) for a, b in zip(head.decoder.parameters(), net.decode_head.decoder.parameters())
                   if a.dim() > 1)  # freshly initialised convolutions, not copies of the weights
    with torch.no_grad():
        assert head(out.head_input).shape[-2:] == out.head_logits.shape[-2:]


def test_mit_encoders_build_on_the_meta_device():
    with torch.device("meta"):  # mit_* call .item() while building: built on CPU, then moved
        net = build_model("smp:Segformer", K, encoder="mit_b0")
    assert all(p.device.type == "meta" for p in net.parameters())


def test_smp_bad_names_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown encoder 'resnet7' for 'model.encoder'"):
        build_model("smp:Unet", K, encoder="resnet7")
    with pytest.raises(ConfigError, match="unknown timm encoder 'nope_net'"):
        build_model("smp:Unet", K, encoder="tu-nope_net")
    with pytest.raises(ConfigError, match="does not take 'model.encoder: mit_b0'"):
        build_model("smp:Linknet", K, encoder="mit_b0")
    with pytest.raises(ConfigError, match="'model.encoder' applies to smp"):
        build_model("tiny_seg", K, encoder="resnet18")


@pytest.mark.parametrize("model,encoder,strategy", [
    ("smp:DeepLabV3Plus", "resnet18", "hl"),  # DeepLab family (ASPP), with its aux head
    ("smp:UPerNet", "mobilenet_v2", "self_regulation"),  # pyramid pooling / FPN family
    ("smp:Unet", "resnet18", "coarse_to_fine"),  # U-shaped decoders
    ("smp:Segformer", "mit_b0", "ohem"),  # transformer encoder, MLP decoder
])
def test_each_architecture_family_trains_on_cpu(data_root, model, encoder, strategy):
    cfg = load_config(None, small_overrides(data_root, **{
        "model.name": model, "model.encoder": encoder, "model.aux": True, "strategies": f"[{strategy}]",
        "train.epochs": 1, "data.eval_domains": "[]", "train.log_images_every": 0}))
    if strategy == "self_regulation":
        cfg.strategy_params = {"self_regulation": {"exit_channels": 16}}
    hist = run_local(cfg)
    assert math.isfinite(hist[-1]["train/loss"]) and 0.0 <= hist[-1]["val/miou"] <= 1.0
