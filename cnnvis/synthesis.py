"""Feature synthesis by optimizing the input (paper 2 eq. (1)–(4)).

Both methods solve eq. (1), x* = argmin_x l(φ(x), φ0) + λR(x), by gradient
steps on the input of a fixed network, in the model's normalized input space,
with every pixel clamped to the range the dataset's [0, 1] pixels map to.

- ``maximize``: activation maximization, eq. (2)–(3). Gradient ascent on the
  mean activation of one class logit or one conv channel per image, with the
  three regularizers paper 2 cites (Yosinski et al. 2015), each switchable:
  L2 decay x ← (1 − θ_decay)·x, Gaussian blur every k steps, and gradient
  clipping (only the pixels whose gradient magnitude is above a percentile
  are updated — "update only the most favourable part of the gradient").
- ``invert``: feature inversion, eq. (4) (Mahendran & Vedaldi 2015): minimize
  ‖φ(x) − φ0‖² / ‖φ0‖² + λ_TV·TV_β(x) + λ_α·‖x‖_α^α from a given image's features.
  Paper 2 prints ‖φ(x) − φ0‖ / ‖φ0‖² (no square on the numerator); we use
  M&V's squared ratio, which is scale-free, and report the relative error
  ‖φ(x) − φ0‖ / ‖φ0‖.

Everything is batched (one optimization for all classes / channels / images),
seeded through a ``torch.Generator``, and leaves the model as it was.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from cnnvis import ConfigError
from cnnvis.activations import resolve_layer
from cnnvis.config import opt
from cnnvis.hooks import capture, model_state_guard, run_until

log = logging.getLogger(__name__)

LOGITS = "logits"  # layer name meaning the model's output


@dataclass(frozen=True)
class SynthesisConfig:
    # activation maximization, eq. (2)–(3)
    steps: int = opt(150, ge=1)
    lr: float = opt(0.1, gt=0.0)  # step size α of eq. (2), in std units per step (gradient scaled to unit RMS)
    l2_decay: float = opt(0.01, ge=0.0, lt=1.0)  # θ_decay: x ← (1 − θ_decay)·x after each step; 0 = off
    blur_every: int = opt(4, ge=0)  # blur the image every k steps; 0 = off
    blur_sigma: float = opt(0.5, gt=0.0)  # Gaussian blur width in pixels
    clip_percentile: float = opt(50.0, ge=0.0, lt=100.0)  # update only pixels whose |gradient| is above it; 0 = off
    init_std: float = opt(0.1, ge=0.0)  # start: dataset-mean image + N(0, init_std²) noise (std units)
    channel_layer: str = opt("last_conv")  # conv layer whose channels are maximized (module name or alias)
    max_channels: int = opt(64, ge=1)  # channels shown (the first ones of the layer)
    # feature inversion, eq. (4)
    inversion_layers: tuple[str, ...] = opt(("first_conv", "last_conv", LOGITS), min_length=1)
    inversion_images: int = opt(2, ge=1)  # test images inverted
    inversion_steps: int = opt(300, ge=1)
    inversion_lr: float = opt(0.05, gt=0.0)  # Adam step size (std units)
    tv_weight: float = opt(0.05, ge=0.0)  # λ_TV (TV is a per-pixel mean, so λ is size-free)
    tv_beta: float = opt(2.0, ge=1.0)  # β of TV_β (M&V use β = 2)
    alpha_weight: float = opt(1e-4, ge=0.0)  # λ_α
    alpha: float = opt(6.0, ge=1.0)  # α of the α-norm prior (M&V use α = 6)
    seed: int = opt(0, ge=0)


@dataclass(frozen=True)
class Synthesized:
    """Result of ``maximize``: images N×C×H×W in normalized space and the objective per image."""

    images: torch.Tensor
    initial: torch.Tensor  # objective at the start, N
    final: torch.Tensor  # objective at the end, N
    history: torch.Tensor  # objective before each step, then the final one: (steps + 1)×N


@dataclass(frozen=True)
class Inversion:
    """Result of ``invert``: reconstructions N×C×H×W (normalized) and relative feature errors."""

    layer: str
    images: torch.Tensor
    rel_error: torch.Tensor  # ‖φ(x) − φ0‖ / ‖φ0‖ at the end, N
    history: torch.Tensor  # relative error before each step, then the final one: (steps + 1)×N


# --------------------------------------------------------------------------- regularizers


def pixel_bounds(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized values of pixel 0 and pixel 1 per channel, each 1×C×1×1."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (0.0 - m) / s, (1.0 - m) / s


def clip_gradient(grad: torch.Tensor, percentile: float) -> torch.Tensor:
    """Keep the gradient only at the pixels whose magnitude (L2 over channels) is at or above
    the ``percentile``-th percentile of its image; zero elsewhere. ``percentile`` 0 keeps all."""
    if percentile <= 0:
        return grad
    norm = grad.norm(dim=1, keepdim=True)  # N×1×H×W
    threshold = torch.quantile(norm.flatten(1), percentile / 100.0, dim=1).view(-1, 1, 1, 1)
    return grad * (norm >= threshold)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (torchvision), kernel covering ±2σ, reflect padding."""
    k = 2 * max(1, math.ceil(2 * sigma)) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """TV_β per image (M&V eq. (8)): mean over pixels of ((∂x/∂u)² + (∂x/∂v)²)^(β/2) → N."""
    du = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dv = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return (du.pow(2) + dv.pow(2)).pow(beta / 2).flatten(1).mean(1)


