"""Guided backpropagation (Springenberg et al.): through every ReLU g_in = relu(g_out) · [x > 0]."""

from __future__ import annotations

from cnnvis.attribution.gradient import InputGradient


class GuidedBackprop(InputGradient):
    rule = "guided"
