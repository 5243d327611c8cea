"""Figures of paper 1 §IV: reconstructed maps of a layer with duplicate groups outlined
(Fig 9, 11a, 11b, 13) and the upper-triangular pHash similarity matrix (Fig 10, 12, 14)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

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
                     dead: Sequence[int] = (), silent: Sequence[int] = (), outline: bool = True,
                     cols: int | None = None) -> plt.Figure:
    """Grid of K reconstructed maps [K, H, W] (0–255 grayscale), kernel index above each;
    maps of one near-duplicate group share a coloured frame; ``dead`` kernels (dead in most probe
    images) and ``silent`` maps (zero for this image only) are marked.

    Drawn as one mosaic image in one Axes (a subplot per map takes seconds for 128 maps).
    """
    k, h, w = pixels.shape
    cols = cols or min(k, 16 if k > 64 else 8)
    rows = math.ceil(k / cols)
    pad, top = 4, max(4, h // 3)  # px between tiles; px above each tile for its label
    cell_h, cell_w = h + pad + top, w + pad
    mosaic = np.full((rows * cell_h, cols * cell_w), np.nan)
    origin = []
    for idx in range(k):
        r, c = divmod(idx, cols)
        y, x = r * cell_h + top, c * cell_w + pad // 2
        mosaic[y : y + h, x : x + w] = pixels[idx]
        origin.append((y, x))
    fig, ax = plt.subplots(figsize=(1.1 * cols, 1.2 * rows + 0.9), dpi=110)
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    color_of = {}
    if outline:
        for g, members in enumerate(groups):
            for m in members:
                color_of[m] = _GROUP_COLORS[g % len(_GROUP_COLORS)]
    dead, silent = set(dead), set(silent)
    for idx, (y, x) in enumerate(origin):
        label = f"k={idx}" + (" dead" if idx in dead else " silent" if idx in silent else "")
        ax.text(x + w / 2, y - 1, label, ha="center", va="bottom", fontsize=6.5,
                color="grey" if idx in dead | silent else "black")
        if idx in color_of:
            ax.add_patch(Rectangle((x - 1.5, y - 1.5), w + 2, h + 2, fill=False, ec=color_of[idx], lw=2.5))
    sub = ""
    if outline and groups:
        parts = [f"G{g + 1}: {list(m)}" for g, m in enumerate(groups[:6])]
        more = f" … (+{len(groups) - 6})" if len(groups) > 6 else ""
        sub = "\nframes of one colour = one near-duplicate group — " + "; ".join(parts) + more
    elif outline:
        sub = "\nno near-duplicate groups at this threshold"
    if silent - dead:
        sub += "\n'silent' = all-zero reconstruction for this image (no activation); 'dead' = silent in most probe images"
    ax.set_title(title + sub, fontsize=9)
    fig.tight_layout()
    return fig


FIGURE_KINDS = ("maps", "groups", "matrix")


def layer_figures(layers: Sequence, cfg, *, probe_label: str, model_tag: str,
                  paper: dict[int, dict[str, str]]) -> Iterator[tuple[str, plt.Figure]]:
    """Each figure of every layer (``cnnvis.studies.similarity.LayerStudy``) once, as (file stem, Figure): under
    the paper's name where it has one (``paper[layer index][kind]``), else maps_<layer> (groups outlined) and
    matrix_<layer>; the plain maps figure only as a paper figure."""
    for layer in layers:
        names = {"groups": f"maps_{layer.name}", "matrix": f"matrix_{layer.name}", **paper.get(layer.index, {})}
        for kind in FIGURE_KINDS:
            if kind in names:
                yield names[kind], _layer_figure(kind, layer, cfg, probe_label=probe_label, model_tag=model_tag)


def _layer_figure(kind: str, layer, cfg, *, probe_label: str, model_tag: str) -> plt.Figure:
    ls, red = layer.similarity, layer.redundancy
    if kind == "matrix":
        return similarity_matrix_figure(
            ls.mean, title=f"{model_tag}: pHash similarity of the feature maps of {layer.name}", threshold=cfg.threshold,
            groups=red.groups, dead=red.dead_kernels, method=cfg.method, n_images=ls.dead_maps.shape[0])
    what = f"{model_tag}: deconvnet reconstructions of the {red.num_kernels} feature maps of {layer.name} ({probe_label})"
    silent = np.flatnonzero(ls.dead_maps[0]).tolist()  # the pixels show probe image 0
    if kind == "maps":
        return maps_grid_figure(layer.pixels, title=what, outline=False, dead=red.dead_kernels, silent=silent)
    return maps_grid_figure(layer.pixels, title=what, groups=red.groups, dead=red.dead_kernels, silent=silent)
