"""Deletion / insertion faithfulness of a saliency map (Petsiuk et al., RISE, 2018).

Pixels are taken in the map's order, most important first. Deletion replaces
them step by step with a baseline and records the target-class probability;
insertion starts from the baseline and puts them back. The score is the area
under that curve over the fraction of pixels changed, in [0, 1]: deletion
lower is better, insertion higher is better. Works on any model and any
[N, H, W] map (a random map is the reference a method must beat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis.hooks import model_state_guard

BASELINES = ("black", "mean", "blur")


@dataclass(frozen=True)
class Curves:
    """Target probabilities after each step: [N, steps + 1] (step 0 = nothing changed yet), and the AUCs [N]."""

    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor


def pixel_importance(attr: torch.Tensor) -> torch.Tensor:
    """One importance per pixel, [N, H, W]: a one-channel map as is, else Σ_c |attr_c|."""
    if attr.ndim != 4:
        raise ValueError(f"attributions: expected N×C×H×W, got shape {tuple(attr.shape)}")
    return attr[:, 0] if attr.shape[1] == 1 else attr.abs().sum(1)


def baseline_images(images: torch.Tensor, kind: str, blur_sigma: float = 2.0,
                    black: torch.Tensor | None = None) -> torch.Tensor:
    """The image a pixel is replaced by (or starts from), [N, C, H, W] like ``images``.

    "black": intensity 0, given as its normalized per-channel value ``black`` [C]
    (= −mean/std); "mean": all zeros (normalized images: the dataset's mean
    pixel, a gray that adds content on black backgrounds); "blur": Gaussian blur (σ in px).
    """
    if kind == "black":
        if black is None:
            raise ValueError("baseline 'black' needs the normalized value of intensity 0 per channel (black=)")
        return black.to(images).view(1, -1, 1, 1).expand_as(images).clone()
    if kind == "mean":
        return torch.zeros_like(images)
    if kind != "blur":
        raise ValueError(f"baseline = {kind!r}: unknown; allowed: {', '.join(BASELINES)}")
    return gaussian_blur(images, blur_sigma)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` with kernel 2·⌈3σ⌉+1, clipped to the largest odd size that reflect
    padding allows on the image."""
    from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

    k = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(images.shape[-2:]) // 2) - 1)
    return tv_gaussian_blur(images, [k, k], [sigma, sigma])


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves [N, S+1] sampled at 0, 1/S, …, 1."""
    s = curve.shape[1] - 1
    return (curve.sum(1) - 0.5 * (curve[:, 0] + curve[:, -1])) / s


@torch.no_grad()
def deletion_insertion(model: nn.Module, images: torch.Tensor, importance: torch.Tensor, target: torch.Tensor, *,
                       steps: int = 14, deletion_baseline: str = "black", insertion_baseline: str = "blur",
                       blur_sigma: float = 2.0, black: torch.Tensor | None = None, batch_size: int = 1024) -> Curves:
    """Deletion and insertion curves of ``importance`` [N, H, W] for normalized ``images`` [N, C, H, W]."""
    n, c, h, w = images.shape
    if importance.shape != (n, h, w):
        raise ValueError(f"importance: expected shape {(n, h, w)}, got {tuple(importance.shape)}")
    # rank[n, p]: position of pixel p in the order (0 = most important); stable → ties in index order
    order = importance.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w).expand(n, -1))
    counts = [round(s * h * w / steps) for s in range(steps + 1)]
    curves = {}
    with model_state_guard(model, eval_mode=True):
        for name, kind in (("deletion", deletion_baseline), ("insertion", insertion_baseline)):
            base = baseline_images(images, kind, blur_sigma, black)
            start, end = (images, base) if name == "deletion" else (base, images)
            probs = []
            for k in counts:
                changed = (rank < k).view(n, 1, h, w)
                probs.append(_target_prob(model, torch.where(changed, end, start), target, batch_size))
            curves[name] = torch.stack(probs, 1)
    return Curves(curves["deletion"], curves["insertion"], auc(curves["deletion"]), auc(curves["insertion"]))


def _target_prob(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = [F.softmax(model(x[i : i + batch_size]), 1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).gather(1, target[:, None])[:, 0]
