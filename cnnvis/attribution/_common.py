"""What every attribution method shares: targets, inputs, the model's guarded state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis.hooks import Captured, capture
from cnnvis.models import conv_layers

Target = int | Sequence[int] | torch.Tensor | None


def as_targets(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """One class index per image (LongTensor [N]); None → the predicted class."""
    n = logits.shape[0]
    if target is None:
        return logits.detach().argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"target: expected an int or {n} class indices, got shape {tuple(t.shape)}")
    if (t < 0).any() or (t >= logits.shape[1]).any():
        raise ValueError(f"target: class indices must lie in [0, {logits.shape[1]})")
    return t


def as_input(images: torch.Tensor) -> torch.Tensor:
    """A float leaf copy of ``images`` [N, C, H, W] that requires grad (the caller's tensor is untouched)."""
    if images.ndim != 4:
        raise ValueError(f"images: expected a batch N×C×H×W, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError("images: expected normalized float images (see cnnvis.data.normalize), got integers")
    return images.detach().clone().requires_grad_(True)


def target_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ_n y^{c_n}_n: the sum of each image's target logit (images are independent in eval mode)."""
    return logits.gather(1, targets[:, None]).sum()


BATCH = 64  # images per forward/backward pass by default: bounded memory, and fastest here (README benchmarks)


class Attribution:
    """What the methods share: ``attribute`` runs the method's ``_attribute`` on batches of images.

    Images are independent in eval mode, so the maps do not depend on
    ``batch_size`` (None: all images in one pass); smaller batches bound the
    memory of the saved activations.
    """

    def attribute(self, images: torch.Tensor, target: Target = None, *, batch_size: int | None = BATCH) -> torch.Tensor:
        return in_batches(self._attribute, images, target, batch_size)

    def _attribute(self, images: torch.Tensor, target: Target) -> torch.Tensor:
        raise NotImplementedError


def in_batches(fn: Callable[[torch.Tensor, Target], torch.Tensor], images: torch.Tensor, target: Target,
               batch_size: int | None) -> torch.Tensor:
    """``fn(images, target)`` on consecutive batches of at most ``batch_size`` images, concatenated."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size = {batch_size!r}: expected a positive int or None (all images at once)")
    n = images.shape[0] if images.ndim == 4 else 0
    if batch_size is None or n <= batch_size:
        return fn(images, target)  # also reports a malformed batch
    per_image = None
    if target is not None and not isinstance(target, int):
        per_image = torch.as_tensor(target)
        if per_image.ndim == 0:
            per_image = None
        elif per_image.shape != (n,):
            raise ValueError(f"target: expected an int or {n} class indices, got shape {tuple(per_image.shape)}")
    return torch.cat([fn(images[i : i + batch_size], target if per_image is None else per_image[i : i + batch_size])
                      for i in range(0, n, batch_size)])


def last_conv(model: nn.Module) -> nn.Module:
    convs = conv_layers(model)
    if not convs:
        raise ValueError("model has no nn.Conv2d layer; pass layer= explicitly")
    return convs[-1][1]


# --------------------------------------------------------------------------- the gradient at the input


@contextlib.contextmanager
def input_grad_tracker(model: nn.Module) -> Iterator[tuple[nn.Conv2d, Captured] | None]:
    """Inside the block, record the model's first ``nn.Conv2d`` (module order) for ``input_grad``."""
    convs = conv_layers(model)
    if not convs:
        yield None
        return
    conv = convs[0][1]
    with capture(conv) as box:
        yield conv, box


def input_grad(output: torch.Tensor, x: torch.Tensor, tracked: tuple[nn.Conv2d, Captured] | None) -> torch.Tensor:
    """∂output/∂x, with the last step done by hand when that is faster and exact.

    oneDNN computes the input gradient of a convolution with few input channels
    (the first layer, on images) slowly. When the tracked first conv is the only
    reader of ``x`` in the graph, autograd stops at that conv's output and the
    input gradient is formed as W^T·g (one matrix product) folded back to image
    positions (``F.fold``, col2im): the definition of the conv's input gradient.
    """
    if tracked is not None:
        conv, box = tracked
        if box.input is x and _foldable(conv) and _sole_reader(output, box.output, x):
            (g,) = torch.autograd.grad(output, box.output)
            return conv_input_grad(conv, g, x.shape)
    (g,) = torch.autograd.grad(output, x)
    return g


def conv_input_grad(conv: nn.Conv2d, grad_out: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """The gradient at the input of ``conv`` for ``grad_out`` at its output: col2im(W^T·g)."""
    n, k = grad_out.shape[:2]
    cols = torch.matmul(conv.weight.detach().reshape(k, -1).t(), grad_out.reshape(n, k, -1))  # [N, C·kh·kw, L]
    return F.fold(cols, tuple(input_shape[2:]), conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                  stride=conv.stride)


IMAGE_CHANNELS = 4  # a conv with at most this many input channels reads an image: oneDNN's backward is slow there


def plain_conv(layer: nn.Module) -> bool:
    """An ``nn.Conv2d`` whose gradient is one ordinary (transposed) convolution: no groups, zero padding by numbers."""
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


def _foldable(conv: nn.Conv2d) -> bool:
    return plain_conv(conv) and conv.in_channels <= IMAGE_CHANNELS


def _sole_reader(output: torch.Tensor, conv_out: torch.Tensor | None, x: torch.Tensor) -> bool:
    """Whether the conv (the node that made ``conv_out``) is the only node of ``output``'s graph reading ``x``."""
    if conv_out is None or conv_out.grad_fn is None or output.grad_fn is None:
        return False
    readers, seen, todo = set(), set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            if getattr(nxt, "variable", None) is x:
                readers.add(node)
            else:
                todo.append(nxt)
    return readers == {conv_out.grad_fn}
