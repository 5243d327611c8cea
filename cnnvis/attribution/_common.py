"""What every attribution method shares: targets, inputs, the model's guarded state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Target = int | Sequence[int] | torch.Tensor | None


def as_targets(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """One class index per image (LongTensor [N]); None → the predicted class."""
    n = logits.shape[0]
    if target is None:
        return logits.detach().argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"target: expected an int or {n} class indices, got shape {tuple(t.shape)}")
    if (t < 0).any() or (t >= logits.shape[1]).any():
        raise ValueError(f"target: class indices must lie in [0, {logits.shape[1]})")
    return t


def as_input(images: torch.Tensor) -> torch.Tensor:
    """A float leaf copy of ``images`` [N, C, H, W] that requires grad (the caller's tensor is untouched)."""
    if images.ndim != 4:
        raise ValueError(f"images: expected a batch N×C×H×W, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError("images: expected normalized float images (see cnnvis.data.normalize), got integers")
    return images.detach().clone().requires_grad_(True)


def target_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ_n y^{c_n}_n: the sum of each image's target logit (images are independent in eval mode)."""
    return logits.gather(1, targets[:, None]).sum()


def last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no nn.Conv2d layer; pass layer= explicitly")
    return convs[-1]
