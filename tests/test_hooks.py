"""ReLU rules on models the pipeline does not build: torchvision's ResNet-18 (in-place ReLUs, one ReLU module
called twice per block) and models with functional ReLUs; the model's state after every call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnvis.attribution import Deconvnet, GradCAM, GuidedBackprop, GuidedGradCAM, Saliency
from cnnvis.hooks import _HOOK_DICTS, model_state_guard, relu_rule

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns on every call that it sets hooks
ATOL = 1e-5


def _randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random BN affine parameters and running statistics (torchvision's init, 1/0/0/1, would hide paths)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval()


@pytest.fixture(scope="module")
def resnet18():
    import torchvision

    torch.manual_seed(0)
    return _randomize_bn(torchvision.models.resnet18(weights=None, num_classes=10))


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))


TARGETS = torch.tensor([3, 0, 9])


def _state(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "inplace": [m.inplace for m in model.modules() if hasattr(m, "inplace")],
        "hooks": [len(getattr(m, d)) for m in model.modules() for d in _HOOK_DICTS if hasattr(m, d)],
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [p.grad for p in model.parameters()],
        "modes_stack": torch._C._len_torch_function_stack(),
    }


def _assert_same_state(model: nn.Module, before: dict) -> None:
    after = _state(model)
    for key in ("modes", "flags", "inplace", "hooks", "grads", "modes_stack"):
        assert after[key] == before[key], key
    for k, v in before["weights"].items():
        assert torch.equal(after["weights"][k], v), k


# --------------------------------------------------------------------------- torchvision ResNet-18


def test_torchvision_resnet18_is_the_case_of_the_report(resnet18):
    """Every ReLU is in place and each BasicBlock calls its one ``relu`` module twice (the structure under test)."""
    relus = [m for m in resnet18.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    calls = []
    handle = resnet18.layer1[0].relu.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            resnet18(torch.zeros(1, 3, 32, 32))
    finally:
        handle.remove()
    assert len(calls) == 2


def test_torchvision_resnet18_rules_equal_captum(resnet18, images):
    from captum.attr import Deconvolution
    from captum.attr import GuidedBackprop as CGuidedBackprop
    from captum.attr import GuidedGradCam as CGuidedGradCam
    from captum.attr import Saliency as CSaliency

    before = _state(resnet18)
    pairs = [
        ("guided", GuidedBackprop(resnet18).attribute(images, TARGETS), CGuidedBackprop(resnet18).attribute(images, TARGETS)),
        ("deconvnet", Deconvnet(resnet18).attribute(images, TARGETS), Deconvolution(resnet18).attribute(images, TARGETS)),
        ("saliency", Saliency(resnet18).attribute(images, TARGETS), CSaliency(resnet18).attribute(images, TARGETS)),
    ]
    for layer in (resnet18.layer4, resnet18.layer3[1].conv2):
        pairs.append(("guided_gradcam", GuidedGradCAM(resnet18, layer).attribute(images, TARGETS),
                      CGuidedGradCam(resnet18, layer).attribute(images, TARGETS, interpolate_mode="bilinear")))
    _assert_same_state(resnet18, before)
    for name, ours, ref in pairs:
        assert ref.abs().max() > 1e-3, name
        ref = ref.detach()
        torch.testing.assert_close(ours, ref, atol=ATOL * float(ref.abs().max()), rtol=0, msg=name)
    # the rules matter on this model: guided ≠ deconvnet ≠ the plain gradient
    assert not torch.allclose(pairs[0][1], pairs[1][1]) and not torch.allclose(pairs[0][1].abs(), pairs[2][1])


def test_gradcam_on_torchvision_resnet18_equals_pytorch_grad_cam(resnet18, images):
    import copy

    import numpy as np
    from pytorch_grad_cam import GradCAM as PGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cnnvis.attribution import minmax_per_image

    ours = minmax_per_image(minmax_per_image(GradCAM(resnet18, resnet18.layer4).attribute(images, TARGETS)))
    ref_model = copy.deepcopy(resnet18)  # pytorch-grad-cam fills .grad
    with PGradCAM(model=ref_model, target_layers=[ref_model.layer4]) as cam:
        ref = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in TARGETS])
    np.testing.assert_allclose(ours[:, 0].numpy(), ref, atol=1e-5)


# --------------------------------------------------------------------------- one ReLU module called twice


class _Twice(nn.Module):
    """conv → relu → conv → (+ skip) → relu, with ``shared`` the same in-place module both times (or two)."""

    def __init__(self, shared: bool):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.r1 = nn.ReLU(inplace=shared)
        self.r2 = self.r1 if shared else nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.r1(self.c1(x))
        return self.fc(self.r2(self.c2(y) + y).mean((2, 3)))


@pytest.mark.parametrize("method", [GuidedBackprop, Deconvnet])
def test_a_relu_module_called_twice_gets_the_rule_on_each_call(method):
    torch.manual_seed(0)
    shared = _Twice(shared=True).eval()
    separate = _Twice(shared=False).eval()
    separate.load_state_dict(shared.state_dict())
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([0, 2])
    got = method(shared).attribute(x, t)
    torch.testing.assert_close(got, method(separate).attribute(x, t), atol=1e-6, rtol=0)
    assert not torch.allclose(got, Saliency(separate).attribute(x, t, abs=False))
    assert shared.r1.inplace


# --------------------------------------------------------------------------- functional ReLUs


class _Net(nn.Module):
    """A small CNN whose ReLUs are nn.ReLU modules, or every functional form (out of place and in place)."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        if not functional:
            self.relus = nn.ModuleList([nn.ReLU() for _ in range(5)])

    def forward(self, x):
        if not self.functional:
            r = self.relus
            x = r[0](self.c1(x))
            y = r[1](self.c2(x))
            z = r[2](self.c3(y) + y)
            z = r[3](self.c3(z))
            return self.fc(r[4](z.mean((2, 3))))
        x = F.relu(self.c1(x))
        y = torch.relu(self.c2(x))
        z = self.c3(y) + y
        z.relu_()  # in place, result unused: the caller's tensor must carry the rule
        z = F.relu(self.c3(z), inplace=True)
        return self.fc(z.mean((2, 3)).relu())


