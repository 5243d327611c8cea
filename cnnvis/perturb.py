"""Paper 4's input perturbations (section 5.3) on uint8 images, and their evaluation.

Every perturbation maps uint8 N×C×H×W to uint8 N×C×H×W *before*
normalization, as the paper's images were perturbed as pictures:

- grayscale (5.3.1): ITU-R 601 luma (torchvision's ``rgb_to_grayscale``), copied to 3 channels;
- Gaussian blur (5.3.2, eq. 11): torchvision's ``gaussian_blur`` (reflect padding), k×k with a stated σ;
- channel order (5.3.3): the RGB planes reordered, e.g. "BGR", "BRG";
- salt & pepper (5.3.4, eq. 12): exactly M distinct channel values per image set to 0 or 255
  (equal odds), seeded. M is eq. (12)'s round(λ·H·W·C), raised where needed so that
  every level changes at least one value and each level more values than the level
  with the next smaller λ (``noise_counts``): at 28×28×1, λ = 0.0005 rounds to 0
  and would leave the images clean; it becomes 1. At the paper's 64×64×3 nothing
  is raised (6 and 61). Paper 4's published code indexed with a list and whitened
  whole rows; here positions are drawn over the flat H·W·C values.

Color perturbations need 3 channels; on a grayscale dataset they are reported
as not applicable, with the reason (``applicability``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from cnnvis import ConfigError
from cnnvis.config import opt
from cnnvis.hooks import eval_mode

# Salt & pepper values are drawn for this many images at a time, from one generator, so the
# noise of an image does not depend on any evaluation batch size.
NOISE_CHUNK = 256


@dataclass(frozen=True)
class PerturbConfig:
    """The ``perturb`` section."""

    grayscale: bool = opt(True)
    blur_kernels: tuple[int, ...] = opt((3, 5), ge=1)  # odd sizes, paper: 3x3 and 5x5
    # σ per kernel (px); paper 4 states none: 0.8 and 1.1 are OpenCV's defaults for k = 3, 5
    # (0.3·((k−1)/2 − 1) + 0.8, what cv2.GaussianBlur(img, (k, k), 0) uses)
    blur_sigmas: tuple[float, ...] = opt((0.8, 1.1), gt=0.0)
    channel_orders: tuple[str, ...] = opt(("BGR", "BRG"))  # paper: [B,G,R] and [B,R,G]
    # λ of eq. (12); M per image from ``noise_counts``: round(λ·H·W·C), at least 1 and above the next smaller level
    salt_pepper_rates: tuple[float, ...] = opt((0.0005, 0.005), gt=0.0, lt=1.0)
    seed: int = opt(0, ge=0)
    batch_size: int = opt(500, ge=1)
    max_test_images: int | None = opt(None, ge=1)  # cap (experiment=ci); null = the whole test set
    examples: int = opt(6, ge=1)  # images per figure grid

    def check(self, section: str) -> None:
        if len(self.blur_kernels) != len(self.blur_sigmas):
            raise ConfigError(f"{section}.blur_sigmas = {list(self.blur_sigmas)}: needs one σ per kernel "
                              f"({len(self.blur_kernels)} kernels)")
        for k in self.blur_kernels:
            if k % 2 == 0:
                raise ConfigError(f"{section}.blur_kernels = {k}: must be odd (a centred kernel)")
        if len(set(self.salt_pepper_rates)) != len(self.salt_pepper_rates):
            raise ConfigError(f"{section}.salt_pepper_rates = {list(self.salt_pepper_rates)}: a level is repeated")
        for order in self.channel_orders:
            if sorted(order) != sorted("RGB"):
                raise ConfigError(f"{section}.channel_orders = {order!r}: must be a permutation of 'RGB'")


# --------------------------------------------------------------------------- the perturbations


def _check_u8(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 N×C×H×W images, got {x.dtype} with shape {tuple(x.shape)}")


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """RGB → luma (0.2989 R + 0.587 G + 0.114 B, truncated to uint8) in all 3 channels."""
    _check_u8(x)
    return TF.rgb_to_grayscale(x, num_output_channels=3).contiguous()


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """k×k Gaussian of eq. (11) (normalized to sum 1), reflect-padded, rounded back to uint8."""
    _check_u8(x)
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def channel_order(x: torch.Tensor, order: str) -> torch.Tensor:
    """Reorder RGB planes: "BRG" puts B first, then R, then G."""
    _check_u8(x)
    return x[:, ["RGB".index(ch) for ch in order]].contiguous()


def noise_counts(rates: tuple[float, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """M per salt & pepper level (in the order of ``rates``) for images of ``shape`` = (C, H, W).

    The rule, over the levels by increasing λ: M = round(λ·H·W·C) (eq. 12), at least 1, and at least one more
    than the M of the level before; so every level changes pixels and two levels never coincide. ``ConfigError``
    when the image has too few values for that.
    """
    values = math.prod(shape)
    counts: dict[float, int] = {}
    previous = 0
    for rate in sorted(set(rates)):
        previous = counts[rate] = max(round(rate * values), previous + 1)
    if previous > values:
        raise ConfigError(f"perturb.salt_pepper_rates = {list(rates)}: {len(counts)} distinct levels need up to "
                          f"{previous} noisy values per image, the images ({'×'.join(map(str, shape))}) have {values}")
    return tuple(counts[r] for r in rates)


def noise_rule(rate: float, count: int, shape: tuple[int, ...]) -> str:
    """How ``noise_counts`` arrived at ``count`` for ``rate`` (for the table)."""
    values = math.prod(shape)
    raw = round(rate * values)
    how = f"M = round(λ·H·W·C) = round({rate:g}·{values}) = {raw}"
    if count != raw:
        how += (f", raised to {count}: every level changes at least one value, each more than the level with the "
                "next smaller λ")
    return how


def salt_pepper(x: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Set exactly ``count`` distinct channel values of each image to 0 or 255 (equal odds)."""
    _check_u8(x)
    n = x.shape[0]
    out = x.clone().view(n, -1)
    if count == 0:
        return out.view_as(x)
    for i in range(0, n, NOISE_CHUNK):
        rows = out[i : i + NOISE_CHUNK]
        # count distinct positions per image: the count largest of i.i.d. uniform scores
        pos = torch.rand(rows.shape, generator=generator).topk(count, dim=1).indices
        salt = torch.rand((len(rows), count), generator=generator) < 0.5
        rows.scatter_(1, pos, salt.to(torch.uint8) * 255)
    return out.view_as(x)


