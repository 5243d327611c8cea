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
import functools
from collections.abc import Callable, Sequence
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
    pooled position, no autograd, and the forward pass without a graph); its
    result is a view with the maps innermost in memory (``.contiguous()`` if the
    usual layout is needed). Otherwise the rest of the network is traversed by
    one vmapped backward (``is_grads_batched``). Any other layer replicates the
    batch once per map.
    """
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r}: unknown; allowed: {', '.join(MODES)}")
    x = as_input(images)
    n = x.shape[0]
    block = _image_block(model, layer)
    with model_state_guard(model, eval_mode=True, frozen=True), contextlib.ExitStack() as stack:
        if block is not None:  # record the block's input (must be the image) and its pool's input (the switches)
            block_in = stack.enter_context(capture(block.conv))
            pool_in = stack.enter_context(capture(block.pool))
        box = stack.enter_context(capture(layer, stop=True))
        if block is None:
            stack.enter_context(relu_rule(model, "deconvnet"))
        with torch.set_grad_enabled(block is None):  # the closed form needs no autograd graph
            acts = run_until(model, x, box)  # [N, K_layer, h, w], one forward for all maps
        if acts.ndim != 4:
            raise ValueError(f"layer output must be N×K×h×w feature maps, got shape {tuple(acts.shape)}")
        chans = torch.arange(acts.shape[1]) if channels is None else torch.as_tensor(list(channels), dtype=torch.long)
        if chans.ndim != 1 or len(chans) == 0:
            raise ValueError("channels: expected a non-empty sequence of feature-map indices")
        if int(chans.max()) >= acts.shape[1] or int(chans.min()) < 0:
            raise ValueError(f"channels: indices must lie in [0, {acts.shape[1]}) for this layer")
        signal = _signals(acts.detach(), None if channels is None else chans.to(acts.device), mode, rectify)
        per_pass = len(chans) if max_batch is None else max(1, max_batch // max(n, 1))
        passes = range(0, len(chans), per_pass)
        switches = None
        if block is not None and block_in.input is x:
            switches = _switches(block, pool_in.input, box.input)
        if switches is not None:
            parts = [_through_image_block(block, layer, switches, x.shape, chans[i : i + per_pass],
                                          signal[:, i : i + per_pass]) for i in passes]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        stack.enter_context(torch.enable_grad())
        if block is not None:  # the closed form does not apply after all: the forward again, with a graph
            stack.enter_context(relu_rule(model, "deconvnet"))
            run_until(model, x, box)
        fast = plain_conv(layer) and box.input is not None
        parts = []
        for i in passes:
            if fast:
                parts.append(_through_conv(layer, box.input, x, chans[i : i + per_pass],
                                           signal[:, i : i + per_pass], retain=i + per_pass < len(chans)))
            else:
                parts.append(_replicated(model, box, x.detach(), chans[i : i + per_pass],
                                         signal[:, i : i + per_pass]))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _signals(acts: torch.Tensor, chans: torch.Tensor | None, mode: str, rectify: bool) -> torch.Tensor:
    """Each selected map's own signal (``chans`` None: every map, in order), [N, K, h, w]."""
    own = acts if chans is None else acts[:, chans]
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
    """Where each pooled maximum sits in its pooling window (row-major offset), int32 [N, C, h, w]; None if unusable.

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
    within = idx.int() - corner.int()  # dy·width + dx; int32 arithmetic is about twice as fast here
    dy = within.div(width, rounding_mode="floor")
    return within - dy * (width - sw)


def _through_image_block(block: _ImageBlock, layer: nn.Conv2d, offsets: torch.Tensor, image_shape: torch.Size,
                         chans: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Deconvnet projection of each map's signal through ``layer`` and the first block, in closed form.

    1. Transposed conv of map k's signal with filter k alone: one grouped
       convolution (a group per map) with the flipped filters, channels-last,
       so the C × K block of every position is contiguous; the ReLU rule is
       applied to its result (it commutes with unpooling: unpooled zeros stay 0).
    2. Unpooling through the switches, BN's eval scale and the block conv's
       transposed filters fused: a value pooled from window offset d lands at
       d + (the filter's footprint), so for each pooled position the map from
       the C channels to the (offset-shifted) filter footprints is one C × F
       matrix, gathered by the switches and shared by all maps: one batched
       matrix product gives every map's footprints, which ``index_add_`` sums
       straight into the result at stride = pool size (entries that fall in
       the padding go to one discarded row).
    No tensor of the unpooled size N·K·C·H·W is ever formed; images go one at a
    time and positions in strips of rows (step 1 to the sum for one strip), so the
    working set stays near the L2 cache and memory stays bounded for large images.

    Returns [N, K, C_x, H, W], a view whose memory has the maps innermost
    (it is summed in that layout; a copy to the usual layout would cost ~5 %).
    """
    n, k = signal.shape[:2]
    c, (kh, kw), (ph, pw) = layer.in_channels, _pair(layer.kernel_size), _pair(layer.padding)
    hin, win = offsets.shape[2:]
    flipped = layer.weight.detach()[chans].flip(-1, -2).reshape(k * c, 1, kh, kw)
    placed = _placed_filters(block, c)  # [sh, sw, C, C_x, qh·sh, qw·sw]
    sh, sw, _, cx, vh, vw = placed.shape
    per_offset = placed.view(sh * sw * c, cx * vh * vw)  # row d·C + c: channel c's footprint for window offset d
    channel = torch.arange(c, device=offsets.device, dtype=offsets.dtype)[:, None, None]
    rows = (offsets * c + channel).permute(0, 2, 3, 1).reshape(n, -1)  # per image: the per_offset row of (position, c)
    hx, wx = image_shape[2:]
    pix = _footprint_pixels((hin, win), (cx, vh, vw), (sh, sw), _pair(block.conv.padding), (hx, wx), offsets.device)
    f = cx * vh * vw  # footprint entries per position
    strips = -(-hin // max(1, _STRIP_FLOATS // (win * k * c)))
    height = -(-hin // strips)  # rows of positions per strip, balanced
    qh, qw = kh - 1 - ph, kw - 1 - pw  # step 1's padding
    padded = F.pad(signal, (0, 0, qh, qh)).contiguous(memory_format=torch.channels_last)  # rows padded once
    convs: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # per strip height
    out = signal.new_zeros(n, cx * hx * wx + 1, k)  # row cx·hx·wx: footprint entries outside the image
    for i in range(n):
        for y0 in range(0, hin, height):
            y1 = min(y0 + height, hin)
            part = padded[i : i + 1, :, y0 : y1 + kh - 1]
            if y1 - y0 not in convs:
                convs[y1 - y0] = _relu_grouped_conv(flipped, (0, qw), k, part)
            p0, p1 = y0 * win, y1 * win
            g = convs[y1 - y0](part).permute(0, 2, 3, 1).reshape(p1 - p0, k, c).transpose(1, 2)  # [position, C, K]
            footprint_maps = per_offset.index_select(0, rows[i, p0 * c : p1 * c]).view(p1 - p0, c, f).transpose(1, 2)
            out[i].index_add_(0, pix[p0 * f : p1 * f], torch.bmm(footprint_maps, g).view(-1, k))  # [F, C]·[C, K]
    return out[:, :-1].view(n, cx, hx, wx, k).permute(0, 4, 1, 2, 3)


_STRIP_FLOATS = 1 << 18  # step-1 outputs per strip of positions (1 MB of float32, the L2 cache of this machine's cores)


def _onednn_ops() -> bool:
    """Whether oneDNN's prepacked convolution ops (the ones TorchInductor emits on CPU) are usable."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


def _relu_grouped_conv(weight: torch.Tensor, padding: tuple[int, int], groups: int,
                       example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """image [1, G, h, w] → relu(grouped stride-1 conv with ``weight``), channels-last like the image.

    On the CPU in float32 the filters are reordered into oneDNN's blocked layout
    once and the ReLU is fused into the convolution; ``F.conv2d`` reorders the
    filters on every call (about 40 % of its time for paper 1's conv2 here).
    Elsewhere ``F.conv2d`` and then ReLU, the same numbers (tested).
    """
    pad = list(padding)
    if example.device.type == "cpu" and example.dtype == torch.float32 and _onednn_ops():
        packed = torch.ops.mkldnn._reorder_convolution_weight(weight, pad, [1, 1], [1, 1], groups, list(example.shape))
        return lambda image: torch.ops.mkldnn._convolution_pointwise(image, packed, None, pad, [1, 1], [1, 1], groups,
                                                                     "relu", [], "")
    return lambda image: F.conv2d(image, weight, None, 1, pad, 1, groups).clamp_(min=0)


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


@functools.lru_cache(maxsize=16)
def _footprint_pixels(positions: tuple[int, int], footprint: tuple[int, int, int], stride: tuple[int, int],
                      padding: tuple[int, int], image: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Flat index into the [C_x, H, W] image of footprint entry (position y, x; channel; row r; column s).

    The footprint of pooled position (y, x) starts at (stride·y, stride·x) of the
    block conv's padded input; entries that fall in that padding get the index
    C_x·H·W (one row past the image, discarded).
    """
    (hin, win), (cx, vh, vw), (sh, sw), (ph, pw), (hx, wx) = positions, footprint, stride, padding, image
    y = torch.arange(hin, device=device).view(-1, 1, 1, 1, 1)
    x = torch.arange(win, device=device).view(1, -1, 1, 1, 1)
    ch = torch.arange(cx, device=device).view(1, 1, -1, 1, 1)
    r = torch.arange(vh, device=device).view(1, 1, 1, -1, 1)
    s = torch.arange(vw, device=device).view(1, 1, 1, 1, -1)
    row, col = sh * y + r - ph, sw * x + s - pw
    inside = (row >= 0) & (row < hx) & (col >= 0) & (col < wx)
    return torch.where(inside, (ch * hx + row) * wx + col, cx * hx * wx).reshape(-1)


def _replicated(model: nn.Module, box, x: torch.Tensor, chans: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Any layer: the batch replicated once per map (row j·N + n: image n, map chans[j]), one backward."""
    n, k = x.shape[0], len(chans)
    xr = x.repeat(k, 1, 1, 1).requires_grad_(True)
    acts = run_until(model, xr, box)  # [k·N, K_layer, h, w]
    full = torch.zeros_like(acts)
    full[torch.arange(k * n), chans.repeat_interleave(n)] = signal.transpose(0, 1).reshape(k * n, *acts.shape[2:])
    (grad,) = torch.autograd.grad(acts, xr, grad_outputs=full)
    return grad.view(k, n, *x.shape[1:]).transpose(0, 1)
