"""mmsegmentation's networks (models/mmseg.py): parameter parity, checkpoint layout in and out, train.amp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardseg.config import load_config
from hardseg.data import dataset_info
from hardseg.errors import ConfigError
from hardseg.models import SegOutput, build_model
from hardseg.models.mmseg import MODEL_NAMES
from hardseg.models.mmseg_checkpoint import hl_head, to_mmseg_checkpoint
from hardseg.strategies import Objective, TrainingModel
from hardseg.strategies.build import build_training_model
from hardseg.trainables.settings import StepSettings, autocast_for, resolve_amp

from conftest import small_overrides
from test_cli_errors import _check, _no_runs
from test_strategies_models import CASES, CTX, K, make_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- parameter counts, derived from mmseg 0.22.1's configs ---------------------------------------------------
# Counted by hand from configs/_base_/models/{pspnet,deeplabv3,deeplabv3plus,fcn}_r50-d8.py (the *_r101-d8
# configs only set backbone depth=101) and the modules they name: a ConvModule with a norm is a bias-free
# convolution + BN (2 parameters per channel); conv_seg is a 1×1 convolution with bias; BN buffers are not
# parameters. num_classes=19 (Cityscapes), with the FCN auxiliary head.
def conv(cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> int:
    return cin // groups * cout * k * k + (cout if bias else 0)


def cm(cin: int, cout: int, k: int, groups: int = 1) -> int:  # mmcv ConvModule(norm_cfg=SyncBN)
    return conv(cin, cout, k, groups) + 2 * cout


def dsc(cin: int, cout: int) -> int:  # mmcv DepthwiseSeparableConvModule: depthwise 3×3 ConvModule + 1×1 ConvModule
    return cm(cin, cin, 3, groups=cin) + cm(cin, cout, 1)


def resnet_v1c(depth: int) -> int:
    """ResNetV1c: deep stem 3→32→32→64 (3×3 ConvModules), bottleneck stages (3,4,6,3) or (3,4,23,3), no fc."""
    total = cm(3, 32, 3) + cm(32, 32, 3) + cm(32, 64, 3)
    inplanes = 64
    for i, blocks in enumerate({50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]):
        planes = 64 * 2 ** i
        for b in range(blocks):
            cin = inplanes if b == 0 else planes * 4
            total += cm(cin, planes, 1) + cm(planes, planes, 3) + cm(planes, planes * 4, 1)
            if b == 0:  # downsample: 1×1 conv (stride) + BN; every first block changes the channels
                total += cm(inplanes, planes * 4, 1)
        inplanes = planes * 4
    return total


def seg(ch: int, k: int) -> int:
    return conv(ch, k, 1, bias=True)


def psp_head(k: int) -> int:  # in 2048, channels 512, pool_scales (1, 2, 3, 6): 1×1 each, 3×3 bottleneck
    return 4 * cm(2048, 512, 1) + cm(2048 + 4 * 512, 512, 3) + seg(512, k)


def aspp_head(k: int) -> int:  # image pool 1×1, dilations (1, 12, 24, 36): 1×1 + three 3×3, 3×3 bottleneck
    return cm(2048, 512, 1) + cm(2048, 512, 1) + 3 * cm(2048, 512, 3) + cm(5 * 512, 512, 3) + seg(512, k)


def sep_aspp_head(k: int) -> int:  # ASPPHead with separable dilated branches; c1 256→48; two separable 3×3
    return (cm(2048, 512, 1) + cm(2048, 512, 1) + 3 * dsc(2048, 512) + cm(5 * 512, 512, 3) + cm(256, 48, 1)
            + dsc(512 + 48, 512) + dsc(512, 512) + seg(512, k))


def fcn_head(k: int) -> int:  # num_convs 2, concat_input True: 3×3 2048→512, 3×3 512→512, conv_cat 3×3 2560→512
    return cm(2048, 512, 3) + cm(512, 512, 3) + cm(2048 + 512, 512, 3) + seg(512, k)


def aux_head(k: int) -> int:  # FCNHead in 1024, channels 256, num_convs 1, concat_input False
    return cm(1024, 256, 3) + seg(256, k)


HEADS = {"pspnet": psp_head, "deeplabv3": aspp_head, "deeplabv3plus": sep_aspp_head, "fcn": fcn_head}
# network: (whole model with aux, the HL reference's weigh_head = the decode head with 1 output channel)
MMSEG_PARAMS = {
    "pspnet_r50_d8": (48_975_494, 23_074_305),
    "pspnet_r101_d8": (67_967_622, 23_074_305),
    "deeplabv3_r50_d8": (68_113_030, 42_211_841),
    "deeplabv3_r101_d8": (87_105_158, 42_211_841),
    "deeplabv3plus_r50_d8": (43_589_878, 17_688_689),
    "deeplabv3plus_r101_d8": (62_582_006, 17_688_689),
    "fcn_r50_d8": (49_497_734, 23_596_545),
    "fcn_r101_d8": (68_489_862, 23_596_545),
}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_the_table_is_what_the_configs_count():
    assert resnet_v1c(50) == 23_527_264 and psp_head(19) == 23_083_539 and aux_head(19) == 2_364_691
    for name, (total, hl) in MMSEG_PARAMS.items():
        arch, depth, _ = name.rsplit("_", 2)
        assert resnet_v1c(int(depth[1:])) + HEADS[arch](19) + aux_head(19) == total, name
        assert HEADS[arch](1) == hl, name
    assert set(MMSEG_PARAMS) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts_equal_mmseg_to_the_parameter(name):
    total, hl = MMSEG_PARAMS[name]
    with torch.device("meta"):
        net = build_model(name, 19, aux=True)
        tm = TrainingModel(net, Objective(["hl"], {}, CTX))
    assert n_params(net) == total
    assert n_params(tm.strategy_modules["hl"]) == hl  # HL's branch: the reference's weigh_head
    assert n_params(tm.export()) == total  # the branch is training-only


def expected_pspnet_r50_keys(aux: bool = True) -> set[str]:
    """mmseg's checkpoint keys of PSPNet-R50-D8, from its layout (not from hardseg's modules)."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = {f"backbone.stem.{i}.weight" for i in (0, 3, 6)} | {f"backbone.stem.{i}.{b}" for i in (1, 4, 7) for b in bn}
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for j in range(blocks):
            p = f"backbone.layer{stage}.{j}"
            keys |= {f"{p}.conv{i}.weight" for i in (1, 2, 3)} | {f"{p}.bn{i}.{b}" for i in (1, 2, 3) for b in bn}
            if j == 0:
                keys |= {f"{p}.downsample.0.weight"} | {f"{p}.downsample.1.{b}" for b in bn}

    def conv_module(p: str) -> set[str]:
        return {f"{p}.conv.weight"} | {f"{p}.bn.{b}" for b in bn}

    for i in range(4):
        keys |= conv_module(f"decode_head.psp_modules.{i}.1")
    keys |= conv_module("decode_head.bottleneck") | {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    if aux:
        keys |= conv_module("auxiliary_head.convs.0") | {"auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"}
    return keys


def test_parameter_names_are_mmseg_checkpoint_keys():
    with torch.device("meta"):
        assert set(build_model("pspnet_r50_d8", 19, aux=True).state_dict()) == expected_pspnet_r50_keys()
        assert set(build_model("pspnet_r50_d8", 19).state_dict()) == expected_pspnet_r50_keys(aux=False)


def test_sync_bn_converts_every_norm():
    with torch.device("meta"):
        net = build_model("deeplabv3plus_r50_d8", 19, aux=True)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    # stem 3 + 16 bottlenecks × 3 + 4 downsamples; head: image pool 1, ASPP 1 + 3 × 2, bottleneck 1, c1 1,
    # 2 separable × 2; aux 1
    assert n_bn == 3 + 16 * 3 + 4 + 1 + 7 + 1 + 1 + 4 + 1 and sum(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules()) == n_bn


# -- forward passes on tiny inputs --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["deeplabv3_r50_d8", "deeplabv3plus_r50_d8", "fcn_r50_d8"])  # PSPNet: below
def test_outputs_features_and_every_strategy_on_a_tiny_input(name):
    """One network per head (the R101 ones differ only in layer3's length): outputs, features, a gradient
    for every parameter, HL's branch, and every strategy at once."""
    torch.manual_seed(0)
    net = build_model(name, K, aux=True, align_corners=True)
    x, y = make_batch(n=2, size=32)
    out = net(x)
    assert out.logits.shape == out.aux.shape == (2, K, 32, 32) and net.align_corners
    assert {k: (v.shape[1], 32 // v.shape[-1]) for k, v in out.features.items()} == \
        {k: (net.feature_channels[k], net.feature_strides[k]) for k in net.feature_channels}
    (out.logits.sum() + out.aux.sum()).backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]  # DDP without find_unused_parameters
    branch = net.new_head(1)
    assert type(branch) is type(net.decode_head) and branch(out.head_input).shape == (2, 1) + out.head_logits.shape[2:]
    # mmseg's initialisation: conv_seg normal with std 0.01, each block's last BN zeroed (zero_init_residual)
    assert 0.007 < branch.conv_seg.weight.std().item() < 0.013 and not branch.conv_seg.bias.any()
    assert not net.backbone.layer4[2].bn3.weight.any() and net.backbone.layer4[2].bn2.weight.eq(1).all()
    net.zero_grad(set_to_none=True)
    # every strategy at once: focal, cb_ce, ohem, HL's branch, SR's exits, C2F's stages (the meta-device test
    # of tests/test_models_zoo.py builds each strategy alone on every model)
    names, params = CASES["everything"]
    objective = Objective(names, params, CTX)
    tm = TrainingModel(net, objective)
    terms = objective.losses(SegOutput.from_dict(tm(x)), y, 0.5)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and not [n for n, p in tm.named_parameters() if p.grad is None]


# -- mmseg checkpoints: in ---------------------------------------------------------------------------------
def random_state(net: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of ``net`` drawn afresh, BN statistics included, at scales that keep 50 layers finite."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in net.state_dict().items():
        if not v.is_floating_point():
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")):
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif v.dim() == 1:  # BN weight
            out[k] = 0.5 * torch.rand(v.shape, generator=g) + 0.25
        else:  # convolutions: He-scaled
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / (v[0].numel())) ** 0.5
    return out


def cheap_state(name: str, classes: int = 19, aux: bool = True) -> dict[str, torch.Tensor]:
    """A whole network's state dict whose tensors are views of one number (a few kB on disk)."""
    with torch.device("meta"):
        sd = build_model(name, classes, aux=aux).state_dict()
    one, step = torch.zeros(1), torch.zeros((), dtype=torch.long)
    return {k: (one.expand(v.shape) if v.is_floating_point() else step) for k, v in sd.items()}


def save_mmseg(path, state: dict[str, torch.Tensor]) -> str:
    torch.save({"meta": {"mmseg_version": "0.22.1", "CLASSES": None, "iter": 40000}, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return str(path)


def cityscapes_cfg(**extra):
    return load_config(None, [f"{k}={v}" for k, v in {"data.dataset": "cityscapes", "data.root": "/nonexistent",
                                                      "model.name": "pspnet_r50_d8", "model.aux": "true",
                                                      **extra}.items()])


def hand_pspnet(sd: dict[str, torch.Tensor], x: torch.Tensor, align_corners: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg's PSPNet-R50-D8 forward (eval), written with torch.nn.functional on the checkpoint's tensors."""
    def bn(t, p):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            False, 0.0, 1e-5)

    def cbr(t, p, n, stride=1, padding=0, dilation=1, relu=True):  # conv p.conv<n>/bn<n> or ConvModule p.conv/bn
        w = sd[f"{p}.conv{n}.weight" if n else f"{p}.conv.weight"]
        t = bn(F.conv2d(t, w, None, stride, padding, dilation), f"{p}.bn{n}" if n else f"{p}.bn")
        return F.relu(t) if relu else t

    def up(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=align_corners)

    t = x
    for conv_i, stride in ((0, 2), (3, 1), (6, 1)):  # deep stem
        w = sd[f"backbone.stem.{conv_i}.weight"]
        t = F.relu(bn(F.conv2d(t, w, None, stride, 1), f"backbone.stem.{conv_i + 1}"))
    t = F.max_pool2d(t, 3, 2, 1)
    outs = []
    for stage, (blocks, stride, dilation) in enumerate(zip((3, 4, 6, 3), (1, 2, 1, 1), (1, 1, 2, 4)), start=1):
        for j in range(blocks):
            p = f"backbone.layer{stage}.{j}"
            s = stride if j == 0 else 1
            d = max(dilation // 2, 1) if j == 0 else dilation  # contract_dilation
            o = cbr(t, p, 1)
            o = cbr(o, p, 2, s, d, d)
            o = cbr(o, p, 3, relu=False)
            identity = bn(F.conv2d(t, sd[f"{p}.downsample.0.weight"], None, s), f"{p}.downsample.1") if j == 0 else t
            t = F.relu(o + identity)
        outs.append(t)
    c3, c4 = outs[2], outs[3]
    pyramid = [c4] + [up(cbr(F.adaptive_avg_pool2d(c4, scale), f"decode_head.psp_modules.{i}.1", None), c4.shape[2:])
                      for i, scale in enumerate((1, 2, 3, 6))]
    h = cbr(torch.cat(pyramid, 1), "decode_head.bottleneck", None, padding=1)
    logits = F.conv2d(h, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])
    a = cbr(c3, "auxiliary_head.convs.0", None, padding=1)
    aux = F.conv2d(a, sd["auxiliary_head.conv_seg.weight"], sd["auxiliary_head.conv_seg.bias"])
    return up(logits, x.shape[2:]), up(aux, x.shape[2:])


def test_mmseg_checkpoint_loads_every_tensor_and_predicts_as_mmseg(tmp_path):
    """An mmseg-layout PSPNet-R50-D8 checkpoint with the HL reference's weigh_head: 0 missing, 0 unexpected;
    logits equal a hand-written functional forward on the same tensors; export → import is bitwise."""
    torch.manual_seed(0)
    with torch.device("meta"):
        shape = TrainingModel(build_model("pspnet_r50_d8", 19, aux=True), Objective(["hl"], {}, CTX))
    state = random_state(shape.net)
    state.update({f"weigh_head.{k}": v for k, v in random_state(hl_head(shape), seed=1).items()})
    path = save_mmseg(tmp_path / "iter_40000.pth", state)
    cfg = cityscapes_cfg(**{"model.init_from": path, "model.align_corners": "true", "strategies": "[hl]"})
    info = dataset_info(cfg.data)
    tm, _ = build_training_model(cfg, info, np.ones(info.num_classes))
    (report,) = tm.weight_reports
    assert (report.loaded, report.missing, report.unexpected) == (len(state), [], [])
    mine = {**tm.net.state_dict(), **{f"weigh_head.{k}": v for k, v in hl_head(tm).state_dict().items()}}
    assert mine.keys() == state.keys() and all(torch.equal(mine[k], v) for k, v in state.items())

    x = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(2))
    net = tm.export().eval()
    with torch.no_grad():
        out = net(x)
        logits, aux = hand_pspnet(state, x, align_corners=True)
    delta = max((out.logits - logits).abs().max().item(), (out.aux - aux).abs().max().item())
    scale = logits.abs().max().item()
    assert delta <= 1e-4 * scale, (delta, scale)
    print(f"\nmax |Δ| logits vs the hand-written forward: {delta:.3g} (max |logit| {scale:.3g})")

    exported = tmp_path / "export.pth"
    torch.save(to_mmseg_checkpoint(tm.net, {"CLASSES": info.class_names}, cfg.model.name, hl=hl_head(tm)), exported)
    back = torch.load(exported, map_location="cpu", weights_only=True)
    assert back["state_dict"].keys() == state.keys()
    assert all(torch.equal(back["state_dict"][k], v) for k, v in state.items())
    assert "_base_/models/pspnet_r50-d8.py" in back["meta"]["config"]
    tm2, _ = build_training_model(cityscapes_cfg(**{"model.init_from": str(exported), "model.align_corners": "true",
                                                    "strategies": "[hl]"}), info, np.ones(info.num_classes))
    again = {**tm2.net.state_dict(), **{f"weigh_head.{k}": v for k, v in hl_head(tm2).state_dict().items()}}
    assert all(torch.equal(again[k], v) for k, v in state.items())


def meta_load(tmp_path, state, **extra):
    cfg = cityscapes_cfg(**{"model.init_from": save_mmseg(tmp_path / "ckpt.pth", state), **extra})
    info = dataset_info(cfg.data)
    return build_training_model(cfg, info, np.ones(info.num_classes), meta=True)[0].weight_reports[0]


def test_checkpoint_checks_report_every_tensor(tmp_path):
    state = cheap_state("pspnet_r50_d8")
    # no aux head in the run: its tensors are reported, not dropped
    report = meta_load(tmp_path, state, **{"model.aux": "false"})
    assert report.missing == [] and len(report.unexpected) == 8 and report.unexpected[0].startswith("auxiliary_head.")
    # an inference-only file (no aux head) into a run with one
    report = meta_load(tmp_path, cheap_state("pspnet_r50_d8", aux=False))
    assert len(report.missing) == 8 and report.unexpected == []
    # weigh_head without HL in the run
    report = meta_load(tmp_path, {**state, "weigh_head.conv_seg.weight": torch.zeros(1, 512, 1, 1)})
    assert report.unexpected == ["weigh_head.conv_seg.weight"]
    # a shape mismatch names the first key and both shapes
    bad = {**state, "backbone.layer2.0.conv2.weight": torch.zeros(128, 128, 5, 5)}
    with pytest.raises(ConfigError, match=r"shape mismatch at 'backbone.layer2.0.conv2.weight' .*\(128, 128, 5, 5\) "
                                          r"in the file, \(128, 128, 3, 3\) in the model"):
        meta_load(tmp_path, bad)
    # fine-tuning on another class count: the classifiers start fresh
    report = meta_load(tmp_path, cheap_state("pspnet_r50_d8", classes=150), **{
        "model.init_skip": "[decode_head.conv_seg,auxiliary_head.conv_seg]"})
    assert report.missing == [] and report.unexpected == [] and len(report.skipped) == 4
    assert "skipped 4 (model.init_skip)" in report.summary()
    with pytest.raises(ConfigError, match="model.init_skip: 'decode_head.classifier' names no layer"):
        meta_load(tmp_path, state, **{"model.init_skip": "[decode_head.classifier]"})


def test_another_architecture_and_another_class_count_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"mmseg checkpoint of another network: its decode_head has modules "
                                          r"aspp_modules, bottleneck, conv_seg, image_pool, model 'pspnet_r50_d8'"):
        meta_load(tmp_path, cheap_state("deeplabv3_r50_d8"))
    with pytest.raises(ConfigError, match=r"its backbone has ResNet stages of 3/4/23/3 blocks, model 'pspnet_r50_d8' "
                                          r"\(pspnet_r50-d8\) has ResNet stages of 3/4/6/3 blocks"):
        meta_load(tmp_path, cheap_state("pspnet_r101_d8"))
    with pytest.raises(ConfigError, match=r"predicts 150 classes and the model 19 .* set model.init_skip: "
                                          r"\[decode_head.conv_seg, auxiliary_head.conv_seg\]"):
        meta_load(tmp_path, cheap_state("pspnet_r50_d8", classes=150))
    with pytest.raises(ConfigError, match="loads into the mmseg networks .*, not 'smp:PSPNet'"):
        meta_load(tmp_path, cheap_state("pspnet_r50_d8"), **{"model.name": "smp:PSPNet", "model.encoder": "resnet18"})


@pytest.mark.parametrize("other, needles", [
    ("deeplabv3_r50_d8", ["model.init_from", "an mmseg checkpoint of another network", "aspp_modules"]),
    ("pspnet_r50_d8", ["model.init_from", "predicts 19 classes and the model 7",
                       "model.init_skip: [decode_head.conv_seg, auxiliary_head.conv_seg]"]),
])
def test_bad_checkpoints_on_the_command_line(capsys, sqlite_uri, data_root, tmp_path, other, needles):
    path = save_mmseg(tmp_path / "ckpt.pth", cheap_state(other))
    args = sum((["--set", o] for o in small_overrides(data_root, **{
        "model.name": "pspnet_r50_d8", "model.aux": "true", "model.init_from": path})), [])
    _check(capsys, ["train", *args, "--tracking-uri", sqlite_uri], *needles)
    assert _no_runs(sqlite_uri)


def test_open_mmlab_imagenet_resnet_loads_into_the_backbone(tmp_path, monkeypatch):
    """open-mmlab's resnet50_v1c file (mmcv layout: stem.*, layer*.*, fc.*) as model.pretrained."""
    with torch.device("meta"):
        backbone = build_model("pspnet_r50_d8", 19).backbone
    sd = random_state(backbone)
    sd.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    for i, wrap in enumerate((lambda d: d, lambda d: {"meta": {}, "state_dict": d})):
        torch.save(wrap(sd), tmp_path / f"resnet50_v1c_{i}.pth")
        cfg = cityscapes_cfg(**{"model.pretrained": str(tmp_path / f"resnet50_v1c_{i}.pth")})
        info = dataset_info(cfg.data)
        (report,) = build_training_model(cfg, info, np.ones(info.num_classes), meta=True)[0].weight_reports
        assert (report.loaded, report.missing, report.unexpected) == (len(sd) - 2, [], ["fc.weight", "fc.bias"])
    # imagenet: open-mmlab's file, from the cache or downloaded on a miss; offline and not cached, one line naming it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(ConfigError, match="resnet50_v1c-2cccc1ad.pth"):
        build_training_model(cityscapes_cfg(**{"model.pretrained": "imagenet"}), info, np.ones(19), meta=True)


# -- mmseg checkpoints: out ---------------------------------------------------------------------------------
def test_export_command_writes_mmseg_layout(capsys, tmp_path, sqlite_uri):
    from hardseg.platform import tracking
    from hardseg.platform.cli import main as cli

    torch.manual_seed(0)
    with torch.device("meta"):
        net = build_model("deeplabv3plus_r50_d8", 19)
    state = random_state(net)
    cfg = cityscapes_cfg(**{"model.name": "deeplabv3plus_r50_d8", "model.aux": "false"})
    (tmp_path / "run").mkdir()
    torch.save({"model": state, "epoch": 3, "config": cfg.model_dump(mode="json")}, tmp_path / "run" / "model_export.pt")
    client = tracking.MlflowClient(sqlite_uri)  # artifacts next to the store (not under the working directory)
    run = client.create_run(tracking.get_or_create_experiment(client, "export", sqlite_uri))
    client.log_artifact(run.info.run_id, str(tmp_path / "run" / "model_export.pt"), "model")
    client.set_terminated(run.info.run_id)
    out = tmp_path / "dlv3p.pth"
    assert cli(["export", run.info.run_id, "--format", "mmseg", "--out", str(out), "--tracking-uri", sqlite_uri]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"meta", "state_dict"} and ckpt["meta"]["CLASSES"][0] == "road"
    assert ckpt["meta"]["hardseg"]["run_id"] == run.info.run_id and ckpt["meta"]["epoch"] == 3
    assert ckpt["state_dict"].keys() == state.keys() and all(torch.equal(ckpt["state_dict"][k], v)
                                                             for k, v in state.items())
    # a training checkpoint (checkpoint.pt) of an HL run: the branch comes out as weigh_head
    cfg = cityscapes_cfg(**{"model.name": "deeplabv3plus_r50_d8", "model.aux": "false", "strategies": "[hl]"})
    with torch.device("meta"):
        tm = TrainingModel(build_model("deeplabv3plus_r50_d8", 19), Objective(["hl"], {}, CTX))
    branch = random_state(hl_head(tm), seed=3)
    train_state = {**state, **{f"strategy_modules.hl.branch.head.{k}": v for k, v in branch.items()}}
    torch.save({"model": {f"net.{k}" if not k.startswith("strategy_") else k: v for k, v in train_state.items()},
                "optimizer": {}, "epoch": 2, "config": cfg.model_dump(mode="json")}, tmp_path / "checkpoint.pt")
    assert cli(["export", str(tmp_path / "checkpoint.pt"), "--format", "mmseg", "--out", str(out)]) == 0
    sd = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    assert sd.keys() == state.keys() | {f"weigh_head.{k}" for k in branch}
    assert all(torch.equal(sd[f"weigh_head.{k}"], v) for k, v in branch.items())
    # a model that is not an mmseg network; a run that does not exist
    capsys.readouterr()  # MLflow's start-up lines above
    cfg = load_config(None, [])
    torch.save({"model": build_model("tiny_seg", 7).state_dict(), "epoch": 1, "config": cfg.model_dump(mode="json")},
               tmp_path / "tiny_export.pt")
    _check(capsys, ["export", str(tmp_path / "tiny_export.pt"), "--format", "mmseg", "--out", str(tmp_path / "x.pth")],
           "--format mmseg: model 'tiny_seg' is not one of the mmseg networks")
    _check(capsys, ["export", "0123456789abcdef", "--format", "mmseg", "--tracking-uri", sqlite_uri],
           "export: cannot fetch model/model_export.pt of run '0123456789abcdef'")


# -- train.amp --------------------------------------------------------------------------------------------
def test_amp_settings():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_amp(v, cpu) for v in ("auto", "off", "fp16", "bf16", "on")] == \
        [None, None, torch.float16, torch.bfloat16, torch.bfloat16]
    assert [resolve_amp(v, cuda) for v in ("auto", "off", "fp16", "bf16", "on")] == \
        [torch.float16, None, torch.float16, torch.bfloat16, torch.float16]
    s = StepSettings.resolve(load_config(None, ["train.amp=bf16"]), cpu, 1)
    assert s.amp and s.amp_dtype == torch.bfloat16
    assert not StepSettings.resolve(load_config(None, ["train.amp=off"]), cuda, 1).amp
    for dtype in (torch.float16, torch.bfloat16):  # what the loop's autocast computes in
        with autocast_for(cpu, True, dtype):
            assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == dtype
    with pytest.raises(ConfigError, match="invalid value 'fp8' for 'train.amp'; allowed: 'auto', 'off', 'fp16'"):
        load_config(None, ["train.amp=fp8"])
    with pytest.raises(ConfigError, match="model.init_skip applies to model.init_from"):
        load_config(None, ["model.init_skip=[decode_head.conv_seg]"])
    with pytest.raises(ConfigError, match="'model.align_corners' applies to the mmseg networks"):
        build_model("tiny_seg", 7, align_corners=True)

