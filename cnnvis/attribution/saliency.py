"""Backpropagation saliency (Simonyan et al.; paper 1 Fig 8 "backpropagation"): |∂y^c/∂x|."""

from __future__ import annotations

import torch

from cnnvis.attribution._common import BATCH, Target
from cnnvis.attribution.gradient import InputGradient


class Saliency(InputGradient):
    """Plain gradient; ``abs=True`` (Captum's default) returns its magnitude."""

    rule = None

    def attribute(self, images: torch.Tensor, target: Target = None, abs: bool = True, *,  # noqa: A002
                  batch_size: int | None = BATCH) -> torch.Tensor:
        grad = super().attribute(images, target, batch_size=batch_size)
        return grad.abs() if abs else grad
