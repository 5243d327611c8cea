"""Gradient of the target class score w.r.t. the input, with an optional ReLU backward rule.

The base of saliency (rule None), guided backprop ("guided") and deconvnet
("deconvnet"): the three differ only in how gradients pass ReLUs (Springenberg et al. 2015, Zeiler & Fergus 2014).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cnnvis.attribution._common import Attribution, Target, as_input, as_targets, input_grad, input_grad_tracker, target_score
from cnnvis.hooks import model_state_guard, relu_rule


class InputGradient(Attribution):
    """∂y^c/∂x for each image (float [N, C, H, W]), back-propagated through ReLUs with ``rule``."""

    rule: str | None = None

    def __init__(self, model: nn.Module, layer: nn.Module | None = None):
        if layer is not None:
            raise ValueError(f"{type(self).__name__} attributes to the input; it takes no layer")
        self.model = model

    def _attribute(self, images: torch.Tensor, target: Target) -> torch.Tensor:
        rule = relu_rule(self.model, self.rule) if self.rule is not None else contextlib.nullcontext()
        with model_state_guard(self.model, eval_mode=True, frozen=True), rule, \
                input_grad_tracker(self.model) as first, torch.enable_grad():
            x = as_input(images)
            logits = self.model(x)
            return input_grad(target_score(logits, as_targets(target, logits)), x, first)
