"""Grad-CAM (Selvaraju et al.), eq. (1) of paper 1.

    α_k^c = (1/Z) Σ_ij ∂y^c/∂A^k_ij          (spatially averaged gradients)
    L^c   = ReLU(Σ_k α_k^c A^k)              (optionally without the ReLU)

upsampled to the input size ("bilinear" as in the paper, "nearest" as Captum's
default, or None to stay at the layer's resolution). Any layer with an
N×K×h×w output works (first vs last conv layer: paper 1 Fig 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis.attribution._common import Attribution, Target, as_input, as_targets, last_conv, target_score
from cnnvis.hooks import capture, model_state_guard

INTERPOLATE = ("bilinear", "nearest", None)


class GradCAM(Attribution):
    """Class activation map of ``layer`` (default: the last conv layer): float [N, 1, H, W]."""

    def __init__(self, model: nn.Module, layer: nn.Module | None = None, *, relu: bool = True,
                 interpolate: str | None = "bilinear"):
        if interpolate not in INTERPOLATE:
            raise ValueError(f"interpolate = {interpolate!r}: unknown; allowed: bilinear, nearest, None")
        self.model = model
        self.layer = layer if layer is not None else last_conv(model)
        self.relu = relu
        self.interpolate = interpolate

    def _attribute(self, images: torch.Tensor, target: Target) -> torch.Tensor:
        with model_state_guard(self.model, eval_mode=True, frozen=True), capture(self.layer) as box, \
                torch.enable_grad():
            x = as_input(images)  # requires grad so the layer output is part of the graph (weights are frozen)
            logits = self.model(x)
            acts = box.output  # A: [N, K, h, w]
            if acts is None or acts.ndim != 4:
                raise ValueError(f"{type(self).__name__} layer must be reached by the forward pass and output N×K×h×w maps")
            (grads,) = torch.autograd.grad(target_score(logits, as_targets(target, logits)), acts)
        return self.map_from(acts.detach(), grads, x.shape[2:])

    def map_from(self, acts: torch.Tensor, grads: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Eq. (1) from the layer's activations A and gradients ∂y^c/∂A ([N, K, h, w] each)."""
        cam = self.channel_sum(acts, grads)
        if self.relu:
            cam = cam.clamp(min=0)
        if self.interpolate is not None:
            cam = F.interpolate(cam, size=size, mode=self.interpolate)
        return cam

    def channel_sum(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Σ_k α_k^c A^k before the ReLU, [N, 1, h, w] (the step a variant of Grad-CAM changes)."""
        alpha = grads.mean(dim=(2, 3), keepdim=True)  # α_k^c: [N, K, 1, 1]
        return (alpha * acts).sum(dim=1, keepdim=True)


def minmax_per_image(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each map scaled to [0, 1] (pytorch-grad-cam's convention: (m − min) / (max − min + eps))."""
    flat = maps.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / (flat.max(1, keepdim=True).values + eps)).view_as(maps)
