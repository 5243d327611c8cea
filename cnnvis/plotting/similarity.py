"""Figures of paper 1 §IV: reconstructed maps of a layer with duplicate groups outlined
(Fig 9, 11a, 11b, 13) and the upper-triangular pHash similarity matrix (Fig 10, 12, 14)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

_GROUP_COLORS = plt.get_cmap("tab10").colors


def similarity_matrix_figure(mean: np.ndarray, *, title: str, threshold: float,
                             groups: Sequence[Sequence[int]] = (), dead: Sequence[int] = (),
                             method: str = "mean", n_images: int | None = None) -> plt.Figure:
    """Heat map of the strict upper triangle of a K×K similarity matrix (1 − Hamming/64)."""
    k = mean.shape[0]
    show = np.array(mean, dtype=float)
    show[np.tril_indices(k)] = np.nan  # upper-triangular, as the paper draws it
    fig, ax = plt.subplots(figsize=(7.2, 6.2), dpi=110)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(show, cmap=cmap, vmin=0.3, vmax=1.0, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("pHash similarity = 1 − Hamming/64 (mean over probe images)")
    cb.ax.axhline(threshold, color="red", lw=1.5)
    iu = np.triu_indices(k, 1)
    dup = np.flatnonzero(np.nan_to_num(mean[iu], nan=0.0) >= threshold)
    ax.scatter(iu[1][dup], iu[0][dup], s=max(4, 600 / k), facecolors="none", edgecolors="red", linewidths=0.8,
               label=f"pairs ≥ {threshold:g} (near-duplicates)")
    for d in dead:
        ax.axhline(d, color="grey", lw=0.5, ls=":")
        ax.axvline(d, color="grey", lw=0.5, ls=":")
    step = max(1, k // 16)
    ax.set_xticks(range(0, k, step))
    ax.set_yticks(range(0, k, step))
    ax.set_xlabel("kernel index j")
    ax.set_ylabel("kernel index i")
    extra = f"; {n_images} probe images" if n_images else ""
    ax.set_title(f"{title}\n{len(groups)} duplicate groups, {len(dead)} dead kernels "
                 f"(pHash '{method}'{extra})", fontsize=10)
    if len(dup):
        ax.legend(loc="lower left", fontsize=8, frameon=True)
    fig.tight_layout()
    return fig


def maps_grid_figure(pixels: np.ndarray, *, title: str, groups: Sequence[Sequence[int]] = (),
                     dead: Sequence[int] = (), outline: bool = True, cols: int | None = None) -> plt.Figure:
    """Grid of K reconstructed maps [K, H, W] (0–255 grayscale), kernel index above each;
    maps of one near-duplicate group share a coloured frame; dead maps are marked."""
    k = pixels.shape[0]
    cols = cols or min(k, 16 if k > 64 else 8)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.15 * cols, 1.3 * rows + 0.9), dpi=110, squeeze=False)
    color_of = {}
    if outline:
        for g, members in enumerate(groups):
            for m in members:
                color_of[m] = _GROUP_COLORS[g % len(_GROUP_COLORS)]
    dead = set(dead)
    for idx, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if idx >= k:
            ax.axis("off")
            continue
        ax.imshow(pixels[idx], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        label = f"k={idx}" + (" dead" if idx in dead else "")
        ax.set_title(label, fontsize=7, pad=2, color="grey" if idx in dead else "black")
        color = color_of.get(idx)
        for s in ax.spines.values():
            s.set_visible(color is not None)
            if color is not None:
                s.set_edgecolor(color)
                s.set_linewidth(3)
        if color is not None:
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, ec=color, lw=3, clip_on=False))
    sub = ""
    if outline and groups:
        parts = [f"G{g + 1}: {list(m)}" for g, m in enumerate(groups[:6])]
        more = f" … (+{len(groups) - 6})" if len(groups) > 6 else ""
        sub = "\nframes of one colour = one near-duplicate group — " + "; ".join(parts) + more
    elif outline:
        sub = "\nno near-duplicate groups at this threshold"
    fig.suptitle(title + sub, fontsize=9)
    fig.tight_layout()
    return fig
