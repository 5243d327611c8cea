"""Guided Grad-CAM (Selvaraju et al.; paper 1 Fig 8): guided backprop × bilinearly upsampled Grad-CAM."""

from __future__ import annotations

import torch
from torch import nn

from cnnvis.attribution._common import Target
from cnnvis.attribution.gradcam import GradCAM
from cnnvis.attribution.guided_backprop import GuidedBackprop


class GuidedGradCAM:
    """The product of two methods, float [N, C, H, W]; Grad-CAM with ReLU (the paper's)."""

    def __init__(self, model: nn.Module, layer: nn.Module | None = None, *, interpolate: str = "bilinear"):
        self.gradcam = GradCAM(model, layer, relu=True, interpolate=interpolate)
        self.guided = GuidedBackprop(model)
        self.model, self.layer = model, self.gradcam.layer

    def attribute(self, images: torch.Tensor, target: Target = None) -> torch.Tensor:
        return self.guided.attribute(images, target) * self.gradcam.attribute(images, target)