@dataclass(frozen=True)
class Perturbation:
    name: str
    label: str  # for tables and figures, with its parameters
    needs_color: bool
    fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor] = field(repr=False, compare=False)
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    def __call__(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        return self.fn(x, torch.Generator().manual_seed(seed))


def perturbations(cfg: PerturbConfig) -> list[Perturbation]:
    """The configured perturbations, in the paper's order (5.3.1 → 5.3.4)."""
    out = []
    if cfg.grayscale:
        out.append(Perturbation("grayscale", "grayscale (luma, 3 channels)", True, lambda x, g: grayscale(x)))
    for k, s in zip(cfg.blur_kernels, cfg.blur_sigmas, strict=True):
        out.append(Perturbation(f"blur{k}", f"Gaussian blur {k}×{k}, σ={s:g} px", False,
                                lambda x, g, k=k, s=s: gaussian_blur(x, k, s), {"kernel": k, "sigma": s}))
    for order in cfg.channel_orders:
        out.append(Perturbation(order.lower(), f"channel order [{','.join(order)}]", True,
                                lambda x, g, o=order: channel_order(x, o), {"order": order}))
    rates = cfg.salt_pepper_rates
    for i, rate in enumerate(rates):
        out.append(Perturbation(f"salt_pepper_{rate:g}", f"salt & pepper λ={rate:g}", False,
                                lambda x, g, i=i: salt_pepper(x, noise_counts(rates, tuple(x.shape[1:]))[i], g),
                                {"rate": rate}))
    return out


def applicability(p: Perturbation, channels: int) -> str | None:
    """None if ``p`` applies to images with ``channels`` channels, else the reason it does not."""
    if p.needs_color and channels != 3:
        return (f"not applicable: the dataset has {channels} channel (grayscale images); "
                f"{'grayscale conversion' if p.name == 'grayscale' else 'reordering color channels'} "
                f"needs RGB input and would leave the images unchanged")
    return None


# --------------------------------------------------------------------------- evaluation


def confidence_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Top-1 accuracy (%) and mean softmax confidence (%) of the predicted and of the true class."""
    probs = logits.softmax(1)
    pred = probs.argmax(1)
    idx = torch.arange(len(labels))
    return {"top1": round(100.0 * (pred == labels).float().mean().item(), 3),
            "conf_pred": round(100.0 * probs[idx, pred].mean().item(), 3),
            "conf_true": round(100.0 * probs[idx, labels].mean().item(), 3),
            "n": int(len(labels))}


def with_deltas(row: dict[str, Any], clean: dict[str, Any]) -> dict[str, Any]:
    """``row`` plus ``delta_<metric>`` = perturbed − clean (percentage points)."""
    out = dict(row)
    for k in ("top1", "conf_pred", "conf_true"):
        out[f"delta_{k}"] = round(row[k] - clean[k], 3)
    return out


# --------------------------------------------------------------------------- explanations for the figures


def explanation_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """N×H×W maps in [0, 1] for normalized inputs x and classes ``target``.

    The encoder-decoder shows its own class map (eq. 10) upsampled bilinearly;
    any other CNN shows Grad-CAM of its last conv layer (ReLU, bilinear).
    """
    size = x.shape[-2:]
    if hasattr(model, "class_maps"):
        with eval_mode(model), torch.no_grad():
            maps = model.class_maps(x)[torch.arange(len(x)), target][:, None]
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    else:
        from cnnvis.attribution.gradcam import GradCAM

        maps = GradCAM(model, interpolate="bilinear").attribute(x, target=target)
    maps = maps[:, 0].clamp_min(0)
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


