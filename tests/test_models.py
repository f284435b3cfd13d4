"""Every registered model: fresh weights, one structured output, hooks for strategies."""

import pytest
import torch

from hardseg.errors import ConfigError
import torch.nn.functional as F

from hardseg.models import SegOutput, available_models, build_model, predict_classes, resize_bilinear
from hardseg.models.mmseg import MODEL_NAMES as MMSEG


# smp: test_models_zoo; mmseg's ResNet-50/101 networks (slow to build on CPU): test_models_mmseg
@pytest.mark.parametrize("name", [n for n in available_models() if not n.startswith("smp:") and n not in MMSEG])
def test_model_returns_structured_output(name):
    torch.manual_seed(0)
    model = build_model(name, 7, aux=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 7, 64, 64)
    if out.aux is not None:
        assert out.aux.shape == (2, 7, 64, 64)
    # Named features, shallow → deep: channel counts as declared, spatial size never grows.
    assert list(out.features) == list(model.feature_channels)
    sizes = [f.shape[-1] for f in out.features.values()]
    assert sizes == sorted(sizes, reverse=True)
    for key, feat in out.features.items():
        assert feat.shape[1] == model.feature_channels[key]
        assert 64 // feat.shape[-1] == model.feature_strides[key], key
    # new_head builds a fresh copy of the decode head's architecture with k outputs.
    head = model.new_head(1).eval()
    with torch.no_grad():
        hl = head(out.head_input)
        ref = model.decode_head(out.head_input)
    assert hl.shape[1] == 1 and hl.shape[-2:] == ref.shape[-2:]
    assert type(head) is type(model.decode_head)


def test_tiny_model_is_small_and_unknown_model_is_rejected():
    assert sum(p.numel() for p in build_model("tiny_seg", 7).parameters()) < 500_000
    with pytest.raises(ConfigError, match="unknown model 'nope'; allowed: .*tiny_seg"):
        build_model("nope", 7)


def test_predict_classes_is_argmax_with_first_maximum_on_ties():
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (2, 5, 9, 7), generator=g).float()  # many ties
    torch.testing.assert_close(predict_classes(logits), logits.argmax(1), rtol=0, atol=0)
    tied = torch.zeros(1, 4, 2, 2)
    assert predict_classes(tied).eq(0).all()


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("src,dst", [((16, 16), (64, 64)), ((8, 5), (64, 33)), ((32, 32), (16, 16)),
                                     ((64, 48), (7, 20)), ((1, 1), (4, 4)), ((9, 9), (9, 30))])
def test_resize_bilinear_matches_interpolate_values_and_gradients(src, dst, align_corners):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *src, generator=g, dtype=torch.float64, requires_grad=True)
    ours = resize_bilinear(x, dst, align_corners)
    ref = F.interpolate(x, size=dst, mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    grad = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)


def test_resize_bilinear_keeps_dtype_under_autocast_and_skips_same_size():
    x = torch.randn(2, 3, 8, 8)
    assert resize_bilinear(x, (8, 8)) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resize_bilinear(x, (16, 16)).dtype == torch.float32  # as F.interpolate: no cast to bf16
        assert resize_bilinear(x.bfloat16(), (16, 16)).dtype == torch.bfloat16
