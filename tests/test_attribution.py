"""Attribution methods: parity with Captum and pytorch-grad-cam, exact values, contract.

Models: paper 1's CNN (32/64) and a ResNet-18 at width 0.125, both with random
weights (BN statistics randomized so every path carries signal), in eval mode.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cnnvis import ConfigError
from cnnvis.attribution import (
    METHODS,
    Deconvnet,
    GradCAM,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    Saliency,
    minmax_per_image,
    project_feature_maps,
)
from cnnvis.config import ModelConfig, parse
from cnnvis.hooks import _HOOK_DICTS, capture, model_state_guard, relu_rule
from cnnvis.models import build_model, conv_layers

ATOL = 1e-5
warnings.filterwarnings("ignore", module="captum")


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "p1_cnn":
        cfg = parse(ModelConfig, {"name": "p1_cnn", "widths": [32, 64]}, "model")
    else:
        cfg = parse(ModelConfig, {"name": "resnet18", "width_multiplier": 0.125}, "model")
    model = build_model(cfg, in_channels=1, num_classes=10, image_size=28)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # zero-init BN gammas and fresh running stats would hide paths
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval()


MODELS = ("p1_cnn", "resnet18")


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return _model(request.param)


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))


TARGETS = torch.tensor([3, 0, 9, 3])


def _snapshot(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "hooks": [len(getattr(m, d)) for m in model.modules() for d in _HOOK_DICTS if hasattr(m, d)],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [p.grad for p in model.parameters()],
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    assert after["hooks"] == before["hooks"]
    assert all(g is None for g in after["grads"])
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


# --------------------------------------------------------------------------- Captum parity


def test_saliency_and_rules_equal_captum(model, images):
    from captum.attr import Deconvolution
    from captum.attr import GuidedBackprop as CGuidedBackprop
    from captum.attr import Saliency as CSaliency

    for ours, ref in ((Saliency(model).attribute(images, TARGETS), CSaliency(model).attribute(images, TARGETS)),
                      (Saliency(model).attribute(images, TARGETS, abs=False),
                       CSaliency(model).attribute(images, TARGETS, abs=False)),
                      (GuidedBackprop(model).attribute(images, TARGETS), CGuidedBackprop(model).attribute(images, TARGETS)),
                      (Deconvnet(model).attribute(images, TARGETS), Deconvolution(model).attribute(images, TARGETS))):
        assert ref.abs().max() > 0
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_deconvnet_and_guided_differ_by_the_rule_only(model, images):
    d, g = Deconvnet(model).attribute(images, TARGETS), GuidedBackprop(model).attribute(images, TARGETS)
    assert not torch.allclose(d, g)
    with relu_rule(model, "guided") as switch:  # the guided rule switched to deconvnet gives Deconvnet exactly
        switch.rule = Deconvnet.rule
        x = images.clone().requires_grad_(True)
        (by_rule,) = torch.autograd.grad(model(x).gather(1, TARGETS[:, None]).sum(), x)
    torch.testing.assert_close(by_rule, d, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["all", "max"])
def test_project_feature_maps_equals_captum_neuron_deconvolution(model, images, mode):
    from captum.attr import NeuronDeconvolution

    for _, layer in (conv_layers(model)[0], conv_layers(model)[-1]):
        proj = project_feature_maps(model, layer, images, mode=mode)
        assert proj.shape == (4, layer.out_channels, 1, 28, 28)
        nd = NeuronDeconvolution(model, layer)
        for k in (0, layer.out_channels // 2, layer.out_channels - 1):
            if mode == "all":
                def sel(out, k=k):
                    return 0.5 * out[:, k].pow(2).flatten(1).sum(1)
            else:
                def sel(out, k=k):
                    return 0.5 * out[:, k].flatten(1).max(1).values.pow(2)
            torch.testing.assert_close(proj[:, k], nd.attribute(images, sel), atol=ATOL, rtol=0)


def test_project_feature_maps_strided_dilated_rgb_equals_captum():
    from captum.attr import NeuronDeconvolution

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 6, 4, stride=2, padding=1, dilation=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(6, 3)).eval()
    x = torch.randn(2, 3, 17, 17)
    for layer in (model[0], model[2]):  # grouped route (3 input channels) and per-map route (8)
        proj = project_feature_maps(model, layer, x, mode="max")
        nd = NeuronDeconvolution(model, layer)
        for k in range(layer.out_channels):
            ref = nd.attribute(x, lambda out, k=k: 0.5 * out[:, k].flatten(1).max(1).values.pow(2))
            torch.testing.assert_close(proj[:, k], ref, atol=ATOL, rtol=0)


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) * 2 - 0.5  # some negative gammas
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval()


def _closed_form_cases() -> list[tuple[str, nn.Module, torch.Tensor, bool]]:
    """(name, model, images, whether the closed form must be taken for the second conv)."""
    torch.manual_seed(0)
    bn = build_model(parse(ModelConfig, {"name": "p1_cnn", "widths": [8, 6], "kernel_sizes": [5, 3],
                                         "batchnorm": True}, "model"), in_channels=3, num_classes=4, image_size=29)
    odd = nn.Sequential(nn.Conv2d(2, 5, (3, 5), padding=(0, 1)), nn.ReLU(), nn.MaxPool2d(3),
                        nn.Conv2d(5, 4, 3, padding=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    overlapping = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),
                                nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    g = torch.Generator().manual_seed(4)
    cases = [("p1_cnn BN RGB 29px", _randomize_bn(bn), torch.randn(3, 3, 29, 29, generator=g), True),
             ("3x5 kernel, 3x3 pool, padding 2", odd, torch.randn(2, 2, 20, 23, generator=g), True),
             ("overlapping pool", overlapping, torch.randn(2, 1, 12, 12, generator=g), False)]
    for _, m, x, _ in cases:
        m(x)  # materialize lazy layers
        m.eval()
    return cases


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("mode", ["all", "max"])
@pytest.mark.parametrize(("one_row_per_strip", "onednn"), [(False, True), (True, True), (False, False)])
def test_project_feature_maps_closed_form_equals_captum_and_autograd(case, mode, one_row_per_strip, onednn,
                                                                     monkeypatch):
    """The closed-form first block (unpool, ReLU rule, BN scale, transposed filters fused) equals autograd.

    Also in strips of one row of pooled positions (every strip boundary is crossed)
    and with ``F.conv2d`` instead of oneDNN's prepacked conv + ReLU.
    """
    from captum.attr import NeuronDeconvolution

    import cnnvis.attribution.deconvnet as deconv

    if one_row_per_strip:
        monkeypatch.setattr(deconv, "_STRIP_FLOATS", 1)
    if not onednn:
        monkeypatch.setattr(deconv, "_onednn_ops", lambda: False)
    assert deconv._onednn_ops() == onednn  # this machine's torch has the ops; CI's must too
    name, model, x, closed = _closed_form_cases()[case]
    layer = conv_layers(model)[1][1]
    calls = []
    real = deconv._through_image_block
    monkeypatch.setattr(deconv, "_through_image_block", lambda *a: calls.append(1) or real(*a))
    proj = project_feature_maps(model, layer, x, mode=mode, rectify=True)
    assert bool(calls) == closed, name
    monkeypatch.setattr(deconv, "_image_block", lambda *_: None)  # the general (autograd) route
    general = project_feature_maps(model, layer, x, mode=mode, rectify=True)
    scale = general.abs().max()
    assert scale > 0
    torch.testing.assert_close(proj, general, atol=1e-5 * scale, rtol=0)
    nd = NeuronDeconvolution(model, layer)
    for k in range(layer.out_channels):
        if mode == "all":
            def sel(out, k=k):
                return 0.5 * out[:, k].clamp(min=0).pow(2).flatten(1).sum(1)
        else:
            def sel(out, k=k):
                return 0.5 * out[:, k].clamp(min=0).flatten(1).max(1).values.pow(2)
        torch.testing.assert_close(proj[:, k], nd.attribute(x, sel), atol=1e-5 * scale, rtol=0)


def test_project_feature_maps_channels_chunks_and_rectify(images):
    model = _model("p1_cnn")
    conv2 = model.features.conv2
    full = project_feature_maps(model, conv2, images)
    sub = project_feature_maps(model, conv2, images, channels=[7, 2], max_batch=5)  # one map per pass
    torch.testing.assert_close(sub, full[:, [7, 2]], atol=ATOL, rtol=0)
    # the rectified signal at conv2 is the plain signal at relu2 (ReLU rule passes positive signals)
    torch.testing.assert_close(project_feature_maps(model, conv2, images, rectify=True),
                               project_feature_maps(model, model.features.relu2, images), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="mode"):
        project_feature_maps(model, conv2, images, mode="mean")
    with pytest.raises(ValueError, match="channels"):
        project_feature_maps(model, conv2, images, channels=[64])


@pytest.mark.parametrize("interpolate", ["bilinear", "nearest", None])
@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_equals_captum_layer_gradcam(model, images, interpolate, relu):
    from captum.attr import LayerAttribution, LayerGradCam

    for _, layer in (conv_layers(model)[0], conv_layers(model)[-1]):
        ours = GradCAM(model, layer, relu=relu, interpolate=interpolate).attribute(images, TARGETS)
        ref = LayerGradCam(model, layer).attribute(images, TARGETS, relu_attributions=relu)
        if interpolate is not None:
            ref = LayerAttribution.interpolate(ref, (28, 28), interpolate_mode=interpolate)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_guided_gradcam_equals_captum(model, images):
    from captum.attr import GuidedGradCam

    layer = conv_layers(model)[-1][1]
    ours = GuidedGradCAM(model, layer).attribute(images, TARGETS)
    ref = GuidedGradCam(model, layer).attribute(images, TARGETS, interpolate_mode="bilinear")
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_guided_gradcam_is_guided_backprop_times_gradcam(model, images):
    layer = conv_layers(model)[-1][1]
    expect = GuidedBackprop(model).attribute(images, TARGETS) * GradCAM(model, layer).attribute(images, TARGETS)
    torch.testing.assert_close(GuidedGradCAM(model, layer).attribute(images, TARGETS), expect, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["GradCAM", "HiResCAM"])
def test_gradcam_equals_pytorch_grad_cam_after_its_normalization(model, images, name):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours_cls, ref_cls = {"GradCAM": (GradCAM, pytorch_grad_cam.GradCAM),
                         "HiResCAM": (HiResCAM, pytorch_grad_cam.HiResCAM)}[name]
    for _, layer in (conv_layers(model)[0], conv_layers(model)[-1]):
        cam = ours_cls(model, layer, relu=True, interpolate="bilinear").attribute(images, TARGETS)
        # pytorch-grad-cam min-max normalizes twice (per layer, then after averaging layers), each time with
        # +1e-7 in the denominator; with the small CAM ranges of a random model that eps shows at 1e-4.
        ours = minmax_per_image(minmax_per_image(cam))
        ref_model = copy.deepcopy(model)  # pytorch-grad-cam calls eval() and fills .grad: keep ours clean
        ref_layer = dict(ref_model.named_modules())[[n for n, m in model.named_modules() if m is layer][0]]
        with ref_cls(model=ref_model, target_layers=[ref_layer]) as cam:
            ref = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in TARGETS])
        np.testing.assert_allclose(ours[:, 0].numpy(), ref, atol=1e-5)


# --------------------------------------------------------------------------- exact values


def test_gradcam_exact_on_a_linear_head():
    """A one-conv model with a linear GAP head: α_k = w_ck / (h·w), so L^c = Σ_k w_ck A^k / (h·w)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    head = nn.Linear(3, 2)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    x = torch.randn(2, 1, 5, 5)
    cam = GradCAM(model, conv, relu=False, interpolate=None).attribute(x, target=[1, 0])
    with torch.no_grad():
        a = conv(x)
        expect = torch.stack([(head.weight[c][:, None, None] * a[i]).sum(0) / 25 for i, c in enumerate([1, 0])])
    torch.testing.assert_close(cam[:, 0], expect, atol=1e-6, rtol=0)
    hires = HiResCAM(model, conv, relu=False, interpolate=None).attribute(x, target=[1, 0])  # ∂y/∂A = w_ck/25
    torch.testing.assert_close(hires[:, 0], expect, atol=1e-6, rtol=0)


