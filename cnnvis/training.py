"""Training and evaluation on in-memory tensors.

No DataLoader: the whole dataset is a uint8 tensor, batches are index slices,
augmentation is vectorized per batch. Every epoch reseeds its own RNG from
(seed, epoch), so a run resumed from an epoch checkpoint is bit-identical to
one that never stopped. The library never saves: ``on_epoch_end`` hands the
resumable state to the caller.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis.config import HardwareConfig, TrainConfig
from cnnvis.data import TensorData
from cnnvis.hardware import resolve_device
from cnnvis.hooks import eval_mode

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]
PRENORMALIZE_BYTES = 1 << 30


def _no_progress(iterable: Iterable, **_: Any) -> Iterable:
    return iterable


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- batches


def normalize_batch(xb_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (xb_u8 / 255.0 - mean) / std  # true division: float32 from uint8, never in place


def augment(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Random crop and/or horizontal flip, per image, on normalized N×C×H×W (pads with 0 = the mean pixel)."""
    n, c, h, w = x.shape
    if "crop" in cfg.augment and cfg.crop_padding > 0:
        p = cfg.crop_padding
        padded = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (n,), generator=g)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=g)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if "flip" in cfg.augment:
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, x_u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                   *, batch_size: int = 1000, device: torch.device | None = None,
                   fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits (float32, CPU) for uint8 N×C×H×W images, in eval mode; the model's mode is restored.

    ``fn``: what to compute from a normalized batch instead of ``model(batch)`` (e.g. ``model.class_maps``).
    """
    device = device or next(model.parameters()).device
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    fn = fn or model
    with eval_mode(model):
        out = [fn(normalize_batch(x_u8[i : i + batch_size].to(device), m, s)).float().cpu()
               for i in range(0, len(x_u8), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """top-1/top-5 accuracy (%), mean cross-entropy, per-class accuracy (%)."""
    loss = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    pred = logits.argmax(1)
    correct = pred == labels
    k = min(5, num_classes)
    top5 = (logits.topk(k, 1).indices == labels[:, None]).any(1)
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        per_class.append(round(100.0 * correct[mask].float().mean().item(), 3) if mask.any() else None)
    return {"top1": round(100.0 * correct.float().mean().item(), 3), "top5": round(100.0 * top5.float().mean().item(), 3),
            "loss": round(loss, 5), "per_class_top1": per_class, "n": int(len(labels))}


# --------------------------------------------------------------------------- training


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # biases and BN: no weight decay
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle" and total_steps >= 4:
        # each of OneCycleLR's two phases needs >= 2 steps (it divides by the phase length - 1)
        pct = min(max(cfg.warmup_fraction, 2 / total_steps), 1 - 2 / total_steps)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=pct,
                                                   anneal_strategy="linear", cycle_momentum=False)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def train(model: nn.Module, data: TensorData, cfg: TrainConfig, hw: HardwareConfig | None = None, *,
          resume: dict | None = None, on_epoch_end: Callable[[dict], None] | None = None,
          on_step: Callable[[int], None] | None = None,
          progress: Progress = _no_progress, epoch_offset: int = 0) -> TrainResult:
    """Train ``model`` in place on ``data``; return per-epoch history.

    ``resume`` is a state dict previously handed to ``on_epoch_end``; training
    continues after its epoch. ``on_step(n)`` runs after the n-th optimizer
    step (1-based, counted over the whole run) for step-level probes; it must
    leave the model's mode as it found it. ``epoch_offset`` shifts the RNG stream (used
    when a caller extends a finished run by more epochs).
    """
    hw = hw or HardwareConfig()
    device = resolve_device(hw)  # threads and backend flags are the stage's to set, once (Params.apply_hardware)
    model.to(device)
    if hw.channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if hw.compile else model
    opt = make_optimizer(model, cfg)
    n = len(data.train_y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = make_scheduler(opt, cfg, steps_per_epoch * cfg.epochs)
    use_amp = hw.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    result = TrainResult()
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        result = TrainResult(list(resume["history"]), resume["train_seconds"], resume["images_seen"])
        start_epoch = resume["epoch"]
        log.info("resuming after epoch %d", start_epoch)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    train_y = data.train_y.to(device)
    # normalize once when the float copy is small (< 1 GiB); else per batch from uint8
    prenormalized = data.train_x.numel() * 4 < PRENORMALIZE_BYTES
    if prenormalized:
        train_x = normalize_batch(data.train_x.to(device), mean, std)
        if hw.channels_last:
            train_x = train_x.contiguous(memory_format=torch.channels_last)
    else:
        train_x = data.train_x.to(device)
    num_classes = len(data.classes)

    for epoch in range(start_epoch, cfg.epochs):
        seed = cfg.seed * 100_003 + epoch + epoch_offset
        torch.manual_seed(seed)  # dropout etc.
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g).to(device)
        model.train()
        t0 = time.perf_counter()
        epoch_lr = opt.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        batches = range(0, n, cfg.batch_size)
        for step, i in enumerate(progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch,
                                          leave=False), start=epoch * steps_per_epoch + 1):
            idx = perm[i : i + cfg.batch_size]
            xb = train_x[idx] if prenormalized else normalize_batch(train_x[idx], mean, std)
            if cfg.augment != "none":
                xb = augment(xb, cfg, g)
            if hw.channels_last and not prenormalized:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = train_y[idx]
            opt.zero_grad(set_to_none=True)
            if use_amp:
                with torch.autocast(device.type):
                    logits = step_model(xb)
                    loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                logits = step_model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                loss.backward()
                opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == yb).sum()
            if on_step is not None:
                on_step(step)
        dt = time.perf_counter() - t0
        result.train_seconds += dt
        result.images_seen += n
        row = {"epoch": epoch + 1, "train_loss": round(loss_sum.item() / n, 5),
               "train_top1": round(100.0 * correct.item() / n, 3), "lr_start": round(epoch_lr, 6),
               "seconds": round(dt, 3), "images_per_s": round(n / dt, 1)}
        if len(data.val_y):
            val = classification_metrics(predict_logits(model, data.val_x, data.mean, data.std,
                                                        batch_size=cfg.eval_batch_size, device=device),
                                         data.val_y, num_classes)
            row.update(val_loss=val["loss"], val_top1=val["top1"])
        result.history.append(row)
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs, " ".join(f"{k}={v}" for k, v in row.items() if k != "epoch"))
        if on_epoch_end is not None:
            on_epoch_end({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "history": result.history,
                          "train_seconds": result.train_seconds, "images_seen": result.images_seen})
    model.eval()
    return result


def still_improving(history: list[dict[str, Any]], key: str = "val_top1", window: int = 2, min_gain: float = 0.1) -> bool:
    """True when ``key`` rose by more than ``min_gain`` over the last ``window`` epochs (under-trained)."""
    values = [h[key] for h in history if key in h]
    if len(values) <= window:
        return len(values) >= 2 and values[-1] - values[0] > min_gain
    return values[-1] - values[-1 - window] > min_gain
