"""Paper 4's encoder-decoder with one activation map per class.

ResNet-18 trunk without avgpool/fc (the encoder) → 1×1 conv to C channels (the
"encoded feature map", 2×2×C) → transposed conv ×2 → group transposed conv ×2
with groups = C (each class map is computed from its own channel only, no
class mixing) → ReLU → one 8×8 map per class → global average pooling (eq. 8)
gives the logits; softmax + cross-entropy (eqs. 4, 9) live in the loss.

Importing this module registers ``encdec`` in the model registry
(``cnnvis.models.MODELS``), so checkpoints rebuild through
``cnnvis.models.load_checkpoint`` from the ModelConfig fields they carry
(width_multiplier, small_input_stem, dropout, pretrained).

This module also holds the measurements the paper only eyeballs (section 5):
normalized maps (eq. 10), when each probe's map settles during training, how
alike same-class maps are for correct and wrong predictions, whether the
confidence P_k goes with map sharpness, and a translation control (do the maps
move with a shifted input, as a localization would?).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnvis.config import ModelConfig, TrainConfig, opt
from cnnvis.models import ResNet18, load_imagenet_weights, register

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EncDecConfig:
    """The ``encdec`` section: the model, its training recipe and the study of its maps."""

    width_multiplier: float = opt(0.25, gt=0.0, le=4.0)  # trunk width; 1.0 = the paper's ResNet-18
    pretrained: bool = opt(False)  # ImageNet trunk weights (width 1.0 and 3 channels only)
    small_input_stem: bool = opt(True)  # 3x3 stem with stride chosen for 8x8 maps; false = ImageNet 7x7 + max-pool
    dropout: float = opt(0.3, ge=0.0, lt=1.0)  # paper: 0.3 after each decoder BatchNorm
    train: TrainConfig = opt(TrainConfig())
    compare_resnet: bool = opt(True)  # also train the plain ResNet-18 (same trunk, data, recipe) for Table 1
    # when the probe maps are recorded, in (fractional) epochs; paper: 1, 5, 15, 20, ..., 80
    snapshot_epochs: tuple[float, ...] = opt((0.1, 0.25, 0.5, 1.0, 2.0, 3.0), gt=0.0, min_length=1)
    probes_per_class: int = opt(2, ge=1)  # fixed test images whose maps are followed
    settle_threshold: float = opt(0.9, gt=0.0, le=1.0)  # Pearson r with the final map that counts as settled
    examples: int = opt(8, ge=1)  # images per figure of correct / wrong samples (Figs 6-7)
    seed: int = opt(0, ge=0)  # probe and example choice
    # translation control: class maps of test inputs moved by these many px (right, down, left, up; zero fill)
    # compared with the moved map of the unmoved input; () = no control
    translation_shifts: tuple[int, ...] = opt((2, 4), ge=1)
    translation_images: int | None = opt(1000, ge=1)  # seeded subset of the test images; null = all

    def model_config(self) -> ModelConfig:
        return ModelConfig(name="encdec", width_multiplier=self.width_multiplier, pretrained=self.pretrained,
                           small_input_stem=self.small_input_stem, dropout=self.dropout)

    def resnet_config(self) -> ModelConfig:
        return ModelConfig(name="resnet18", width_multiplier=self.width_multiplier, pretrained=self.pretrained,
                           small_input_stem=self.small_input_stem)


# --------------------------------------------------------------------------- the network


def stem_reduction(image_size: int, small_input_stem: bool) -> int:
    """Down-sampling factor of the stem so that the encoder ends at 2×2 (8×8 class maps).

    The trunk after the stem halves three times (layer2..4, rounding up), so a
    2×2 encoding needs image_size / stem ≈ 16: stride 1 up to 20 px, stride 2
    for 21-40 px (28 px → 14 → 7 → 4 → 2), stride 2 + max-pool above.
    The ImageNet stem (small_input_stem=False) always reduces by 4 (64 px → 2×2).
    """
    if not small_input_stem:
        return 4
    if image_size <= 20:
        return 1
    return 2 if image_size <= 40 else 4


def set_stem(trunk: ResNet18, in_channels: int, reduction: int, small_input_stem: bool) -> None:
    """Replace the trunk's stem (ResNet18 offers only stride 1 or the ImageNet stem)."""
    width = trunk.conv1.out_channels
    if not small_input_stem:
        return  # ResNet18 built it: 7x7 stride 2 + 3x3 max-pool stride 2
    trunk.conv1 = nn.Conv2d(in_channels, width, 3, min(reduction, 2), 1, bias=False)
    nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
    trunk.maxpool = nn.MaxPool2d(3, 2, 1) if reduction == 4 else nn.Identity()


