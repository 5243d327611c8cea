"""Guided Grad-CAM (Selvaraju et al.; paper 1 Fig 8): guided backprop × bilinearly upsampled Grad-CAM."""

from __future__ import annotations

import torch
from torch import nn

from cnnvis.attribution._common import Attribution, Target, as_input, as_targets, input_grad, input_grad_tracker, target_score
from cnnvis.attribution.gradcam import GradCAM
from cnnvis.attribution.guided_backprop import GuidedBackprop
from cnnvis.hooks import capture, model_state_guard, relu_rule


class GuidedGradCAM(Attribution):
    """The product of two methods, float [N, C, H, W]; Grad-CAM with ReLU (the paper's).

    Composed of ``GradCAM.map_from`` (eq. (1)) and ``GuidedBackprop.rule``; both
    backward passes share one forward pass: the first with the plain ReLU
    gradient (Grad-CAM's ∂y^c/∂A), then the rule is switched to guided for ∂y^c/∂x.
    """

    def __init__(self, model: nn.Module, layer: nn.Module | None = None, *, interpolate: str = "bilinear"):
        self.gradcam = GradCAM(model, layer, relu=True, interpolate=interpolate)
        self.model, self.layer = model, self.gradcam.layer

    def _attribute(self, images: torch.Tensor, target: Target) -> torch.Tensor:
        with model_state_guard(self.model, eval_mode=True, frozen=True), relu_rule(self.model, None) as switch, \
                capture(self.layer) as box, input_grad_tracker(self.model) as first, torch.enable_grad():
            x = as_input(images)
            logits = self.model(x)
            score = target_score(logits, as_targets(target, logits))
            if box.output is None or box.output.ndim != 4:
                raise ValueError("GuidedGradCAM layer must be reached by the forward pass and output N×K×h×w maps")
            (grads,) = torch.autograd.grad(score, box.output, retain_graph=True)  # plain gradient at A
            switch.rule = GuidedBackprop.rule
            guided = input_grad(score, x, first)
        return guided * self.gradcam.map_from(box.output.detach(), grads, x.shape[2:])