@pytest.fixture(scope="module")
def twins():
    torch.manual_seed(0)
    functional, modules = _Net(True).eval(), _Net(False).eval()
    modules.load_state_dict(functional.state_dict())
    return functional, modules


@pytest.mark.parametrize("make", [GuidedBackprop, Deconvnet, lambda m: GuidedGradCAM(m, m.c3)],
                         ids=["guided", "deconvnet", "guided_gradcam"])
def test_functional_relus_get_the_rule_like_modules(twins, make):
    functional, modules = twins
    x, t = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 3])
    before = _state(functional)
    got = make(functional).attribute(x, t)
    _assert_same_state(functional, before)
    torch.testing.assert_close(got, make(modules).attribute(x, t), atol=1e-6, rtol=0)
    assert not torch.allclose(got, Saliency(functional).attribute(x, t, abs=False))


def test_functional_relu_model_equals_captum_on_its_module_twin(twins):
    """Captum hooks nn.ReLU modules only: it equals ours on the twin, and misses the functional ReLUs."""
    from captum.attr import GuidedBackprop as CGuidedBackprop

    functional, modules = twins
    x, t = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4)), torch.tensor([1, 4])
    ours = GuidedBackprop(functional).attribute(x, t)
    torch.testing.assert_close(ours, CGuidedBackprop(modules).attribute(x, t), atol=1e-6, rtol=0)
    assert (ours - CGuidedBackprop(functional).attribute(x, t)).abs().max() > 1e-4


def test_functional_rule_applies_only_during_the_models_forward(twins):
    functional, _ = twins
    x = torch.randn(1, 3, 12, 12)
    with relu_rule(functional, "guided"):
        t = torch.randn(4, requires_grad=True)
        assert type(torch.relu(t).grad_fn).__name__ == "ReluBackward0"  # user code in the block: untouched
        assert torch._C._len_torch_function_stack() == 0
        functional(x.requires_grad_(True))
        assert torch._C._len_torch_function_stack() == 0
        with pytest.raises(RuntimeError):
            functional(torch.randn(1, 2, 12, 12))  # wrong channels: the forward raises inside
        assert torch._C._len_torch_function_stack() == 0
    xr = x.detach().requires_grad_(True)
    (after,) = torch.autograd.grad(functional(xr)[:, 0].sum(), xr)  # after the block: the plain gradient again
    torch.testing.assert_close(after, Saliency(functional).attribute(x, 0, abs=False), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- the model's state


def test_inplace_flags_switched_inside_and_restored_after(resnet18, images):
    relus = [m for m in resnet18.modules() if isinstance(m, nn.ReLU)]
    resnet18.train()
    before = _state(resnet18)
    try:
        with model_state_guard(resnet18, eval_mode=True, frozen=True):
            assert not any(m.inplace for m in relus)
        with relu_rule(resnet18, "guided"):
            assert not any(m.inplace for m in relus)
        _assert_same_state(resnet18, before)
        with pytest.raises(RuntimeError, match="boom"), relu_rule(resnet18, "deconvnet"):
            raise RuntimeError("boom")
        with pytest.raises(ValueError, match="class indices"):
            GuidedGradCAM(resnet18, resnet18.layer4).attribute(images, target=99)
        _assert_same_state(resnet18, before)
        assert all(m.inplace for m in relus)
    finally:
        resnet18.eval()


def test_an_inplace_relu_does_not_overwrite_the_captured_layer():
    """Grad-CAM of a conv followed by an in-place ReLU (VGG's pattern) uses the conv's own output."""
    from captum.attr import LayerAttribution, LayerGradCam

    torch.manual_seed(0)

    def net(inplace: bool) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace), nn.Conv2d(6, 6, 3, padding=1),
                             nn.ReLU(inplace), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()

    inplace, plain = net(True), net(False)
    plain.load_state_dict(inplace.state_dict())
    x, t = torch.randn(2, 3, 10, 10), torch.tensor([1, 2])
    for cam in (GradCAM, GuidedGradCAM):
        torch.testing.assert_close(cam(inplace, inplace[0]).attribute(x, t), cam(plain, plain[0]).attribute(x, t),
                                   atol=1e-6, rtol=0)
    ref = LayerAttribution.interpolate(LayerGradCam(plain, plain[0]).attribute(x, t, relu_attributions=True), (10, 10),
                                       interpolate_mode="bilinear")
    torch.testing.assert_close(GradCAM(inplace, inplace[0]).attribute(x, t), ref, atol=1e-6, rtol=0)
