"""Figures of paper 1 §II–III (deconvnet projections, Grad-CAM, Guided Grad-CAM) and the sanity checks.

Every function takes numpy-able tensors already on the CPU and returns a Figure.
Images are given for display in [0, 1] (``cnnvis.data.denormalize``), [N, C, H, W].
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cnnvis.attribution.faithfulness import SIGN_RULES
from cnnvis.io import Saved

CAM_CMAP = "jet"


def _hwc(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """[C, H, W] → [H, W] (one channel) or [H, W, 3] for imshow."""
    a = np.asarray(img, dtype=np.float32)
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def stretch(a: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] over the whole array (a flat array → all 0.5)."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return np.full_like(a, 0.5) if hi - lo < 1e-12 else (a - lo) / (hi - lo)


def _show_image(ax: plt.Axes, img: torch.Tensor | np.ndarray) -> None:
    a = _hwc(img)
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)


def _off(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _stretch_colorbar(fig: Figure, axes: Sequence[plt.Axes], label: str, cmap: str = "gray") -> None:
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=cmap), ax=list(axes), fraction=0.02, pad=0.01, label=label)


def mosaic(tiles: Sequence[np.ndarray], ncols: int, pad: int = 2) -> np.ndarray:
    """Tiles ([H, W] or [H, W, 3], in [0, 1]) on one canvas, row-major, separated by ``pad`` px of white."""
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / ncols)
    shape = (rows * (h + pad) - pad, ncols * (w + pad) - pad) + tiles[0].shape[2:]
    canvas = np.ones(shape, dtype=np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = t
    return canvas


def _label_tiles(ax: plt.Axes, labels: Sequence[str], ncols: int, h: int, w: int, pad: int = 2) -> None:
    for i, text in enumerate(labels):
        r, c = divmod(i, ncols)
        ax.text(c * (w + pad) + 1, r * (h + pad) + 1, text, color="yellow", fontsize=6, va="top", ha="left",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 0.5, "linewidth": 0})


def projection_grid(image: torch.Tensor, recon: torch.Tensor, *, title: str, channels: Sequence[int] | None = None,
                    ncols: int = 8) -> Figure:
    """One image and the deconvnet projection of each of a layer's K feature maps ([K, C, H, W]), each stretched.

    Drawn as one mosaic (one image per map would cost a matplotlib Axes each).
    """
    k = recon.shape[0]
    channels = list(range(k)) if channels is None else list(channels)
    tiles = [stretch(_hwc(recon[i])) for i in range(k)]
    rows = math.ceil(k / ncols)
    fig = plt.figure(figsize=(1.1 * ncols + 3.2, 1.1 * rows + 1.2))
    ax_in = fig.add_axes((0.02, 0.55, 0.16, 0.3))
    _show_image(ax_in, image)
    ax_in.set_title("input", fontsize=8)
    _off(ax_in)
    ax = fig.add_axes((0.2, 0.04, 0.7, 0.8))
    gray = tiles[0].ndim == 2
    ax.imshow(mosaic(tiles, ncols), cmap="gray" if gray else None, vmin=0, vmax=1)
    _label_tiles(ax, [f"{c + 1}" for c in channels], ncols, *tiles[0].shape[:2])
    _off(ax)
    ax.set_xlabel(f"feature maps 1-{k}, row by row (map number top left)", fontsize=8)
    _stretch_colorbar(fig, [ax], "projection, min-max per map")
    fig.suptitle(title, fontsize=10)
    return fig


def map_across_images(images: torch.Tensor, recon: torch.Tensor, labels: Sequence[str], *, title: str,
                      ncols: int = 8) -> Figure:
    """One feature map projected for many images: row pairs of input / projection ([N, C, H, W] each)."""
    n = images.shape[0]
    ncols = min(ncols, n)
    tiles: list[np.ndarray] = []
    names: list[str] = []
    for start in range(0, n, ncols):  # one row of inputs, then the row of their projections
        idx = list(range(start, min(start + ncols, n)))
        blank = [np.ones_like(_hwc(images[0]))] * (ncols - len(idx))
        tiles += [_hwc(images[i]) for i in idx] + blank + [stretch(_hwc(recon[i])) for i in idx] + blank
        names += [labels[i] for i in idx] + [""] * len(blank) + ["proj."] * len(idx) + [""] * len(blank)
    rows = len(tiles) // ncols
    fig, ax = plt.subplots(figsize=(1.3 * ncols + 1.5, 1.3 * rows + 1.0))
    ax.imshow(mosaic(tiles, ncols), cmap="gray" if tiles[0].ndim == 2 else None, vmin=0, vmax=1)
    _label_tiles(ax, names, ncols, *tiles[0].shape[:2])
    _off(ax)
    ax.set_xlabel("rows alternate: test images (class) / projection of the map for that image (min-max per image)",
                  fontsize=8)
    _stretch_colorbar(fig, [ax], "projection, min-max per image")
    fig.suptitle(title, fontsize=10)
    return fig


def _overlay(ax: plt.Axes, image: torch.Tensor, cam: np.ndarray) -> None:
    a = _hwc(image)
    ax.imshow(a.mean(-1) if a.ndim == 3 else a, cmap="gray", vmin=0, vmax=1)
    ax.imshow(cam, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=0.5)


def method_columns(images: torch.Tensor, columns: Mapping[str, torch.Tensor], row_labels: Sequence[str], *,
                   title: str, overlay: Sequence[str] = ()) -> Figure:
    """Rows = images, columns = the input then one map per method ([N, C', H, W] each).

    Maps are shown per image min-max stretched (signed maps: |map| summed over channels);
    columns named in ``overlay`` are drawn as a heat map over the grayscale input.
    """
    n, m = images.shape[0], len(columns)
    fig, axes = plt.subplots(n, m + 1, figsize=(1.7 * (m + 1) + 1.2, 1.7 * n + 0.9), squeeze=False)
    for ax in axes.flat:
        _off(ax)
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
        for j, (name, maps) in enumerate(columns.items(), start=1):
            mp = maps[i]
            mp = mp[0] if mp.shape[0] == 1 else mp.abs().sum(0)
            flat = float(mp.max() - mp.min()) < 1e-12
            mp = np.zeros(mp.shape, dtype=np.float32) if flat else stretch(mp)
            if flat:
                axes[i, j].text(0.5, 0.5, "map is constant\n(all zero)", color="white", fontsize=7, ha="center",
                                va="center", transform=axes[i, j].transAxes)
            if name in overlay:
                _overlay(axes[i, j], images[i], mp)
            else:
                axes[i, j].imshow(mp, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=8)
    for j, name in enumerate(columns, start=1):
        axes[0, j].set_title(name, fontsize=8)
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=CAM_CMAP), ax=axes.ravel().tolist(), fraction=0.02, pad=0.01,
                 label="heat-map columns: min-max per image")
    fig.suptitle(title, fontsize=10)
    return fig


def randomization_curves(results: Mapping[str, Sequence[Mapping[str, float]]], *, title: str) -> Figure:
    """Spearman rank correlation with the trained model's maps vs how far down the weights are re-initialized."""
    fig, ax = plt.subplots(figsize=(7, 4))
    layers = None
    for name, steps in results.items():
        layers = [s["layer"] for s in steps]
        mean = np.array([s["spearman_mean"] for s in steps])
        std = np.array([s["spearman_std"] for s in steps])
        x = np.arange(len(steps))
        ax.plot(x, mean, marker="o", label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    ax.set_xticks(range(len(layers or [])))
    ax.set_xticklabels(layers or [], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("weights re-initialized from the output down to this layer (cumulative)")
    ax.set_ylabel("Spearman ρ with the trained\nmodel's |map| (mean ± std)")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_ylim(-0.2, 1.05)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def faithfulness_curves(curves: Mapping[str, Mapping[str, Any]], *, title: str) -> Figure:
    """Mean target probability vs fraction of pixels deleted / inserted, per method (shaded: ± 1 s.e.m.).

    ``curves[method]``: "deletion" / "insertion" curves [N, S+1] and their mean areas "deletion_auc" /
    "insertion_auc" (as computed by ``cnnvis.attribution.faithfulness``)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for name, c in curves.items():
            arr = np.asarray(c[kind])
            x = np.linspace(0, 1, arr.shape[1])
            mean, sem = arr.mean(0), arr.std(0) / np.sqrt(arr.shape[0])
            ax.plot(x, mean, label=f"{name} (AUC {c[f'{kind}_auc']:.3f})")
            ax.fill_between(x, mean - sem, mean + sem, alpha=0.15)
        ax.set_xlabel(f"fraction of pixels {'deleted' if kind == 'deletion' else 'inserted'}, most important first")
        ax.set_ylabel("probability of the true class")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} area = more faithful)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle(title + "\n(shaded: ± 1 standard error of the mean)", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the figures of stage `visualize`


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def attribution_figures(study: Any) -> Iterator[tuple[str, Saved]]:
    """Every figure of a ``cnnvis.studies.visualize.AttributionStudy`` as (file stem, Saved), drawn one at a time:
    paper 1 Fig 2–8, then the randomization test (when run) and the deletion / insertion curves."""
    cfg = study.config
    signal = ("strongest activation" if cfg.projection == "max" else "whole map") + (", rectified" if cfg.rectify else "")

    def saved(fig: Figure) -> Saved:
        return Saved(fig, {"dpi": 110})

    for j, p in enumerate(study.first_layer):
        key = f"p1_fig{2 + j:02d}_deconv_{p.layer.replace('.', '_')}_{slug(p.label)}" if j < 3 else \
            f"p1_fig02-04_extra_deconv_{slug(p.label)}"
        yield key, saved(projection_grid(
            p.image, p.recon,
            title=f"Deconvnet projection of each of the {p.recon.shape[0]} feature maps of {p.layer} (first conv "
                  f"layer) to pixel space\ntest image #{p.index}, class '{p.label}' (signal: {signal})"))
    p = study.second_layer
    yield f"p1_fig05b_deconv_{p.layer.replace('.', '_')}", saved(projection_grid(
        p.image, p.recon,
        title=f"Deconvnet projection of each of the {p.recon.shape[0]} feature maps of {p.layer} (second conv layer)\n"
              f"test image #{p.index}, class '{p.label}' (signal: {signal})"))
    for key, m in zip(("p1_fig05a", "p1_fig06"), study.map_across, strict=True):
        yield f"{key}_map{m.channel + 1}_{m.layer.replace('.', '_')}", saved(map_across_images(
            m.images, m.recon, [f"#{i} {c}" for i, c in zip(m.indices, m.labels, strict=True)],
            title=f"Feature map {m.channel + 1} of {m.layer} projected to pixel space for "
                  f"{len(m.indices)} test images (deconvnet, signal: {signal})"))

    c = study.cams
    first, last = c.layers
    rows = [f"#{i}: {y}\n(pred. {p})" for i, y, p in zip(c.indices, c.labels, c.predicted, strict=True)]
    fig7 = {f"Grad-CAM at {first}\n(first conv layer)": c.gradcam_first,
            f"Grad-CAM at {last}\n(last conv layer)": c.gradcam_last}
    yield "p1_fig07_gradcam_first_vs_last", saved(method_columns(
        c.images, fig7, rows, overlay=list(fig7),
        title="Grad-CAM (eq. 1: averaged gradients, ReLU, bilinear upsampling) for the true class:\n"
              "first vs last conv layer"))
    fig8 = {"backpropagation\n(|gradient|)": c.saliency, f"Grad-CAM\n({last})": c.gradcam_last,
            "Guided Grad-CAM\n(|map|, channels summed)": c.guided_gradcam}
    yield "p1_fig08_gradcam", saved(method_columns(
        c.images, fig8, rows, overlay=[k for k in fig8 if k.startswith("Grad-CAM")],
        title="Original, backpropagation (saliency), Grad-CAM and Guided Grad-CAM for the true class"))

    n = len(study.eval_indices)
    if study.randomization is not None:
        yield "beyond_randomization_test", saved(randomization_curves(
            study.randomization,
            title=f"Model-parameter randomization test (Adebayo et al. 2018), {n} test images:\n"
                  "does the map change when the weights are re-initialized, output layer first?"))
    faith = study.faithfulness
    yield "beyond_deletion_insertion", saved(faithfulness_curves(
        faith.figure_curves(cfg.deletion_baseline, cfg.insertion_baseline),
        title=f"Deletion / insertion faithfulness on {faith.n} test images (deletion → {cfg.deletion_baseline}, "
              f"insertion from {cfg.insertion_baseline});\npixel order: sign rule '{faith.sign}' = "
              f"{SIGN_RULES[faith.sign].split(':')[0]}; random = mean of {faith.random_maps} random maps per image"))
