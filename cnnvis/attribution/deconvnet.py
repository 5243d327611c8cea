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
import torch.nn.functional as F
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
    project (default all, in order). The forward pass runs once and stops at
    ``layer``; ``max_batch`` caps N·maps per backward pass to bound memory.

    One batched backward pass serves all maps. For an ``nn.Conv2d`` layer the
    step through the layer is done per map with its own filter only (the other
    maps' signals are zero, so the full transposed convolution would mostly
    multiply zeros) and the rest of the network is traversed by one vmapped
    backward (``is_grads_batched``); any other layer replicates the batch once
    per map.
    """
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r}: unknown; allowed: {', '.join(MODES)}")
    x = as_input(images)
    n = x.shape[0]
    with model_state_guard(model, eval_mode=True, frozen=True), relu_rule(model, "deconvnet"), \
            capture(layer, stop=True) as box, torch.enable_grad():
        acts = run_until(model, x, box)  # [N, K_layer, h, w], one forward for all maps
        if acts.ndim != 4:
            raise ValueError(f"layer output must be N×K×h×w feature maps, got shape {tuple(acts.shape)}")
        chans = torch.arange(acts.shape[1]) if channels is None else torch.as_tensor(list(channels), dtype=torch.long)
        if chans.ndim != 1 or len(chans) == 0:
            raise ValueError("channels: expected a non-empty sequence of feature-map indices")
        if int(chans.max()) >= acts.shape[1] or int(chans.min()) < 0:
            raise ValueError(f"channels: indices must lie in [0, {acts.shape[1]}) for this layer")
        signal = _signals(acts.detach(), chans.to(acts.device), mode, rectify)  # [N, K, h, w]
        per_pass = len(chans) if max_batch is None else max(1, max_batch // max(n, 1))
        fast = _plain_conv(layer) and box.input is not None
        parts = []
        for i in range(0, len(chans), per_pass):
            last = i + per_pass >= len(chans)
            if fast:
                parts.append(_through_conv(layer, box.input, x, chans[i : i + per_pass],
                                           signal[:, i : i + per_pass], retain=not last))
            else:
                parts.append(_replicated(model, box, x.detach(), chans[i : i + per_pass],
                                         signal[:, i : i + per_pass]))
    return torch.cat(parts, dim=1)


def _signals(acts: torch.Tensor, chans: torch.Tensor, mode: str, rectify: bool) -> torch.Tensor:
    """Each selected map's own signal, [N, K, h, w]."""
    own = acts[:, chans]
    if rectify:
        own = own.clamp(min=0)
    if mode == "max":  # keep only the strongest activation (the first one on ties, like torch.max)
        flat = own.flatten(2)
        keep = torch.zeros_like(flat).scatter_(2, flat.argmax(2, keepdim=True), 1.0)
        own = (flat * keep).view_as(own)
    return own


def _plain_conv(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


def _through_conv(conv: nn.Conv2d, conv_in: torch.Tensor, x: torch.Tensor, chans: torch.Tensor,
                  signal: torch.Tensor, retain: bool) -> torch.Tensor:
    """Per map k: transposed convolution of its signal with filter k alone, then one vmapped backward to x."""
    weight = conv.weight.detach()[chans]  # [K, C_in, kh, kw]
    if conv.in_channels <= 4:  # few input channels (an image): one grouped transposed conv is fastest on CPU
        k = len(chans)
        out_pad = [size - ((h - 1) * st - 2 * p + d * (kk - 1) + 1) for size, h, st, p, d, kk in zip(
            conv_in.shape[2:], signal.shape[2:], conv.stride, conv.padding, conv.dilation, conv.kernel_size, strict=True)]
        grads = F.conv_transpose2d(signal, weight, None, conv.stride, conv.padding, out_pad, k, conv.dilation)
        grads = grads.view(signal.shape[0], k, *conv_in.shape[1:]).transpose(0, 1)
    else:  # many input channels: grouped kernels are slow, one small transposed conv per map
        grads = torch.stack([  # [K, N, C_in, H_in, W_in]: the gradient at the layer input of each map's signal
            torch.nn.grad.conv2d_input(conv_in.shape, weight[j : j + 1], signal[:, j : j + 1], conv.stride,
                                       conv.padding, conv.dilation)
            for j in range(len(chans))])
    if conv_in is x:  # the first layer: its input is the image
        return grads.transpose(0, 1)
    (out,) = torch.autograd.grad(conv_in, x, grads, is_grads_batched=True, retain_graph=retain)
    return out.transpose(0, 1)


def _replicated(model: nn.Module, box, x: torch.Tensor, chans: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Any layer: the batch replicated once per map (row j·N + n: image n, map chans[j]), one backward."""
    n, k = x.shape[0], len(chans)
    xr = x.repeat(k, 1, 1, 1).requires_grad_(True)
    acts = run_until(model, xr, box)  # [k·N, K_layer, h, w]
    full = torch.zeros_like(acts)
    full[torch.arange(k * n), chans.repeat_interleave(n)] = signal.transpose(0, 1).reshape(k * n, *acts.shape[2:])
    (grad,) = torch.autograd.grad(acts, xr, grad_outputs=full)
    return grad.view(k, n, *x.shape[1:]).transpose(0, 1)