def alpha_norm(x: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """‖x‖_α^α per image, as a mean over entries (size-free) → N."""
    return x.abs().pow(alpha).flatten(1).mean(1)


# --------------------------------------------------------------------------- objective


def _features(model: nn.Module, x: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
    """φ(x): the model's logits (module None) or the output of ``module``, forward stopped there."""
    if module is None:
        return model(x)
    with capture(module, stop=True) as box:
        return run_until(model, x, box)


def _layer_module(model: nn.Module, layer: str) -> tuple[str, nn.Module | None]:
    if layer == LOGITS:
        return LOGITS, None
    return resolve_layer(model, layer)


def _start(n: int, shape: tuple[int, int, int], init_std: float, g: torch.Generator,
           lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Dataset-mean image (0 in normalized space) plus seeded noise, in the pixel range."""
    noise = torch.randn((n, *shape), generator=g) * init_std
    return torch.maximum(torch.minimum(noise, hi), lo)


def maximize(model: nn.Module, targets: torch.Tensor, cfg: SynthesisConfig, *, image_shape: tuple[int, int, int],
             mean: tuple[float, ...], std: tuple[float, ...], layer: str = LOGITS) -> Synthesized:
    """Activation maximization, one image per target, all in one batched optimization.

    ``layer`` = "logits": image i maximizes logit ``targets[i]``; a conv layer:
    image i maximizes the spatial mean of channel ``targets[i]`` of its output.
    ``image_shape`` = (C, H, W). The model's device is used; the result is on the CPU.
    """
    name, module = _layer_module(model, layer)
    device = next(model.parameters()).device
    targets = torch.as_tensor(targets, dtype=torch.long)
    g = torch.Generator().manual_seed(cfg.seed)
    lo, hi = (b.to(device) for b in pixel_bounds(mean, std))
    x = _start(len(targets), image_shape, cfg.init_std, g, lo.cpu(), hi.cpu()).to(device)
    idx = torch.arange(len(targets), device=device)
    t = targets.to(device)

    def objective(x: torch.Tensor) -> torch.Tensor:  # N
        out = _features(model, x, module)
        if out.dim() == 4:  # conv channel: spatial mean of channel t_i
            out = out.mean(dim=(2, 3))
        if int(t.max()) >= out.shape[1]:
            raise ConfigError(f"target {int(t.max())} out of range: {name} has {out.shape[1]} units")
        return out[idx, t]

    history = []  # objective before each step, then the final one (steps + 1 rows)
    with model_state_guard(model, eval_mode=True, frozen=True):
        for step in range(1, cfg.steps + 1):
            x.requires_grad_(True)
            value = objective(x)
            history.append(value.detach().cpu())
            (grad,) = torch.autograd.grad(value.sum(), x)  # images are independent: d(sum)/dx_i = dφ_i/dx_i
            with torch.no_grad():
                grad = clip_gradient(grad, cfg.clip_percentile)
                rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
                x = x.detach() + cfg.lr * grad / rms  # eq. (2), step size α in std units
                x = x * (1.0 - cfg.l2_decay)
                if cfg.blur_every and step % cfg.blur_every == 0:
                    x = blur(x, cfg.blur_sigma)
                x = torch.maximum(torch.minimum(x, hi), lo)
        with torch.no_grad():
            history.append(objective(x).cpu())
    hist = torch.stack(history)
    return Synthesized(images=x.detach().cpu(), initial=hist[0], final=hist[-1], history=hist)


def invert(model: nn.Module, x0: torch.Tensor, layer: str, cfg: SynthesisConfig, *,
           mean: tuple[float, ...], std: tuple[float, ...]) -> Inversion:
    """Feature inversion of normalized images ``x0`` (N×C×H×W) from their features at ``layer``.

    Adam on the input (M&V used momentum SGD; Adam needs no per-layer step tuning).
    Each image's loss depends only on its own pixels, so the batch is N independent problems.
    """
    name, module = _layer_module(model, layer)
    device = next(model.parameters()).device
    x0 = x0.to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    lo, hi = (b.to(device) for b in pixel_bounds(mean, std))
    history = []
    with model_state_guard(model, eval_mode=True, frozen=True):
        with torch.no_grad():
            phi0 = _features(model, x0, module).flatten(1)
            norm0 = phi0.pow(2).sum(1).clamp(min=1e-12)  # ‖φ0‖², N
        if bool((phi0.abs().sum(1) == 0).any()):
            log.warning("inversion at %s: some images have all-zero features; their relative error is undefined", name)
        x = _start(len(x0), tuple(x0.shape[1:]), cfg.init_std, g, lo.cpu(), hi.cpu()).to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.inversion_lr)
        for _ in range(cfg.inversion_steps):
            optimizer.zero_grad(set_to_none=True)
            rel2 = (_features(model, x, module).flatten(1) - phi0).pow(2).sum(1) / norm0  # N
            loss = rel2 + cfg.tv_weight * total_variation(x, cfg.tv_beta) + cfg.alpha_weight * alpha_norm(x, cfg.alpha)
            loss.sum().backward()
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                history.append(rel2.detach().sqrt().cpu())
        with torch.no_grad():
            final = ((_features(model, x, module).flatten(1) - phi0).pow(2).sum(1) / norm0).sqrt().cpu()
    history.append(final)  # history: error before each step, then the final one (steps + 1 rows)
    return Inversion(layer=name, images=x.detach().cpu(), rel_error=final, history=torch.stack(history))


def relative_error(model: nn.Module, x: torch.Tensor, x0: torch.Tensor, layer: str) -> torch.Tensor:
    """‖φ(x) − φ(x0)‖ / ‖φ(x0)‖ per image at ``layer`` (for checks and the random-start baseline)."""
    _, module = _layer_module(model, layer)
    with model_state_guard(model, eval_mode=True, frozen=True), torch.no_grad():
        a = _features(model, x, module).flatten(1)
        b = _features(model, x0, module).flatten(1)
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp(min=1e-12)
