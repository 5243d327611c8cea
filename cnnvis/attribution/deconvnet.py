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

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis.attribution._common import IMAGE_CHANNELS, as_input, plain_conv
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
    multiply zeros). When the layer directly follows the network's first block
    (conv → [BN] → ReLU → non-overlapping max-pool on the image, as in paper 1's
    network) the whole projection is computed in closed form by
    ``_through_image_block`` (a grouped convolution and one matrix product per
    pooled position, no autograd);
    otherwise the rest of the network is traversed by one vmapped backward
    (``is_grads_batched``). Any other layer replicates the batch once per map.
    """
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r}: unknown; allowed: {', '.join(MODES)}")
    x = as_input(images)
    n = x.shape[0]
    block = _image_block(model, layer)
    with model_state_guard(model, eval_mode=True, frozen=True), relu_rule(model, "deconvnet"), \
            contextlib.ExitStack() as stack, torch.enable_grad():
        if block is not None:  # record the block's input (must be the image) and its pool's input (the switches)
            block_in = stack.enter_context(capture(block.conv))
            pool_in = stack.enter_context(capture(block.pool))
        box = stack.enter_context(capture(layer, stop=True))
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
        fast = plain_conv(layer) and box.input is not None
        switches = None
        if block is not None and block_in.input is x:
            switches = _switches(block, pool_in.input, box.input)
        parts = []
        for i in range(0, len(chans), per_pass):
            last = i + per_pass >= len(chans)
            if switches is not None:
                parts.append(_through_image_block(block, layer, switches, x.shape, chans[i : i + per_pass],
                                                  signal[:, i : i + per_pass]))
            elif fast:
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


def _through_conv(conv: nn.Conv2d, conv_in: torch.Tensor, x: torch.Tensor, chans: torch.Tensor,
                  signal: torch.Tensor, retain: bool) -> torch.Tensor:
    """Per map k: transposed convolution of its signal with filter k alone, then one vmapped backward to x."""
    weight = conv.weight.detach()[chans]  # [K, C_in, kh, kw]
    if conv.in_channels <= IMAGE_CHANNELS:  # an image's few channels: one grouped transposed conv is fastest
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


@dataclass(frozen=True)
class _ImageBlock:
    """The network's first block, conv → [BN] → ReLU → max-pool, right before the projected layer."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    pool: nn.MaxPool2d


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _unit_stride(conv: nn.Module) -> bool:
    return plain_conv(conv) and _pair(conv.stride) == (1, 1) and _pair(conv.dilation) == (1, 1)


def _image_block(model: nn.Module, layer: nn.Module) -> _ImageBlock | None:
    """The modules before ``layer`` in its ``nn.Sequential`` when they form a block the closed form covers.

    That is: a stride-1 conv, an optional BatchNorm (eval statistics), a ReLU
    and a non-overlapping max-pool (kernel = stride, no padding), and ``layer``
    a stride-1 conv. Whether the block's input is the image is checked at run time.
    """
    if not _unit_stride(layer):
        return None
    (ph, pw), (kh, kw) = _pair(layer.padding), _pair(layer.kernel_size)
    if ph > kh - 1 or pw > kw - 1:  # step 1's convolution pads by k - 1 - p
        return None
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.children())
        at = next((i for i, m in enumerate(children) if m is layer), None)
        if at is None:
            continue
        pre = children[:at]
        bn = pre.pop(1) if len(pre) == 4 and isinstance(pre[1], nn.BatchNorm2d) else None
        if len(pre) != 3:
            return None
        conv, relu, pool = pre
        ok = (isinstance(conv, nn.Conv2d) and _unit_stride(conv) and type(relu) is nn.ReLU
              and isinstance(pool, nn.MaxPool2d) and not pool.ceil_mode and not pool.return_indices
              and _pair(pool.kernel_size) == _pair(pool.stride) and _pair(pool.padding) == (0, 0)
              and _pair(pool.dilation) == (1, 1)
              and (bn is None or bn.running_var is not None))
        return _ImageBlock(conv, bn, pool) if ok else None
    return None


def _switches(block: _ImageBlock, pool_in: torch.Tensor | None, pooled_seen: torch.Tensor | None) -> torch.Tensor | None:
    """Where each pooled maximum sits in its pooling window (row-major offset), [N, C, h, w]; None if unusable.

    The max-pool is recomputed with indices on the very tensor the forward pass
    pooled; its output must equal what the projected layer received.
    """
    if pool_in is None or pooled_seen is None:
        return None
    sh, sw = _pair(block.pool.kernel_size)
    with torch.no_grad():
        pooled, idx = F.max_pool2d(pool_in, (sh, sw), (sh, sw), return_indices=True)
    if not torch.equal(pooled, pooled_seen):
        return None
    h, w = pooled.shape[2:]
    width = pool_in.shape[-1]
    corner = (torch.arange(h, device=idx.device)[:, None] * (sh * width) + torch.arange(w, device=idx.device) * sw)
    within = idx - corner  # dy·width + dx
    dy = within.div(width, rounding_mode="floor")
    return dy * sw + within - dy * width