def _p1_head(head: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = parse(ModelConfig, {"name": "p1_cnn", "widths": [8, 6], "kernel_sizes": [5, 3], "head": head,
                              "hidden": 0 if head == "gap" else 16}, "model")
    return build_model(cfg, in_channels=1, num_classes=10, image_size=28).eval()


def test_gap_head_gradcam_is_hirescam_is_cam(images):
    """Head "gap": y^c = Σ_k w_ck · mean_ij F^k_ij with F = pool2's output (7×7), so ∂y^c/∂F^k_ij = w_ck/49 at
    every position: at F, Grad-CAM = HiResCAM = CAM / 49 (Zhou et al. 2016).

    One layer down (relu2's maps A, 14×14, before the 2×2 max-pool) the gradient is w_ck/49 at each window's
    maximum (its switch) and 0 elsewhere, one switch per window: Grad-CAM's α_k = w_ck/196, i.e. Grad-CAM is
    CAM of A / 196, while HiResCAM keeps A at the switches only: Σ_k w_ck A^k s^k / 49.
    """
    model = _p1_head("gap")
    f = model.features
    with torch.no_grad():
        a = f[: list(dict(f.named_children())).index("relu2") + 1](images)  # [4, 6, 14, 14]
        pooled, switch = torch.nn.functional.max_pool2d(a, 2, return_indices=True)
    w = model.classifier.fc.weight.detach()[TARGETS][:, :, None, None]  # w_ck: [4, 6, 1, 1]
    at_f = (w * pooled).sum(1, keepdim=True) / 49
    for cls in (GradCAM, HiResCAM):
        torch.testing.assert_close(cls(model, f.pool2, relu=False, interpolate=None).attribute(images, TARGETS), at_f,
                                   atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(GradCAM(model, f.pool2).attribute(images, TARGETS),
                               HiResCAM(model, f.pool2).attribute(images, TARGETS), atol=1e-6, rtol=1e-5)
    s = torch.zeros_like(a).flatten(2).scatter_(2, switch.flatten(2), 1.0).view_as(a)  # s^k: 1 at the switches
    torch.testing.assert_close(GradCAM(model, f.relu2, relu=False, interpolate=None).attribute(images, TARGETS),
                               (w * a).sum(1, keepdim=True) / 196, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(HiResCAM(model, f.relu2, relu=False, interpolate=None).attribute(images, TARGETS),
                               (w * a * s).sum(1, keepdim=True) / 49, atol=1e-6, rtol=1e-5)


def test_fc_head_gradcam_and_hirescam_rank_pixels_differently(images):
    """Head "fc": ∂y^c/∂F changes sign across positions, so Grad-CAM's average and HiResCAM's product differ."""
    from cnnvis.attribution.sanity import spearman_rows

    model = _p1_head("fc")
    for layer in (model.features.pool2, model.features.relu2):
        gc = GradCAM(model, layer, relu=False, interpolate=None).attribute(images, TARGETS)
        hr = HiResCAM(model, layer, relu=False, interpolate=None).attribute(images, TARGETS)
        assert spearman_rows(gc, hr).mean() < 0.5


def test_p1_cnn_heads():
    fc, gap = build_model(ModelConfig(), in_channels=1, num_classes=10, image_size=28), _p1_head("gap")
    assert [(k, tuple(v.shape)) for k, v in fc.state_dict().items()] == [  # the "fc" checkpoints' layout
        ("features.conv1.weight", (32, 1, 3, 3)), ("features.conv1.bias", (32,)),
        ("features.conv2.weight", (64, 32, 3, 3)), ("features.conv2.bias", (64,)),
        ("classifier.fc1.weight", (128, 64 * 7 * 7)), ("classifier.fc1.bias", (128,)),
        ("classifier.fc.weight", (10, 128)), ("classifier.fc.bias", (10,))]
    assert [n for n, _ in gap.classifier.named_children()] == ["gap", "flatten", "fc"]
    assert gap.classifier.fc.weight.shape == (10, 6)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(gap(x), gap.classifier.fc(gap.features(x).mean((2, 3))))
    assert parse(ModelConfig, {"name": "p1_cnn"}, "model").head == "fc"  # checkpoints without the key
    with pytest.raises(ConfigError, match="hidden"):
        parse(ModelConfig, {"name": "p1_cnn", "head": "gap"}, "model")
    with pytest.raises(ConfigError, match="head"):
        parse(ModelConfig, {"name": "p1_cnn", "head": "max"}, "model")


def test_deconvnet_exact_on_conv_relu_pool():
    """conv(1→1, 1×1, weight 2) → ReLU → 2×2 max-pool: the projection puts 2·signal at each switch."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(2.0)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2)).eval()
    x = torch.tensor([[[[1.0, -3.0], [0.5, 0.0]]]])  # switch at (0,0); pooled activation 2
    proj = project_feature_maps(model, model[2], x)
    expect = torch.zeros(1, 1, 1, 2, 2)
    expect[0, 0, 0, 0, 0] = 2.0 * 2.0  # signal A = 2 routed to the switch, × transposed filter 2
    torch.testing.assert_close(proj, expect)
    # negative signals are cut by the ReLU rule even where the forward input was positive
    proj_conv = project_feature_maps(model, conv, torch.tensor([[[[1.0, -3.0], [0.5, 0.0]]]]))
    torch.testing.assert_close(proj_conv[0, 0, 0], torch.tensor([[4.0, -12.0], [2.0, 0.0]]))


# --------------------------------------------------------------------------- contract


def _make(name: str, model: nn.Module) -> object:
    if name in ("gradcam", "guided_gradcam", "hirescam"):
        return METHODS[name](model, conv_layers(model)[-1][1])
    return METHODS[name](model)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_contract(model, images, name):
    model.train()  # the method must switch to eval inside and restore train afterwards
    for p in list(model.parameters())[:2]:
        p.requires_grad_(False)
    before = _snapshot(model)
    try:
        method = _make(name, model)
        out = method.attribute(images, target=TARGETS)
        out_int = method.attribute(images, target=5)
        out_pred = method.attribute(images)
        _assert_unchanged(model, before)
        channels = 1 if name in ("gradcam", "hirescam") else images.shape[1]
        for o in (out, out_int, out_pred):
            assert o.shape == (4, channels, 28, 28)
            assert torch.isfinite(o).all()
            assert not o.requires_grad
        assert not torch.allclose(out[0], out_int[0])  # image 0: target 3 vs 5 give different maps
        # per-image targets: image i attributed alone to its own target gives the same map
        one = method.attribute(images[2:3], target=int(TARGETS[2]))
        torch.testing.assert_close(one[0], out[2], atol=ATOL, rtol=1e-4)
        with pytest.raises(ValueError):
            method.attribute(images, target=[1, 2])
        with pytest.raises(ValueError):
            method.attribute(images, target=10)
        _assert_unchanged(model, before)
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_batches_give_the_maps_of_one_pass(model, name, monkeypatch):
    """``batch_size`` splits the images (3 + 3 + 1 here); every target form follows its images."""
    x = torch.randn(7, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([3, 0, 9, 3, 1, 7, 2])
    method = _make(name, model)
    sizes = []
    real = type(method)._attribute
    monkeypatch.setattr(type(method), "_attribute", lambda self, xb, t: sizes.append(len(xb)) or real(self, xb, t))
    for target in (targets, targets.tolist(), 4, None):
        sizes.clear()
        whole = method.attribute(x, target, batch_size=None)
        assert sizes == [7]
        sizes.clear()
        split = method.attribute(x, target, batch_size=3)
        assert sizes == [3, 3, 1]
        torch.testing.assert_close(split, whole, atol=ATOL, rtol=1e-4)
    # the targets of the second batch are images 3..5's, not the first three again
    per_image = torch.cat([method.attribute(x[i : i + 1], int(targets[i])) for i in range(7)])
    torch.testing.assert_close(method.attribute(x, targets, batch_size=3), per_image, atol=ATOL, rtol=1e-4)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            method.attribute(x, targets, batch_size=bad)
    with pytest.raises(ValueError, match="7 class indices"):
        method.attribute(x, targets[:5], batch_size=3)


def test_model_unchanged_when_an_exception_is_raised(model, images):
    model.train()
    before = _snapshot(model)
    try:
        with pytest.raises(ValueError):
            project_feature_maps(model, conv_layers(model)[0][1], images, channels=[10_000])
        with pytest.raises(ValueError):
            GuidedGradCAM(model, conv_layers(model)[-1][1]).attribute(images, target=99)
        with pytest.raises(RuntimeError, match="boom"), model_state_guard(model, eval_mode=True, frozen=True), \
                relu_rule(model, "guided"), capture(conv_layers(model)[0][1]):
            raise RuntimeError("boom")
        _assert_unchanged(model, before)
    finally:
        model.eval()


def test_guard_detects_in_place_weight_change():
    model = _model("p1_cnn")
    with pytest.raises(RuntimeError, match="in place"), model_state_guard(model), torch.no_grad():
        model.features.conv1.weight.add_(1.0)


# --------------------------------------------------------------------------- faithfulness and sanity checks


def _one_pixel_model() -> nn.Module:
    """Logits (10·x[0,0,0,0], 0): only pixel (0, 0) matters."""
    lin = nn.Linear(16, 2, bias=False)
    lin.weight.data.zero_()
    lin.weight.data[0, 0] = 10.0
    return nn.Sequential(nn.Flatten(), lin).eval()


def test_deletion_insertion_known_answer():
    from cnnvis.attribution.faithfulness import deletion_insertion

    model = _one_pixel_model()
    x = torch.rand(2, 1, 4, 4) + 0.5
    x[:, 0, 0, 0] = 1.0
    p0 = torch.sigmoid(torch.tensor(10.0))  # softmax([10, 0])[0]
    good = torch.zeros(2, 4, 4)
    good[:, 0, 0] = 1.0  # pixel (0, 0) first
    bad = -good  # pixel (0, 0) last (ties among the rest keep index order)
    y = torch.zeros(2, dtype=torch.long)
    c = deletion_insertion(model, torch.cat([x[:1], x[1:]]), torch.stack([good[0], bad[1]]), y, steps=4,
                           deletion_baseline="mean", insertion_baseline="mean")
    # good map: deleting the first 4 pixels removes (0, 0) → p = 0.5 from step 1 on; bad map only at step 4
    torch.testing.assert_close(c.deletion[0], torch.tensor([p0, 0.5, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(c.deletion[1], torch.tensor([p0, p0, p0, p0, 0.5]))
    torch.testing.assert_close(c.insertion[0], torch.tensor([0.5, p0, p0, p0, p0]))
    torch.testing.assert_close(c.deletion_auc[0], (p0 / 2 + 0.5 * 3 + 0.25) / 4)
    torch.testing.assert_close(c.insertion_auc[1], (0.25 + 0.5 * 3 + p0 / 2) / 4)
    assert c.deletion_auc[0] < c.deletion_auc[1]


def test_blur_baseline_and_pixel_importance():
    from cnnvis.attribution.faithfulness import baseline_images, pixel_importance

    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    b = baseline_images(x, "blur", 1.0)
    assert b.shape == x.shape and 0 < b[0, 0, 4, 4] < 1 and abs(b.sum() - 1) < 1e-3  # mass kept, spread
    black = baseline_images(torch.rand(2, 3, 4, 4), "black", black=torch.tensor([-1.0, -2.0, -3.0]))
    assert black.shape == (2, 3, 4, 4) and (black[:, 2] == -3.0).all()
    with pytest.raises(ValueError, match="black"):
        baseline_images(x, "black")
    a = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # [1, 2, 1, 2]: channels summed first, then the sign rule
    torch.testing.assert_close(pixel_importance(a), torch.tensor([[[-2.0, -1.5]]]))
    torch.testing.assert_close(pixel_importance(a, "absolute"), torch.tensor([[[2.0, 1.5]]]))


@pytest.mark.parametrize(("sigma", "size", "kernel"), [(0.7, 28, 7), (2.0, 28, 13), (5.0, 20, 19), (5.0, 6, 5)])
def test_gaussian_blur_kernel_rule(sigma, size, kernel):
    """Kernel 2·⌈3σ⌉+1, clipped for small images (reflect padding needs pad < size); a constant image stays."""
    from scipy.ndimage import gaussian_filter

    from cnnvis.attribution.faithfulness import gaussian_blur

    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=(kernel // 2) / sigma)
    torch.testing.assert_close(gaussian_blur(x, sigma), torch.from_numpy(ref), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gaussian_blur(torch.ones(1, 1, size, size), sigma), torch.ones(1, 1, size, size))


def test_average_ranks_equal_scipy_rankdata():
    from scipy.stats import rankdata

    from cnnvis.attribution.sanity import average_ranks

    a = torch.randint(0, 5, (4, 30), generator=torch.Generator().manual_seed(0)).float()  # many ties
    np.testing.assert_array_equal(average_ranks(a).numpy(), rankdata(a.numpy(), axis=1))


def test_spearman_rows_matches_scipy_and_handles_constant_rows():
    from scipy.stats import spearmanr

    from cnnvis.attribution.sanity import spearman_rows

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 50, generator=g), torch.rand(3, 50, generator=g)
    a[1, :10] = 0.0  # ties
    r = spearman_rows(a, b)
    for i in range(2):
        assert abs(r[i] - spearmanr(a[i], b[i]).statistic) < 1e-12
    assert spearman_rows(torch.zeros(1, 5), torch.rand(1, 5))[0] == 0.0


def test_randomization_and_class_sensitivity(images):
    from cnnvis.attribution.sanity import cascading_randomization, class_sensitivity, other_classes

    model = _model("p1_cnn")
    before = _snapshot(model)
    conv2 = "features.conv2"
    facs = {"gradcam": lambda m: GradCAM(m, dict(m.named_modules())[conv2]), "saliency": lambda m: Saliency(m)}
    out = cascading_randomization(model, facs, images, TARGETS, seed=0)
    _assert_unchanged(model, before)
    assert [s.layer for s in out["saliency"]] == ["classifier.fc", "classifier.fc1", "features.conv2", "features.conv1"]
    for name in facs:  # random weights (top layer down) must decorrelate the maps; a no-op reset gives rho = 1
        assert all(-1 <= s.spearman_mean < 0.5 for s in out[name]), name
    again = cascading_randomization(model, facs, images, TARGETS, seed=0)
    assert out == again  # seeded
    other = other_classes(TARGETS, 10, seed=0)
    assert (other != TARGETS).all() and ((other >= 0) & (other < 10)).all()
    cs = class_sensitivity(model, facs, images, TARGETS, other)
    assert all(cs[name]["spearman_mean"] < 0.5 for name in facs)  # another class: other maps
    same = class_sensitivity(model, facs, images, TARGETS, TARGETS)
    assert same["saliency"]["spearman_mean"] == pytest.approx(1.0)  # same class → identical maps


# --------------------------------------------------------------------------- the gradient at the input


@pytest.mark.parametrize(("stride", "padding", "dilation", "size"), [(1, 2, 1, 28), (2, 3, 1, 29), (2, 1, 2, 17)])
def test_conv_input_grad_equals_torch(stride, padding, dilation, size):
    from cnnvis.attribution._common import conv_input_grad

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 5, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(4, 3, size, size)
    g = torch.randn_like(conv(x))
    expect = torch.nn.grad.conv2d_input(x.shape, conv.weight, g, stride, padding, dilation)
    torch.testing.assert_close(conv_input_grad(conv, g, x.shape), expect, atol=1e-5, rtol=1e-5)


class _InputSkip(nn.Module):
    """conv → ReLU → linear head, plus the image itself added to the head's input (x has two readers)."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Linear(2 * 36, 3)

    def forward(self, x):
        return self.fc((self.relu(self.conv(x)) + x).flatten(1))


@pytest.mark.parametrize("method", [Saliency, GuidedBackprop, Deconvnet])
def test_input_gradient_by_hand_only_where_the_first_conv_is_the_sole_reader(method, images, monkeypatch):
    """The hand-made last step (col2im of W^T·g) is taken for paper 1's CNN and equals autograd; with a
    second reader of the image (a skip from the input) autograd does the whole backward."""
    import cnnvis.attribution._common as common

    calls = []
    real = common.conv_input_grad
    monkeypatch.setattr(common, "conv_input_grad", lambda *a: calls.append(1) or real(*a))
    model = _model("p1_cnn")
    fast = method(model).attribute(images, TARGETS)
    assert calls
    monkeypatch.setattr(common, "_foldable", lambda _conv: False)
    torch.testing.assert_close(fast, method(model).attribute(images, TARGETS), atol=ATOL, rtol=0)
    monkeypatch.undo()
    monkeypatch.setattr(common, "conv_input_grad", lambda *a: calls.append(2) or real(*a))
    torch.manual_seed(0)
    skip, x = _InputSkip().eval(), torch.randn(2, 1, 6, 6)
    got = method(skip).attribute(x, 1)
    assert 2 not in calls
    with relu_rule(skip, method.rule):
        xr = x.clone().requires_grad_(True)
        (expect,) = torch.autograd.grad(skip(xr)[:, 1].sum(), xr)
    torch.testing.assert_close(got, expect.abs() if method is Saliency else expect, atol=ATOL, rtol=0)
