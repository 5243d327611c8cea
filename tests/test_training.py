"""Trainer: learns, is deterministic, resumes bit-identically; augmentation is exact."""

from __future__ import annotations

import copy
import dataclasses

import torch

from cnnvis.config import HardwareConfig, ModelConfig, TrainConfig
from cnnvis.models import build_model
from cnnvis.training import augment, classification_metrics, predict_logits, still_improving, train

HW = HardwareConfig(threads=1)
CFG = TrainConfig(epochs=3, batch_size=64, lr=0.05, val_size=100, augment="flip_crop", seed=0)


def fresh_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(widths=(4, 8), kernel_sizes=(3, 3), hidden=16), in_channels=1, num_classes=10, image_size=28)


def test_loss_decreases_and_learns(synthetic_data):
    model = fresh_model()
    result = train(model, synthetic_data, CFG, HW)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.7, losses
    logits = predict_logits(model, synthetic_data.test_x, synthetic_data.mean, synthetic_data.std)
    assert classification_metrics(logits, synthetic_data.test_y, 10)["top1"] > 50.0  # chance is 10 %
    assert not model.training


def test_deterministic(synthetic_data):
    a, b = fresh_model(), fresh_model()
    ra, rb = train(a, synthetic_data, CFG, HW), train(b, synthetic_data, CFG, HW)
    assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_resume_equals_uninterrupted(synthetic_data):
    full = fresh_model()
    train(full, synthetic_data, CFG, HW)
    states = []
    killed = fresh_model()
    try:
        def die_after_first(state):
            states.append(copy.deepcopy(state))
            raise KeyboardInterrupt

        train(killed, synthetic_data, CFG, HW, on_epoch_end=die_after_first)
    except KeyboardInterrupt:
        pass
    assert states[0]["epoch"] == 1
    resumed = fresh_model(seed=123)  # different init: everything must come from the resume state
    train(resumed, synthetic_data, CFG, HW, resume=copy.deepcopy(states[0]))
    for pa, pb in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_augment_crop_is_a_shifted_window():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    cfg = dataclasses.replace(CFG, augment="crop", crop_padding=2)
    out = augment(x, cfg, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output is some 6×6 window of the padded image
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_augment_flip():
    x = torch.randn(64, 1, 5, 5)
    out = augment(x, dataclasses.replace(CFG, augment="flip"), torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 10 < sum(flipped) < 54


def test_metrics_top5_and_per_class():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [0, 5, 1, 1, 1, 1]])
    labels = torch.tensor([0, 0, 1])
    m = classification_metrics(logits, labels, 6)
    assert m["top1"] == round(200 / 3, 3) and m["top5"] == round(200 / 3, 3)
    assert m["per_class_top1"][:2] == [50.0, 100.0] and m["per_class_top1"][2] is None


def test_still_improving():
    assert still_improving([{"val_top1": 80}, {"val_top1": 85}, {"val_top1": 88}])
    assert not still_improving([{"val_top1": 80}, {"val_top1": 90}, {"val_top1": 90.05}, {"val_top1": 90.0}])


def test_onecycle_survives_very_short_runs():
    """A run of a handful of steps (ci subsets, brief search trainings) must not crash the schedule."""
    from cnnvis.training import make_scheduler

    for steps in range(1, 12):
        model = fresh_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = make_scheduler(opt, CFG, steps)
        used = []
        for _ in range(steps):
            used.append(opt.param_groups[0]["lr"])  # the LR each optimizer step actually uses
            opt.step()
            sched.step()
        assert all(0 <= lr <= 0.1 + 1e-12 for lr in used), used


def test_on_step_counts_every_optimizer_step(synthetic_data):
    import math

    seen: list[int] = []
    train(fresh_model(), synthetic_data, CFG, HW, on_step=seen.append)
    per_epoch = math.ceil(len(synthetic_data.train_y) / CFG.batch_size)
    assert seen == list(range(1, CFG.epochs * per_epoch + 1))