def _through_image_block(block: _ImageBlock, layer: nn.Conv2d, offsets: torch.Tensor, image_shape: torch.Size,
                         chans: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Deconvnet projection of each map's signal through ``layer`` and the first block, in closed form.

    1. Transposed conv of map k's signal with filter k alone: one grouped
       convolution (a group per map) with the flipped filters, channels-last,
       so the C × K block of every position is contiguous.
    2. ReLU rule on the result (it commutes with unpooling: unpooled zeros stay 0).
    3. Unpooling through the switches, BN's eval scale and the block conv's
       transposed filters fused: a value pooled from window offset d lands at
       d + (the filter's footprint), so for each pooled position the map from
       the C channels to the (offset-shifted) filter footprints is one C × F
       matrix, gathered by the switches and shared by all maps: one batched
       matrix product gives every map's footprints, which ``index_add_`` sums
       into the image at stride = pool size.
    No tensor of the unpooled size N·K·C·H·W is ever formed; images go one at a
    time and positions in blocks, so the working set stays in cache. [N, K, C_x, H, W].
    """
    n, k = signal.shape[:2]
    c, (kh, kw), (ph, pw) = layer.in_channels, _pair(layer.kernel_size), _pair(layer.padding)
    hin, win = offsets.shape[2:]
    flipped = layer.weight.detach()[chans].flip(-1, -2).reshape(k * c, 1, kh, kw)
    placed = _placed_filters(block, c)  # [sh, sw, C, C_x, qh·sh, qw·sw]
    sh, sw, _, cx, vh, vw = placed.shape
    per_offset = placed.view(sh * sw * c, cx * vh * vw)  # row d·C + c: channel c's footprint for window offset d
    rows = (offsets * c + torch.arange(c, device=offsets.device)[:, None, None]).permute(0, 2, 3, 1).reshape(n, -1)
    hp, wp = (hin + vh // sh) * sh, (win + vw // sw) * sw  # room for every footprint; image row y is row y + pad
    pix = _footprint_pixels(hin, win, cx, vh, vw, sh, sw, hp, wp, offsets.device)
    f = cx * vh * vw  # footprint entries per position
    step = max(1, _CACHE_FLOATS // (f * k))
    signal = signal.contiguous(memory_format=torch.channels_last)
    p1h, p1w = _pair(block.conv.padding)
    hx, wx = image_shape[2:]
    out = signal.new_empty(n, k, cx, hx, wx)
    acc = signal.new_empty(cx * hp * wp, k)
    for i in range(n):
        g = F.conv2d(signal[i : i + 1], flipped, None, 1, (kh - 1 - ph, kw - 1 - pw), 1, k).clamp_(min=0)
        g = g.permute(0, 2, 3, 1).reshape(hin * win, k, c).transpose(1, 2)  # [position, C, K], no copy
        footprint_maps = per_offset.index_select(0, rows[i]).view(hin * win, c, -1).transpose(1, 2)  # [position, F, C]
        acc.zero_()
        for p0 in range(0, hin * win, step):  # a block of positions at a time: the products stay in cache
            p1 = min(p0 + step, hin * win)
            acc.index_add_(0, pix[p0 * f : p1 * f], torch.bmm(footprint_maps[p0:p1], g[p0:p1]).view(-1, k))
        out[i] = acc.view(cx, hp, wp, k)[:, p1h : p1h + hx, p1w : p1w + wx].permute(3, 0, 1, 2)
    return out


_CACHE_FLOATS = 1 << 17  # footprints per product (~0.5 MB of float32): 56 positions of paper 1's conv2 here


def _placed_filters(block: _ImageBlock, c: int) -> torch.Tensor:
    """The block conv's filters, scaled by BN's eval scale, placed at every pooling-window offset d.

    [sh, sw, C, C_x, qh·sh, qw·sw]: entry [dy, dx, c, :, dy + u, dx + v] = W[c, :, u, v]·scale_c.
    """
    conv = block.conv
    cx, (sh, sw), (fh, fw) = conv.in_channels, _pair(block.pool.kernel_size), _pair(conv.kernel_size)
    qh, qw = -(-(sh + fh - 1) // sh), -(-(sw + fw - 1) // sw)  # footprint in strides of the pool
    w1 = conv.weight.detach()
    if block.bn is not None:
        bn = block.bn
        scale = torch.rsqrt(bn.running_var + bn.eps)
        w1 = w1 * (scale if bn.weight is None else bn.weight.detach() * scale)[:, None, None, None]
    placed = w1.new_zeros(sh, sw, c, cx, qh * sh, qw * sw)
    for dy in range(sh):
        for dx in range(sw):
            placed[dy, dx, :, :, dy : dy + fh, dx : dx + fw] = w1
    return placed


def _footprint_pixels(hin: int, win: int, cx: int, vh: int, vw: int, sh: int, sw: int, hp: int, wp: int,
                      device: torch.device) -> torch.Tensor:
    """Flat index into the [C_x, hp, wp] canvas of footprint entry (position y, x; channel; row r; column s)."""
    y = torch.arange(hin, device=device).view(-1, 1, 1, 1, 1)
    x = torch.arange(win, device=device).view(1, -1, 1, 1, 1)
    ch = torch.arange(cx, device=device).view(1, 1, -1, 1, 1)
    r = torch.arange(vh, device=device).view(1, 1, 1, -1, 1)
    s = torch.arange(vw, device=device).view(1, 1, 1, 1, -1)
    return ((ch * hp + sh * y + r) * wp + sw * x + s).reshape(-1)


def _replicated(model: nn.Module, box, x: torch.Tensor, chans: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Any layer: the batch replicated once per map (row j·N + n: image n, map chans[j]), one backward."""
    n, k = x.shape[0], len(chans)
    xr = x.repeat(k, 1, 1, 1).requires_grad_(True)
    acts = run_until(model, xr, box)  # [k·N, K_layer, h, w]
    full = torch.zeros_like(acts)
    full[torch.arange(k * n), chans.repeat_interleave(n)] = signal.transpose(0, 1).reshape(k * n, *acts.shape[2:])
    (grad,) = torch.autograd.grad(acts, xr, grad_outputs=full)
    return grad.view(k, n, *x.shape[1:]).transpose(0, 1)
