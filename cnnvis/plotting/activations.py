"""Figures of a layer's activations (paper 3 §3.1, paper 2 Fig 2)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from cnnvis.io import Saved

VOLUME_FILE = "p3_volume.nrrd"


def _img(ax, a: np.ndarray, **kw) -> object:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.clip(a.transpose(1, 2, 0), 0, 1)
    im = ax.imshow(a, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def activation_grid(image: np.ndarray, maps: np.ndarray, *, layer: str, label: str, cols: int = 8) -> Figure:
    """Every filter output K×H×W of ``layer`` for one input (paper 3 §3.1.1), one shared colour scale."""
    k = len(maps)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols + 1, figsize=(1.5 * (cols + 1) + 0.6, 1.55 * rows + 1.0), squeeze=False)
    vmax = float(maps.max()) or 1.0
    _img(axes[0, 0], image, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title(f"input\n{label}", fontsize=8)
    for r in range(1, rows):
        axes[r, 0].axis("off")
    im = None
    for i in range(rows * cols):
        ax = axes[i // cols, 1 + i % cols]
        if i >= k:
            ax.axis("off")
            continue
        im = _img(ax, maps[i], cmap="viridis", vmin=min(0.0, float(maps.min())), vmax=vmax)
        ax.set_title(f"filter {i}", fontsize=7)
    fig.suptitle(f"Every filter output of {layer} for one input (paper 3 §3.1.1); shared colour scale", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    cax = fig.add_axes((0.94, 0.15, 0.015, 0.7))
    fig.colorbar(im, cax=cax, label="activation")
    return fig


def kernels_and_maps(image: np.ndarray, kernels: np.ndarray, maps: np.ndarray, *, layer: str, label: str,
                     cols: int = 8) -> Figure:
    """Each kernel (K×C×kh×kw; channel mean if C > 1) next to its feature map (paper 2 Fig 2)."""
    k = len(kernels)
    rows = math.ceil(k / cols)
    ker = kernels.mean(axis=1)
    kabs = float(np.abs(ker).max()) or 1.0
    vmax = float(maps.max()) or 1.0
    fig, axes = plt.subplots(rows, 2 * cols + 1, figsize=(1.0 * (2 * cols + 1), 1.15 * rows + 1.3), squeeze=False)
    _img(axes[0, 0], image, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title(f"input\n{label}", fontsize=7)
    for r in range(1, rows):
        axes[r, 0].axis("off")
    ki = mi = None
    for i in range(rows * cols):
        ak, am = axes[i // cols, 1 + 2 * (i % cols)], axes[i // cols, 2 + 2 * (i % cols)]
        if i >= k:
            ak.axis("off")
            am.axis("off")
            continue
        ki = _img(ak, ker[i], cmap="RdBu_r", vmin=-kabs, vmax=kabs)
        mi = _img(am, maps[i], cmap="viridis", vmin=min(0.0, float(maps.min())), vmax=vmax)
        ak.set_title(f"kernel {i}", fontsize=6)
        am.set_title(f"map {i}", fontsize=6)
    fig.suptitle(f"Kernels of {layer} (red +, blue −) and the feature map each produces for the input "
                 "(paper 2 Fig 2)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    fig.colorbar(ki, cax=fig.add_axes((0.88, 0.15, 0.01, 0.7)), label="kernel weight")
    fig.colorbar(mi, cax=fig.add_axes((0.945, 0.15, 0.01, 0.7)), label="activation")
    return fig


def _stack(ax, vol: np.ndarray, title: str, vmax: float) -> None:
    """Filter outputs as semi-transparent planes stacked along z (filter index)."""
    k, h, w = vol.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cmap = plt.get_cmap("viridis")
    for z in range(k):
        colors = cmap(np.clip(vol[z] / vmax, 0, 1))
        colors[..., 3] = 0.9 * np.clip(vol[z] / vmax, 0, 1) ** 1.5  # weak activations transparent, strong opaque
        ax.plot_surface(xx, np.full_like(xx, z, dtype=float), h - 1 - yy, facecolors=colors, rstride=1, cstride=1,
                        shade=False, linewidth=0)
    ax.set_xlabel("column")
    ax.set_ylabel("filter (stack axis)")
    ax.set_zlabel("row")
    ax.set_title(title, fontsize=9)
    ax.view_init(elev=20, azim=-60)
    ax.set_box_aspect((1, 1.4, 1))


def volume_render(vol: np.ndarray, vol_pca: np.ndarray, *, layer: str, volume_file: str) -> Figure:
    """The K×H×W stack of filter outputs in 3D, in filter order and PCA-reordered (paper 3 Fig 2, Fig 3)."""
    vmax = float(max(vol.max(), 1e-12))
    fig = plt.figure(figsize=(12, 5.6))
    _stack(fig.add_subplot(1, 2, 1, projection="3d"), vol, "filter order (paper 3 Fig 2)", vmax)
    _stack(fig.add_subplot(1, 2, 2, projection="3d"), vol_pca, "PCA-reordered filters (paper 3 Fig 3)", vmax)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, vmax))
    fig.colorbar(sm, ax=fig.axes, shrink=0.6, label="activation (opacity grows with it)")
    fig.suptitle(f"{layer} filter outputs stacked into a 3D volume (paper 3 §3.1.2); volume file: {volume_file}",
                 fontsize=10)
    return fig


def kmeans_orderings(slice_rows: np.ndarray, orderings: Sequence, *, layer: str, column: int) -> Figure:
    """The vertical slice (rows = filters) and its rows grouped by k-means for each k (paper 3 §3.1.3)."""
    n = 1 + len(orderings)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 0.8, 5.2), squeeze=False)
    vmax = float(slice_rows.max()) or 1.0
    kw = dict(cmap="viridis", vmin=min(0.0, float(slice_rows.min())), vmax=vmax, aspect="auto", interpolation="nearest")
    im = axes[0, 0].imshow(slice_rows, **kw)
    axes[0, 0].set_title(f"slice at column {column}\n(filter order)", fontsize=9)
    axes[0, 0].set_ylabel("filter (row of the slice)")
    for ax, o in zip(axes[0, 1:], orderings, strict=True):
        ax.imshow(slice_rows[o.order], **kw)
        for b in o.boundaries:
            ax.axhline(b - 0.5, color="white", linewidth=2)
        ax.set_title(f"{o.k} means\n(white bars separate clusters)", fontsize=9)
        ax.set_yticks(range(len(o.order)))
        ax.set_yticklabels([str(i) for i in o.order], fontsize=5)
    for ax in axes[0]:
        ax.set_xlabel("image row (top → bottom)")
    fig.suptitle(f"k-means on the rows of a vertical slice of the {layer} volume (paper 3 §3.1.3); "
                 "y labels = filter index", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    fig.colorbar(im, cax=fig.add_axes((0.94, 0.15, 0.012, 0.7)), label="activation")
    return fig


def pca_orderings(slice_rows: np.ndarray, slice_order: np.ndarray, maps: np.ndarray, map_order: np.ndarray, *,
                  layer: str, column: int, cols: int = 8) -> Figure:
    """PCA reordering of the slice rows (left) and of whole filter outputs (right) (paper 3 §3.1.3)."""
    k = len(maps)
    rows = math.ceil(k / cols)
    fig = plt.figure(figsize=(4.5 + 1.3 * cols, max(5.0, 1.35 * rows + 1.2)))
    gs = fig.add_gridspec(rows, cols + 3, width_ratios=[1.4, 1.4, 0.3] + [1] * cols)
    vmax = float(maps.max()) or 1.0
    vmin = min(0.0, float(maps.min()))
    kw = dict(cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    for j, (rows_img, order, title) in enumerate(((slice_rows, np.arange(len(slice_rows)), "slice, filter order"),
                                                   (slice_rows[slice_order], slice_order, "slice rows by PC1 score"))):
        ax = fig.add_subplot(gs[:, j])
        ax.imshow(rows_img, aspect="auto", **kw)
        ax.set_title(f"{title}\n(column {column})", fontsize=9)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([str(i) for i in order], fontsize=5)
        ax.set_xlabel("image row")
        ax.set_ylabel("filter")
    for i in range(k):
        ax = fig.add_subplot(gs[i // cols, 3 + i % cols])
        ax.imshow(maps[map_order[i]], **kw)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{i}: filter {map_order[i]}", fontsize=6)
    fig.suptitle(f"PCA reordering of {layer} (paper 3 §3.1.3): left, rows of a vertical slice sorted by first-"
                 "component score;\nright, whole filter outputs sorted by their first-component score "
                 "(read left→right, top→bottom)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def activation_figures(views: Any) -> Iterator[tuple[str, Saved]]:
    """The files of a ``cnnvis.studies.synthesis.ActivationViews`` (paper 3 §3.1, paper 2 Fig 2) as (name, Saved),
    one at a time: the grid, the kernels (a conv layer only), the volume's rendering, the orderings (the NRRD volume
    itself is data: ``cnnvis.io.save_volume``)."""
    v = views
    yield "p3_activation_grid", Saved(activation_grid(v.image, v.maps, layer=v.layer, label=v.label), {"dpi": 110})
    if v.kernels is not None:
        yield "p2_fig02_kernels_maps", Saved(kernels_and_maps(v.image, v.kernels, v.maps, layer=v.layer,
                                                              label=v.label), {"dpi": 110})
    yield "p3_volume", Saved(volume_render(v.volume, v.volume[v.map_order], layer=v.layer, volume_file=VOLUME_FILE),
                             {"dpi": 100})
    yield "p3_kmeans", Saved(kmeans_orderings(v.slice_rows, v.orderings, layer=v.layer, column=v.column), {"dpi": 110})
    yield "p3_pca", Saved(pca_orderings(v.slice_rows, v.slice_order, v.maps, v.map_order, layer=v.layer,
                                        column=v.column), {"dpi": 110})