def encoded_size(image_size: int, reduction: int) -> int:
    size = math.ceil(image_size / reduction)
    for _ in range(3):  # layer2..4: 3x3 stride 2 padding 1 → ceil(s / 2)
        size = math.ceil(size / 2)
    return size


class EncDec(nn.Module):
    """Encoder-decoder classifier: ``forward`` gives logits = GAP of ``class_maps``.

    Input N×in×S×S → class maps N×C×4s×4s (s = encoded side; 8×8 for 28-64 px) → logits N×C.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, cfg: ModelConfig):
        super().__init__()
        c = num_classes
        reduction = stem_reduction(image_size, cfg.small_input_stem)
        self.encoder = ResNet18(in_channels, num_classes, cfg, small_input_stem=cfg.small_input_stem)
        set_stem(self.encoder, in_channels, reduction, cfg.small_input_stem)
        self.encoder.avgpool = nn.Identity()  # removed, as in the paper (unused by forward_features)
        self.encoder.fc = nn.Identity()
        self.encoded_side = encoded_size(image_size, reduction)
        self.map_side = 4 * self.encoded_side
        # 1x1 conv to C: the encoded feature map (2, 2, C) of section 3.2
        self.to_classes = nn.Conv2d(self.encoder.out_channels, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.drop1 = nn.Dropout(cfg.dropout)
        # transposed conv, kernel 4 stride 2 padding 1: exactly x2 spatially
        self.up1 = nn.ConvTranspose2d(c, c, 4, 2, 1)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU()
        self.drop2 = nn.Dropout(cfg.dropout)
        # groups = C: output channel k sees input channel k only, so map k belongs to class k
        self.group_up = nn.ConvTranspose2d(c, c, 4, 2, 1, groups=c)
        self.relu_maps = nn.ReLU()  # section 5.1: "the last ReLU layer would not output negative values"
        self.gap = nn.AdaptiveAvgPool2d(1)  # eq. (8)
        for up in (self.up1, self.group_up):
            # He init with the real fan-in of a x2 transposed conv (2x2 taps per input channel it reads);
            # PyTorch's default gives near-uniform initial logits (std ~0.07) and a stalled start
            fan_in = (up.in_channels // up.groups) * 4
            nn.init.normal_(up.weight, std=math.sqrt(2.0 / fan_in))
            nn.init.zeros_(up.bias)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×m×m non-negative activation maps, one per class."""
        z = self.encoder.forward_features(x)
        z = self.drop1(self.relu1(self.bn1(self.to_classes(z))))
        z = self.drop2(self.relu2(self.bn2(self.up1(z))))
        return self.relu_maps(self.group_up(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.gap(self.class_maps(x)), 1)


@register("encdec")
def _build_encdec(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    model = EncDec(in_channels, num_classes, image_size, cfg)
    if cfg.pretrained:
        load_imagenet_weights(model.encoder)
    return model


def build_resnet_like(cfg: EncDecConfig, in_channels: int, num_classes: int, image_size: int) -> ResNet18:
    """The plain ResNet-18 classifier of Table 1 with the encdec's trunk and stem (same budget)."""
    mcfg = cfg.resnet_config()
    model = ResNet18(in_channels, num_classes, mcfg, small_input_stem=cfg.small_input_stem)
    set_stem(model, in_channels, stem_reduction(image_size, cfg.small_input_stem), cfg.small_input_stem)
    if cfg.pretrained:
        load_imagenet_weights(model)
    return model


# --------------------------------------------------------------------------- maps


@torch.no_grad()
def predict_maps(model: EncDec, x_u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                 *, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(class maps N×C×m×m, logits N×C) for uint8 N×C×H×W images, in eval mode; the mode is restored."""
    from cnnvis.training import predict_logits

    maps_t = predict_logits(model, x_u8, mean, std, batch_size=batch_size, fn=model.class_maps)
    return maps_t, maps_t.mean((2, 3))


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. (10): each map divided by its maximum (maps are ≥ 0 after the last ReLU; an all-zero map stays 0)."""
    peak = maps.amax((-2, -1), keepdim=True)
    return maps / peak.clamp_min(eps)


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r between matching rows of a and b (N×D); 0 where a row is constant."""
    a = a.flatten(1).double() - a.flatten(1).double().mean(1, keepdim=True)
    b = b.flatten(1).double() - b.flatten(1).double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / den.clamp_min(1e-12)
    return torch.where(den > 0, r, torch.zeros_like(r)).float()


def sharpness(maps: torch.Tensor, eps: float = 1e-12) -> dict[str, torch.Tensor]:
    """Per map (…×m×m): peak-to-mean ratio (1 = flat, m² = one hot cell) and entropy (nats) of the map as a distribution."""
    flat = maps.flatten(-2)
    mass = flat.sum(-1, keepdim=True)
    p = flat / mass.clamp_min(eps)
    entropy = -(p * p.clamp_min(eps).log()).sum(-1)
    peak_to_mean = flat.amax(-1) / flat.mean(-1).clamp_min(eps)
    return {"peak_to_mean": torch.where(mass.squeeze(-1) > 0, peak_to_mean, torch.zeros_like(peak_to_mean)),
            "entropy": entropy}


def choose_probes(labels: torch.Tensor, num_classes: int, per_class: int, seed: int) -> torch.Tensor:
    """Fixed test indices, ``per_class`` of each class (fewer if a class has fewer), seeded; class-major order."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]].sort().values)
    return torch.cat(picks) if picks else torch.empty(0, dtype=torch.long)


def settle_epochs(snapshots: torch.Tensor, epochs: tuple[float, ...], final: torch.Tensor, threshold: float) -> list[float | None]:
    """Per probe: the first snapshot epoch from which its map stays at Pearson r ≥ threshold with ``final``.

    snapshots: T×P×m×m (each probe's own-class map at each snapshot); final: P×m×m. None = never settled.
    """
    r = torch.stack([pearson_rows(s, final) for s in snapshots])  # T×P
    out: list[float | None] = []
    for p in range(r.shape[1]):
        ok = r[:, p] >= threshold
        settled = None
        for t in range(len(epochs) - 1, -1, -1):  # walk back while it stays settled
            if not ok[t]:
                break
            settled = epochs[t]
        out.append(settled)
    return out


def spearman(x: list[float] | torch.Tensor, y: list[float] | torch.Tensor) -> dict[str, Any]:
    """Spearman's rho with its p-value and n (scipy); None when undefined (n < 3 or a constant input)."""
    import numpy as np
    from scipy.stats import spearmanr

    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if len(xa) < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"rho": None, "p": None, "n": int(len(xa))}
    res = spearmanr(xa, ya)
    return {"rho": round(float(res.statistic), 4), "p": float(res.pvalue), "n": int(len(xa))}


def _summary(v: torch.Tensor) -> dict[str, Any]:
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(v.mean().item(), 4), "std": round(v.std().item(), 4) if len(v) > 1 else 0.0, "n": int(len(v))}


def map_study(maps: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Section 5.2 measured on a whole test set.

    - intra-class similarity: Pearson r of each image's true-class normalized map
      with its class prototype (mean normalized true-class map of the correctly
      classified images of that class, the image itself left out), split by
      correct / wrong prediction;
    - confidence vs sharpness: Spearman rho between P_k of the predicted class
      and the peak-to-mean ratio / entropy of that class's map.
    """
    n, c = logits.shape
    pred = logits.argmax(1)
    correct = pred == labels
    probs = logits.softmax(1)
    own = normalize_maps(maps[torch.arange(n), labels])  # N×m×m
    sims = torch.full((n,), float("nan"))
    for k in range(c):
        members = (labels == k).nonzero().flatten()
        good = members[correct[members]]
        if len(good) < 2:
            continue  # no prototype to compare with
        total = own[good].sum(0)
        # leave-one-out: a correct image is not part of its own prototype
        is_good = correct[members].float().view(-1, 1, 1)
        protos = (total - own[members] * is_good) / (len(good) - is_good)
        sims[members] = pearson_rows(own[members], protos)
    finite = torch.isfinite(sims)
    pred_maps = maps[torch.arange(n), pred]
    sharp = sharpness(pred_maps)
    conf = probs[torch.arange(n), pred]
    return {
        "intra_class_similarity": {
            "correct": _summary(sims[finite & correct]),
            "wrong": _summary(sims[finite & ~correct]),
            "what": "Pearson r of an image's true-class map (eq. 10) with the mean map of its class's correct images",
        },
        "confidence_vs_sharpness": {
            "peak_to_mean": spearman(conf, sharp["peak_to_mean"]),
            "entropy": spearman(conf, sharp["entropy"]),
            # pooled rho mixes classes whose maps differ in shape; within a predicted class it does not
            "peak_to_mean_within_class": [spearman(conf[pred == k], sharp["peak_to_mean"][pred == k])["rho"]
                                          for k in range(c)],
            "what": "Spearman rho between P_k of the predicted class and its map's peak-to-mean ratio / entropy "
                    "(pooled, and per predicted class)",
        },
        "per_image": {"similarity": sims, "confidence": conf, "peak_to_mean": sharp["peak_to_mean"],
                      "entropy": sharp["entropy"], "correct": correct},
    }


# --------------------------------------------------------------------------- translation control


DIRECTIONS = ((0, 1), (1, 0), (0, -1), (-1, 0))  # (rows, columns) unit steps: right, down, left, up


def shift_images(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (…×H×W) moved ``dy`` rows down and ``dx`` columns right; the vacated pixels are 0 (zero fill)."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        x[..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


def _kept(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """N×(H−|dy|)·(W−|dx|): the pixels of ``x`` (N×H×W) that a shift by (dy, dx) did not vacate."""
    h, w = x.shape[-2:]
    return x[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)].flatten(1)


@dataclass(frozen=True)
class TranslationControl:
    """Do the class maps move with the input? Per shift s (px) and test image, averaged over the 4 directions:

    - ``follow``: Pearson r of the map of the shifted input with the original map shifted by s;
    - ``stay``: r of the map of the shifted input with the original map where it was;
    - ``shift_alone``: r of the original map with itself shifted (near 1: s too small to tell the two apart);
    - ``kept``: fraction of the directions whose prediction equals the unshifted one.

    Maps: the true class's, bilinearly upsampled to the input size; r over the pixels no shift vacated. The
    summaries (``record``) are over the ``informative`` images: those whose map is not constant (a flat map
    has no position to follow, and r = 0 for either hypothesis).
    """

    shifts: tuple[int, ...]
    index: torch.Tensor  # N, into the test images
    follow: torch.Tensor  # S×N
    stay: torch.Tensor  # S×N
    shift_alone: torch.Tensor  # S×N
    kept: torch.Tensor  # S×N
    informative: torch.Tensor  # N bool: the unshifted map is not constant
    example_maps: torch.Tensor  # S+1×E×H×W: the first E images' maps, unshifted then shifted right by each s

    def record(self) -> dict[str, Any]:
        rows, use = [], self.informative
        for k, s in enumerate(self.shifts):
            f, st = self.follow[k, use], self.stay[k, use]
            rows.append({"shift_px": s, "follow_r": round(f.mean().item(), 4), "stay_r": round(st.mean().item(), 4),
                         "follow_minus_stay": round((f - st).mean().item(), 4),
                         "follow_wins": round((f > st).float().mean().item(), 4),
                         "shift_alone_r": round(self.shift_alone[k, use].mean().item(), 4),
                         "prediction_kept": round(self.kept[k, use].mean().item(), 4)})
        return {"shifts_px": list(self.shifts), "images": len(self.index),
                "informative_images": int(use.sum()), "rows": rows,
                "what": "per test image, true-class map upsampled to the input: Pearson r of the map of the input "
                        "shifted by s px (right, down, left, up; zero fill; mean of the 4) with the original map "
                        "shifted alike (follow_r) and with the original map unshifted (stay_r), over the pixels no "
                        "shift vacated; follow_wins = fraction of images with follow_r > stay_r; shift_alone_r = r of "
                        "the original map with itself shifted; prediction_kept = fraction of unchanged predictions; all "
                        "means over the informative images (map not constant)"}


def _upsampled(maps: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    own = maps[torch.arange(len(labels)), labels][:, None]  # N×1×m×m
    return torch.nn.functional.interpolate(own, size=size, mode="bilinear", align_corners=False)[:, 0]


def translation_control(model: EncDec, x_u8: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                        mean: tuple[float, ...], std: tuple[float, ...], shifts: tuple[int, ...], *,
                        batch_size: int = 500, examples: int = 4) -> TranslationControl:
    """The translation control on the test images ``x_u8[index]`` (uint8 N×C×H×W) with true classes ``labels``."""
    x, y = x_u8[index], labels[index]
    size = tuple(x.shape[-2:])
    if shifts and max(shifts) >= min(size):
        raise ValueError(f"shift {max(shifts)} px leaves nothing of a {size[0]}×{size[1]} image")
    maps, logits = predict_maps(model, x, mean, std, batch_size=batch_size)
    base, pred = _upsampled(maps, y, size), logits.argmax(1)
    rows: dict[str, list[torch.Tensor]] = {"follow": [], "stay": [], "shift_alone": [], "kept": []}
    example_maps = [base[:examples]]
    for s in shifts:
        per_dir: dict[str, list[torch.Tensor]] = {k: [] for k in rows}
        for uy, ux in DIRECTIONS:
            dy, dx = uy * s, ux * s
            maps_s, logits_s = predict_maps(model, shift_images(x, dy, dx), mean, std, batch_size=batch_size)
            moved = _upsampled(maps_s, y, size)
            if (dy, dx) == (0, s):
                example_maps.append(moved[:examples])
            moved_kept = _kept(moved, dy, dx)
            per_dir["follow"].append(pearson_rows(moved_kept, _kept(shift_images(base, dy, dx), dy, dx)))
            per_dir["stay"].append(pearson_rows(moved_kept, _kept(base, dy, dx)))
            per_dir["shift_alone"].append(pearson_rows(_kept(shift_images(base, dy, dx), dy, dx), _kept(base, dy, dx)))
            per_dir["kept"].append((logits_s.argmax(1) == pred).float())
        for k, v in per_dir.items():
            rows[k].append(torch.stack(v).mean(0))
    n = len(y)
    stacked = {k: torch.stack(v) if v else torch.empty(0, n) for k, v in rows.items()}
    informative = base.flatten(1).amax(1) > base.flatten(1).amin(1)
    return TranslationControl(tuple(shifts), index, stacked["follow"], stacked["stay"], stacked["shift_alone"],
                              stacked["kept"], informative, torch.stack(example_maps))
