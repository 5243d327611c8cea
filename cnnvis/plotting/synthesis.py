"""Figures of feature synthesis (paper 2 eq. (1)–(4)): activation maximization and inversion.

Images come in pixel space, float in [0, 1], N×C×H×W (C = 1 gray, 3 RGB).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from cnnvis.io import Saved


def _show(ax, img: torch.Tensor | np.ndarray, *, stretch: bool = False) -> None:
    """One C×H×W image in [0, 1] on ``ax``; ``stretch`` maps its own min..max to black..white."""
    a = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img, dtype=np.float32)
    if stretch:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if a.shape[0] == 1:
        ax.imshow(a[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(a.transpose(1, 2, 0), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = min(cols, n)
    return math.ceil(n / cols), cols


def actmax_classes(images: torch.Tensor, class_names: Sequence[str], initial: torch.Tensor, final: torch.Tensor,
                   *, settings: str, cols: int = 5) -> Figure:
    """One synthesized image per class (activation maximization of the class logit)."""
    n = len(images)
    rows, cols = _grid(n, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.35 * rows + 0.9), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        _show(ax, images[i])
        ax.set_title(f"{class_names[i]}\nlogit {float(initial[i]):.1f} → {float(final[i]):.1f}", fontsize=9)
    fig.suptitle("Activation maximization per class (paper 2 eq. (2)–(3)): input optimized to raise one class logit\n"
                 f"{settings}; pixels 0 (black) … 1 (white)", fontsize=10)
    fig.tight_layout()
    return fig


def actmax_channels(images: torch.Tensor, channels: Sequence[int], initial: torch.Tensor, final: torch.Tensor,
                    *, layer: str, settings: str, cols: int = 8) -> Figure:
    """One synthesized image per conv channel (each stretched to its own range)."""
    n = len(images)
    rows, cols = _grid(n, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.65 * rows + 1.0), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        _show(ax, images[i], stretch=True)
        ax.set_title(f"ch {channels[i]}: {float(final[i]):.2f}", fontsize=7)
    fig.suptitle(f"Activation maximization of each channel of {layer} (paper 2 eq. (3)); "
                 "title = channel: mean activation reached\n"
                 f"{settings}; each image stretched to its own min…max", fontsize=9)
    fig.tight_layout()
    return fig


def inversion(originals: torch.Tensor, recon: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
              *, labels: Sequence[str], settings: str) -> Figure:
    """Rows: images; columns: the original, then its reconstruction from each layer's features.

    ``recon``: (layer name, images N×C×H×W in [0, 1], relative feature error N) per layer.
    """
    n, cols = len(originals), 1 + len(recon)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.35 * n + 1.0), squeeze=False)
    for r in range(n):
        _show(axes[r, 0], originals[r])
        axes[r, 0].set_title(f"original: {labels[r]}", fontsize=9)
        for c, (layer, imgs, err) in enumerate(recon, start=1):
            _show(axes[r, c], imgs[r])
            axes[r, c].set_title(f"from {layer}\nrel. error {float(err[r]):.3f}", fontsize=9)
    fig.suptitle("Feature inversion (paper 2 eq. (4), Mahendran & Vedaldi): image whose features match the original's\n"
                 "rel. error = ‖φ(x) − φ(x0)‖ / ‖φ(x0)‖ reached; " + settings, fontsize=9)
    fig.tight_layout()
    return fig


def settings(cfg: Any) -> str:
    """The activation maximization settings of a ``cnnvis.synthesis.SynthesisConfig``, for a figure title."""
    return (f"{cfg.steps} steps, step {cfg.lr:g}, L2 decay {cfg.l2_decay:g}, blur σ={cfg.blur_sigma:g} every "
            f"{cfg.blur_every or '—'}, gradient clipped below percentile {cfg.clip_percentile:g}")


def synthesis_figures(study: Any) -> Iterator[tuple[str, Saved]]:
    """The figures of a ``cnnvis.studies.synthesis.SynthesisStudy`` (paper 2) as (file stem, Saved), one at a time;
    its activation views are drawn by ``cnnvis.plotting.activations.activation_figures``."""
    cfg, cls, ch = study.config, study.actmax_classes, study.actmax_channels
    yield "p2_actmax_classes", Saved(actmax_classes(cls.images, list(study.classes), cls.initial, cls.final,
                                                    settings=settings(cfg)), {"dpi": 110})
    yield "p2_actmax_channels", Saved(actmax_channels(ch.images, list(ch.targets), ch.initial, ch.final, layer=ch.layer,
                                                      settings=settings(cfg)), {"dpi": 110})
    yield "p2_inversion", Saved(inversion(
        study.originals, [(inv.layer, inv.images, inv.rel_error) for inv in study.inversions],
        labels=list(study.original_labels),
        settings=f"{cfg.inversion_steps} Adam steps, λ_TV={cfg.tv_weight:g} (β={cfg.tv_beta:g}), "
                 f"λ_α={cfg.alpha_weight:g} (α={cfg.alpha:g})"), {"dpi": 110})
