"""Filter importance (paper 3 §3.2): per-sample gradients exact, model untouched, finite differences agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnvis import ConfigError
from cnnvis.config import ModelConfig
from cnnvis.importance import FilterImportance, check_gradients, compute_importance
from cnnvis.models import build_model


def p1(batchnorm: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model(ModelConfig(widths=(4, 6), kernel_sizes=(3, 5), hidden=16, batchnorm=batchnorm),
                    in_channels=2, num_classes=5, image_size=12)
    for mod in m.modules():  # non-trivial BN statistics, so eval-mode BN is not the identity
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.3)
    return m.eval()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelConfig(name="resnet18", width_multiplier=0.0625), in_channels=1, num_classes=4, image_size=8)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)  # undo zero-init of the last BN so every conv matters
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def loop_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str) -> torch.Tensor:
    """The reference: one autograd.grad per image."""
    w = dict(model.named_modules())[layer].weight
    return torch.stack([torch.autograd.grad(model(x[i : i + 1])[0, target[i]], w)[0] for i in range(len(x))])


@pytest.mark.parametrize("make", [p1, lambda: p1(batchnorm=True), resnet], ids=["p1", "p1_bn", "resnet18"])
def test_per_sample_gradients_equal_a_loop_of_one_backward_per_image(make):
    model = make()
    in_ch = [m for m in model.modules() if isinstance(m, nn.Conv2d)][0].in_channels
    size = 12 if in_ch == 2 else 8
    x = torch.randn(5, in_ch, size, size, dtype=torch.float64)
    model = model.double()
    c = model(x[:1]).shape[1]
    y = torch.arange(5) % c
    fi = FilterImportance(model)
    grads, imp = fi.gradients(x, y), fi.attribute(x, y)
    logits, every = fi.attribute_all(x)
    assert torch.allclose(logits, model(x))
    for name in fi.layers:
        ref = loop_gradients(model, x, y, name)
        torch.testing.assert_close(grads[name], ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(imp[name], ref.flatten(2).norm(dim=2), rtol=1e-10, atol=1e-12)
        for k in range(c):  # every class at once = each class alone
            ref_k = loop_gradients(model, x, torch.full((5,), k), name).flatten(2).norm(dim=2)
            torch.testing.assert_close(every[name][:, k], ref_k, rtol=1e-9, atol=1e-12)


def test_equal_to_torch_func_vmap_grad():
    from torch.func import functional_call, grad, vmap

    model = p1().double()
    x = torch.randn(6, 2, 12, 12, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def score(p, xi, onehot):
        return (functional_call(model, p, (xi[None],))[0] * onehot).sum()  # y_target (indexing is not vmap-safe)

    ref = vmap(grad(score), in_dims=(None, 0, 0))(params, x, torch.nn.functional.one_hot(y, 5).double())
    ours = FilterImportance(model).gradients(x, y)
    for name, g in ours.items():
        torch.testing.assert_close(g, ref[f"{name}.weight"], rtol=1e-10, atol=1e-12)


def test_direct_and_gram_forms_agree():
    model = p1().double()
    x = torch.randn(4, 2, 12, 12, dtype=torch.float64)
    fi = FilterImportance(model)
    _, u, g = fi._output_grads(x, lambda c: torch.arange(c)[:, None].expand(c, 4))
    for name in fi.layers:
        torch.testing.assert_close(fi._norms(name, u[name], g[name], "gram"), fi._norms(name, u[name], g[name], "direct"),
                                   rtol=1e-9, atol=1e-12)


def test_grouped_conv_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, groups=2),
                          nn.Flatten(), nn.LazyLinear(3)).double()
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    model(x)
    y = torch.tensor([0, 1, 2])
    ours = FilterImportance(model).gradients(x, y)
    for name in ("0", "2"):
        torch.testing.assert_close(ours[name], loop_gradients(model, x, y, name), rtol=1e-10, atol=1e-12)


def test_model_unchanged_by_attribution():
    model = p1(batchnorm=True)
    model.train()  # a training-mode model: attribution must use eval mode and give it back in train mode
    model.features.conv1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    x = torch.randn(3, 2, 12, 12)
    fi = FilterImportance(model)
    fi.attribute_all(x)
    fi.gradients(x, 1)
    check_gradients(model, x[:1], 1, weights_per_layer=2, filters_per_layer=2)
    assert model.training
    assert all(m.training for m in model.modules())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("make", [p1, lambda: p1(batchnorm=True), resnet], ids=["p1", "p1_bn", "resnet18"])
def test_finite_differences_float64_below_1e_6(make):
    model = make()
    in_ch = [m for m in model.modules() if isinstance(m, nn.Conv2d)][0].in_channels
    size = 12 if in_ch == 2 else 8
    x = torch.randn(2, in_ch, size, size)
    check = check_gradients(model, x, torch.tensor([1, 3]), weights_per_layer=8, filters_per_layer=4, seed=1)
    assert set(check.weights) == {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert check.max_rel_error < 1e-6, (check.weights, check.directional)
    # every layer compared somewhere (deep 1×1 layers of the tiny ResNet may give some weights exact-zero gradients)
    assert all(v["filter_image_pairs"] > 0 for v in check.checked.values())
    assert sum(v["weight_image_pairs"] for v in check.checked.values()) >= 4 * len(check.checked)


def test_finite_difference_check_detects_a_wrong_gradient(monkeypatch):
    """The check is not vacuous: a gradient off by 1 % fails it by ~1e-2."""
    model = p1()
    real = FilterImportance.gradients
    monkeypatch.setattr(FilterImportance, "gradients", lambda self, x, t: {k: 1.01 * v for k, v in real(self, x, t).items()})
    check = check_gradients(model, torch.randn(2, 2, 12, 12), 0, weights_per_layer=4, filters_per_layer=2)
    assert 5e-3 < check.max_rel_error < 2e-2


def test_paper3_float32_step_1e_9_is_below_float32_spacing():
    """Why paper 3's check failed: w ± 1e-9 is w itself in float32 once |w| > ~0.02."""
    w = torch.tensor([0.05, 0.3], dtype=torch.float32)
    assert torch.equal(w + 1e-9, w)
    assert not torch.equal(w.double() + 1e-4 * w.double().abs().clamp_min(1), w.double())


def test_aggregation_matches_per_input_importances():
    model = p1()
    torch.manual_seed(3)
    x = torch.randn(30, 2, 12, 12)
    y = torch.arange(30) % 5
    stats = compute_importance(model, x, y, batch_size=7)
    logits, every = FilterImportance(model).attribute_all(x)
    pred = logits.argmax(1)
    assert torch.equal(stats.predictions, pred)
    for name in stats.layers:
        v = every[name]  # N×C×O
        for c in range(5):
            sel = y == c
            torch.testing.assert_close(stats.relevance()[name][c], v[sel, c].mean(0), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(stats.other_class()[name][c], v[~sel, c].mean(0), rtol=1e-5, atol=1e-7)
            ok = sel & (pred == y)
            if ok.any():
                torch.testing.assert_close(stats.mean(correct=True)[name][c, c], v[ok, c].mean(0), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(stats.overall()[name], stats.relevance()[name].mean(0))
        torch.testing.assert_close(stats.own[name], v[torch.arange(30), y])


def test_bad_layer_is_one_clear_error():
    with pytest.raises(ConfigError, match="not a conv layer.*features.conv1"):
        FilterImportance(p1(), ["features.fc"])
