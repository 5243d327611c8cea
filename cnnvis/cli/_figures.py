"""The command-line tool's figures, drawn on matplotlib's Agg canvas (no pyplot, no global backend switch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

HEAT = "jet"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _hwc(a: np.ndarray) -> np.ndarray:
    """[C, H, W] → [H, W] (one channel) or [H, W, 3]."""
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _unit(a: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant array → all 0."""
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi - lo <= 0 else (a - lo) / (hi - lo)


def explanation(image: np.ndarray, amap: np.ndarray, title: str) -> Figure:
    """Image [C, H, W] in [0, 1], its map [C', H, W] as computed, and the map's magnitude over the image.

    A one-channel map (a CAM) is drawn with its own values on a colour scale; a
    multi-channel map (a gradient) symmetrically around grey = 0, as an image.
    """
    fig = _figure(9.6, 3.6)
    axes = fig.subplots(1, 3)
    img = _hwc(image)
    gray = img.ndim == 2
    axes[0].imshow(img, cmap="gray" if gray else None, vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=9)
    if amap.shape[0] == 1:
        heat = amap[0]
        shown = axes[1].imshow(heat, cmap=HEAT)
        fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
        axes[1].set_title("map", fontsize=9)
    else:
        peak = float(np.abs(amap).max())
        sym = np.full_like(amap, 0.5) if peak == 0 else np.clip(amap / (2 * peak) + 0.5, 0, 1)
        axes[1].imshow(_hwc(sym), cmap="gray" if amap.shape[0] == 1 else None, vmin=0, vmax=1)
        axes[1].set_title("map (grey = 0)", fontsize=9)
        heat = np.abs(amap).sum(0)
    axes[2].imshow(img, cmap="gray" if gray else None, vmin=0, vmax=1)
    axes[2].imshow(_unit(heat), cmap=HEAT, alpha=0.5, vmin=0, vmax=1)
    axes[2].set_title("overlay (|map|, min-max)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def similarity(matrix: np.ndarray, names: Sequence[str], title: str) -> Figure:
    """The similarity matrix in [0, 1]; entries without a value (dead maps) in grey."""
    m = len(names)
    side = min(12.0, 3.0 + 0.25 * m)
    fig = _figure(side + 1.5, side)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.75")
    shown = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="pHash similarity (1 − Hamming / bits)")
    if m <= 40:
        ax.set_xticks(range(m), names, rotation=90, fontsize=6)
        ax.set_yticks(range(m), names, fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def importance(layers: Sequence[str], mean: Sequence[np.ndarray], std: Sequence[np.ndarray], title: str) -> Figure:
    """One panel per conv layer: each filter's importance, mean (line) ± std (band) over the images.

    A line and a band, not bars: a figure of 20 layers × 512 filters stays fast to draw."""
    n = len(layers)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.6 * cols, 2.4 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name, mu, sd in zip(axes, layers, mean, std, strict=False):
        idx = np.arange(len(mu))
        ax.fill_between(idx, mu - sd, mu + sd, color="C0", alpha=0.3, linewidth=0, step="mid")
        ax.step(idx, mu, where="mid", color="C0", linewidth=0.8)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("filter", fontsize=7)
        ax.set_ylabel("‖∂y/∂W_f‖₂", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlim(-0.5, len(mu) - 0.5)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.6 / fig.get_figheight(), top=1 - 0.5 / fig.get_figheight(),
                        hspace=0.8, wspace=0.35)  # fixed margins: tight_layout would draw every panel once more
    return fig
