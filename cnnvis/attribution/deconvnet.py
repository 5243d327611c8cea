"""Deconvnet (Zeiler & Fergus 2014; paper 1 Fig 1–6).

Backward through the network with three rules: max-unpooling through the
switches recorded in the forward pass (= max-pool backward), ReLU applied to the
backward signal (``relu_rule(model, "deconvnet")``), transposed filters (= conv
backward). Only the ReLU rule is overridden; autograd does the rest.

- ``Deconvnet(model).attribute(images, target)``: project a class score to input space.
- ``project_feature_maps(model, layer, images)``: project each feature map of
  ``layer`` on its own (all other activations of the layer zeroed), every kernel
  at once in one batched backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnvis.attribution._common import as_input
from cnnvis.attribution.gradient import InputGradient
from cnnvis.hooks import capture, model_state_guard, relu_rule, run_until

MODES = ("all", "max")


class Deconvnet(InputGradient):
    """Deconvnet projection of the target class score: float [N, C, H, W]."""

    rule = "deconvnet"


def project_feature_maps(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                         channels: Sequence[int] | None = None, mode: str = "all", *,
                         rectify: bool = False, max_batch: int | None = None) -> torch.Tensor:
    """Deconvnet reconstruction in input space of each feature map k of ``layer``: [N, K, C, H, W].

    The signal for map k is the map's own activations A_k with every other
    activation of the layer zeroed (``mode="all"``; the gradient of 0.5·ΣA_k²),
    or only its strongest activation (``mode="max"``; the gradient of
    0.5·max(A_k)²). ``rectify=True`` sends relu(A_k) instead (the map after its
    ReLU, as Zeiler & Fergus project rectified maps). ``channels``: the maps to
    project (default all, in order). Images are replicated once per map so one
    backward pass serves all maps; ``max_batch`` caps the replicated batch
    (N·maps per pass) to bound memory. The forward pass stops at ``layer``.
    """
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r}: unknown; allowed: {', '.join(MODES)}")
    x = as_input(images)
    n = x.shape[0]
    with model_state_guard(model, eval_mode=True, frozen=True), relu_rule(model, "deconvnet"), \
            capture(layer, stop=True) as box, torch.enable_grad():
        if channels is None:
            with torch.no_grad():
                channels = range(run_until(model, x[:1].detach(), box).shape[1])
        chans = torch.as_tensor(list(channels), dtype=torch.long, device=x.device)
        if chans.ndim != 1 or len(chans) == 0:
            raise ValueError("channels: expected a non-empty sequence of feature-map indices")
        per_pass = len(chans) if max_batch is None else max(1, max_batch // max(n, 1))
        parts = [_project_chunk(model, box, x.detach(), chans[i : i + per_pass], mode, rectify)
                 for i in range(0, len(chans), per_pass)]
    return torch.cat(parts, dim=1)


def _project_chunk(model: nn.Module, box, x: torch.Tensor, chans: torch.Tensor, mode: str,
                   rectify: bool) -> torch.Tensor:
    n, k = x.shape[0], len(chans)
    xr = x.repeat(k, 1, 1, 1).requires_grad_(True)  # row j·N + n: image n, map chans[j]
    acts = run_until(model, xr, box)  # [k·N, K_layer, h, w]
    if acts.ndim != 4:
        raise ValueError(f"layer output must be N×K×h×w feature maps, got shape {tuple(acts.shape)}")
    if int(chans.max()) >= acts.shape[1] or int(chans.min()) < 0:
        raise ValueError(f"channels: indices must lie in [0, {acts.shape[1]}) for this layer")
    rows = torch.arange(k * n, device=x.device)
    own = acts.detach()[rows, chans.repeat_interleave(n)]  # [k·N, h, w]: each row's own map
    if rectify:
        own = own.clamp(min=0)
    if mode == "max":  # keep only the strongest activation (first one on ties, like torch.max)
        flat = own.flatten(1)
        keep = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True), 1.0)
        own = (flat * keep).view_as(own)
    signal = torch.zeros_like(acts)
    signal[rows, chans.repeat_interleave(n)] = own
    (grad,) = torch.autograd.grad(acts, xr, grad_outputs=signal)
    return grad.view(k, n, *x.shape[1:]).transpose(0, 1)
