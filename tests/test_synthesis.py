"""Feature synthesis (paper 2 eq. (1)-(4)): activation maximization and inversion on tiny models."""

from __future__ import annotations

import pytest
import torch

from cnnvis import ConfigError
from cnnvis import synthesis as S
from cnnvis.config import ModelConfig, parse
from cnnvis.models import build_model

MEAN, STD = (0.3,), (0.35,)
SHAPE = (1, 12, 12)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelConfig(widths=(4, 8), kernel_sizes=(3, 3), hidden=16), in_channels=1, num_classes=3, image_size=12)
    return m.train()  # train mode on purpose: the methods must switch to eval and back


def cfg(**kw) -> S.SynthesisConfig:
    base = dict(steps=30, blur_every=0, clip_percentile=0.0, l2_decay=0.0, inversion_steps=150)
    return S.SynthesisConfig(**{**base, **kw})


def snapshot(m: torch.nn.Module) -> tuple:
    return (m.training, [p.requires_grad for p in m.parameters()], [p.detach().clone() for p in m.parameters()])


def assert_unchanged(m: torch.nn.Module, before: tuple) -> None:
    assert m.training == before[0]
    assert [p.requires_grad for p in m.parameters()] == before[1]
    assert all(torch.equal(a, b) for a, b in zip(before[2], m.parameters(), strict=True))
    assert all(p.grad is None for p in m.parameters())
    assert all(not mod._forward_hooks for mod in m.modules())


def test_maximize_raises_every_class_logit_and_leaves_model_unchanged(model):
    before = snapshot(model)
    r = S.maximize(model, torch.arange(3), cfg(), image_shape=SHAPE, mean=MEAN, std=STD)
    assert_unchanged(model, before)
    assert r.images.shape == (3, *SHAPE) and r.history.shape == (31, 3)
    assert torch.all(r.final > r.initial + 0.03)  # untrained tiny model: logits are small
    lo, hi = S.pixel_bounds(MEAN, STD)
    assert torch.all(r.images >= lo - 1e-6) and torch.all(r.images <= hi + 1e-6)  # pixel range clamping
    with torch.no_grad():  # the reported objective is the model's logit of the returned image
        logits = model.eval()(r.images)
    model.train()
    assert torch.allclose(logits[torch.arange(3), torch.arange(3)], r.final, atol=1e-5)


def test_maximize_conv_channels_batched_equals_one_by_one(model):
    c = cfg(steps=10, clip_percentile=50.0, blur_every=3, l2_decay=0.05)
    both = S.maximize(model, torch.tensor([1, 5]), c, image_shape=SHAPE, mean=MEAN, std=STD, layer="last_conv")
    assert torch.all(both.final > both.initial)
    # seeded: the same call gives the same images; image 0 of a batch does not depend on the other target
    again = S.maximize(model, torch.tensor([1, 5]), c, image_shape=SHAPE, mean=MEAN, std=STD, layer="last_conv")
    assert torch.equal(both.images, again.images)
    other = S.maximize(model, torch.tensor([1, 2]), c, image_shape=SHAPE, mean=MEAN, std=STD, layer="last_conv")
    assert torch.allclose(both.images[0], other.images[0], atol=1e-5)


def test_l2_decay_lowers_the_image_norm(model):
    free = S.maximize(model, torch.arange(3), cfg(), image_shape=SHAPE, mean=MEAN, std=STD)
    decayed = S.maximize(model, torch.arange(3), cfg(l2_decay=0.2), image_shape=SHAPE, mean=MEAN, std=STD)
    assert torch.all(decayed.images.flatten(1).norm(dim=1) < 0.7 * free.images.flatten(1).norm(dim=1))


def test_blur_lowers_total_variation(model):
    sharp = S.maximize(model, torch.arange(3), cfg(), image_shape=SHAPE, mean=MEAN, std=STD)
    smooth = S.maximize(model, torch.arange(3), cfg(blur_every=1, blur_sigma=1.0), image_shape=SHAPE, mean=MEAN, std=STD)
    assert torch.all(S.total_variation(smooth.images) < S.total_variation(sharp.images))


@pytest.mark.parametrize("percentile", [50.0, 75.0, 90.0])
def test_clip_gradient_keeps_only_the_top_fraction(percentile):
    g = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    kept = S.clip_gradient(g, percentile)
    norm = g.norm(dim=1)  # pixel magnitude over channels
    mask = kept.abs().sum(1) > 0
    for i in range(4):
        frac = mask[i].float().mean().item()
        assert abs(frac - (1 - percentile / 100)) <= 0.011  # 100 pixels: at most one tie of rounding
        assert norm[i][mask[i]].min() >= norm[i][~mask[i]].max()  # the kept pixels are the largest
    assert torch.equal(kept[mask.unsqueeze(1).expand_as(g)], g[mask.unsqueeze(1).expand_as(g)])  # kept unchanged
    assert torch.equal(S.clip_gradient(g, 0.0), g)


def test_clipping_changes_fewer_pixels_per_step(model):
    one = S.maximize(model, torch.arange(3), cfg(steps=1, clip_percentile=80.0, init_std=0.0), image_shape=SHAPE,
                     mean=MEAN, std=STD)
    changed = (one.images != 0).flatten(1).float().mean(1)
    assert torch.all(changed <= 0.2 + 1 / 144)  # 144 pixels: the quantile rounds up by at most one


@pytest.mark.parametrize("layer,bound", [("first_conv", 0.1), ("last_conv", 0.25), ("logits", 0.1)])
def test_inversion_lowers_relative_feature_error(model, layer, bound):
    x0 = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3)).clamp(-0.85, 2.0)
    before = snapshot(model)
    inv = S.invert(model, x0, layer, cfg(tv_weight=0.001, alpha_weight=0.0), mean=MEAN, std=STD)
    assert_unchanged(model, before)
    assert inv.history.shape == (151, 2)
    assert torch.all(inv.rel_error < bound), inv.rel_error
    assert torch.all(inv.history[0] > 2 * inv.rel_error)  # at least halved from the random start
    # monotonic-ish: each tenth of the run ends no higher than 1.05 × the previous tenth
    tenths = inv.history[::15]
    assert torch.all(tenths[1:] <= tenths[:-1] * 1.05 + 1e-3)
    assert torch.allclose(S.relative_error(model, inv.images, x0, layer), inv.rel_error, atol=1e-5)


def test_regularizers_values():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    # TV_2: pixel pairs (u, v) differences on the 2×2 top-left grid, mean of du² + dv²
    assert S.total_variation(x, 2.0).item() == pytest.approx((0 + 1 + 1 + 2) / 4)
    assert S.alpha_norm(x, 6.0).item() == pytest.approx(1 / 9)


def test_config_validation():
    with pytest.raises(ConfigError, match="synthesis.clip_percentile"):
        parse(S.SynthesisConfig, {"clip_percentile": 100}, "synthesis")
    with pytest.raises(ConfigError, match="synthesis.nope"):
        parse(S.SynthesisConfig, {"nope": 1}, "synthesis")


def test_unknown_layer_is_one_clear_error(model):
    with pytest.raises(ConfigError, match="no such module"):
        S.invert(model, torch.zeros(1, *SHAPE), "features.conv9", cfg(), mean=MEAN, std=STD)
