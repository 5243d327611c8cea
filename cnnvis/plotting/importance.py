"""Figures of filter importance and pruning (paper 3 §3.2): each returns a matplotlib Figure."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cnnvis.io import Saved  # noqa: E402

if TYPE_CHECKING:
    from cnnvis.studies.prune import PruneStudy

COLORS = {"importance": "tab:red", "l1_norm": "tab:blue", "random": "tab:gray"}
LABELS = {"importance": "gradient importance (ours, paper 3)", "l1_norm": "L1 norm of weights", "random": "random filters"}


def grid_shape(n: int) -> tuple[int, int]:
    """rows × cols for n filters: the largest divisor ≤ √n rows (96 → 6×16, as paper 3's grid)."""
    rows = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return rows, n // rows


def importance_grid(overall: torch.Tensor, same: torch.Tensor, other: torch.Tensor, layer: str, ref_name: str) -> Figure:
    """Filter importances of one layer as grids (paper 3 §3.2.3): averaged over all classes; w.r.t.
    the reference class for inputs of that class; w.r.t. it for inputs of the other classes."""
    rows, cols = grid_shape(overall.numel())
    panels = [(overall, "all classes\n(mean of class-wise relevance)"),
              (same, f"w.r.t. '{ref_name}', inputs of '{ref_name}'\n(same class)"),
              (other, f"w.r.t. '{ref_name}', inputs of other classes\n(different class)")]
    fig, axes = plt.subplots(1, 3, figsize=(min(4 + 0.45 * cols, 7) * 3, 1.2 + 0.45 * rows + 1.2), squeeze=False)
    vmax = float(max(same.max(), other.max()))
    for k, (ax, (v, title)) in enumerate(zip(axes[0], panels, strict=True)):
        im = ax.imshow(v.reshape(rows, cols).numpy(), cmap="viridis", vmin=0, vmax=vmax if k else None)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
        ax.set_xticklabels([str(i) for i in range(cols)], fontsize=6)
        ax.set_yticklabels([f"{r * cols}" for r in range(rows)], fontsize=6)
        ax.set_xlabel("filter index = row label + column", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8, label="‖∂y_c/∂W_f‖ (mean over inputs)")
    fig.suptitle(f"Filter importance of {layer} ({overall.numel()} filters as {rows}×{cols}); "
                 f"same/different panels share one colour scale", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # room for the suptitle above the panel titles
    return fig


def same_vs_different(relevance: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor],
                      right: Mapping[str, torch.Tensor], wrong: Mapping[str, torch.Tensor], classes: Sequence[str]) -> Figure:
    """Per class c, the importance w.r.t. c (mean over the layer's filters) for inputs of class c, inputs
    of other classes, and class-c inputs classified correctly / wrongly (paper 3 §3.2.2)."""
    layers = list(relevance)
    c = len(classes)
    fig, axes = plt.subplots(len(layers), 1, figsize=(max(8, 0.7 * c + 3), 2.8 * len(layers)), squeeze=False)
    width = 0.2
    xs = np.arange(c)
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        bars = [("same class (all inputs of c)", relevance[layer].mean(1), "tab:red"),
                ("other classes' inputs", other[layer].mean(1), "tab:gray"),
                ("class c, correctly classified", torch.diagonal(right[layer], dim1=0, dim2=1).mean(0), "tab:green"),
                ("class c, misclassified", torch.diagonal(wrong[layer], dim1=0, dim2=1).mean(0), "tab:orange")]
        for k, (label, v, color) in enumerate(bars):
            ax.bar(xs + (k - 1.5) * width, v.numpy(), width, label=label, color=color)
        ax.set_xticks(xs)
        ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mean ‖∂y_c/∂W_f‖")
        ax.set_title(f"{layer}: importance w.r.t. class c (a missing orange bar: no misclassified input of c)", fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("class c (the score y_c differentiated)")
    fig.tight_layout()
    return fig


def importance_histogram(own: Mapping[str, torch.Tensor], classes: Sequence[str]) -> Figure:
    """Histogram of per-input importances w.r.t. the input's own class, one panel per layer (paper 3 Fig 6)."""
    layers = list(own)
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 3.6), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        v = own[layer].flatten().numpy()
        pos = v[v > 0]
        zeros = int((v == 0).sum())
        ax.hist(np.log10(pos), bins=60, color="tab:red", alpha=0.6)
        ax.set_xlabel("log10 ‖∂y_true/∂W_f‖")
        ax.set_ylabel("(input, filter) pairs", color="tab:red")
        ax.set_title(f"{layer}: {own[layer].shape[0]} inputs × {own[layer].shape[1]} filters; {zeros} exact zeros", fontsize=9)
        twin = ax.twinx()  # the per-filter means: what a threshold on importance acts on
        twin.hist(np.log10(own[layer].mean(0).clamp_min(1e-30).numpy()), bins=30, color="k", histtype="step", lw=1.5)
        twin.set_ylabel("filters (mean over inputs)")
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color="tab:red", alpha=0.6), plt.Line2D([], [], color="k")],
                  labels=["per input and filter (left axis)", "per filter, mean over inputs (right axis)"], fontsize=7, loc="upper left")
    fig.suptitle(f"Importance w.r.t. each input's own class ({len(classes)} classes)", fontsize=10)
    fig.tight_layout()
    return fig


def _curve(rows: Sequence[dict], method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    by: dict[float, list[tuple[float, float]]] = {}
    for r in rows:
        if r["method"] == method:
            by.setdefault(r["fraction"], []).append((r["removed_fraction"], r["error"]))
    fr = sorted(by)
    x = np.array([np.mean([a for a, _ in by[f]]) for f in fr])
    m = np.array([np.mean([e for _, e in by[f]]) for f in fr])
    s = np.array([np.std([e for _, e in by[f]]) for f in fr])
    return x, m, s


def sweep_plot(rows: Sequence[dict], classes: Sequence[str], *, n_images: int) -> Figure:
    """Test error against the fraction of filters zeroed, gradient importance vs L1 norm vs random."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        x, m, s = _curve(rows, method)
        reps = sum(1 for r in rows if r["method"] == method and r["fraction"] == rows[0]["fraction"])
        label = LABELS.get(method, method) + (f" (mean ± std, n={reps})" if reps > 1 else "")
        ax.plot(100 * x, m, "o-", color=COLORS.get(method), label=label, ms=4)
        if reps > 1:
            ax.fill_between(100 * x, m - s, m + s, color=COLORS.get(method), alpha=0.25)
    ax.set_xlabel("filters zeroed (% of all analysed conv filters, lowest score first)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Pruning sweep: which ranking keeps the network working? ({n_images} test images, {len(classes)} classes)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def threshold_per_class(rows: Sequence[dict], classes: Sequence[str], *, n_images: int) -> Figure:
    """Overall and per-class error while zeroing every filter below a varying importance threshold (paper 3 Fig 7–8)."""
    rows = sorted((r for r in rows if r["threshold"] == r["threshold"]), key=lambda r: r["threshold"])  # drop NaN (nothing removed)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    if rows:
        t = np.array([r["threshold"] for r in rows])
        per = np.array([r["per_class_error"] for r in rows], dtype=float)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for k, name in enumerate(classes[:20]):
            ax.plot(t, per[:, k], "-", lw=1, color=cmap(k % cmap.N), label=name)
        ax.plot(t, [r["error"] for r in rows], "k-o", lw=2.5, ms=4, label="all classes")
        top = ax.secondary_xaxis("top")
        top.set_xticks(t[:: max(1, len(t) // 6)])
        top.set_xticklabels([f"{100 * r['removed_fraction']:.0f}%" for r in rows][:: max(1, len(t) // 6)], fontsize=7)
        top.set_xlabel("filters zeroed", fontsize=8)
    ax.set_xlabel("importance threshold (filter importance / its layer's mean); every filter at or below it zeroed")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Error against the importance threshold, per class ({n_images} test images)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig


def gradient_volumes(grads: torch.Tensor, images: torch.Tensor, titles: Sequence[str], layer: str, ref_name: str) -> Figure:
    """One row per input: the input and ∂y_ref/∂W of every filter of ``layer`` (N×O×I×kh×kw; summed over the I
    input channels when I > 1), all rows on one symmetric colour scale so magnitudes compare."""
    n, o = grads.shape[:2]
    g = grads.sum(2) if grads.shape[2] > 1 else grads[:, :, 0]  # N×O×kh×kw
    rows, cols = grid_shape(o)
    kh, kw = g.shape[-2:]
    pad = 1
    mosaic = torch.full((n, rows * (kh + pad) - pad, cols * (kw + pad) - pad), float("nan"))
    for f in range(o):
        r, cc = divmod(f, cols)
        mosaic[:, r * (kh + pad) : r * (kh + pad) + kh, cc * (kw + pad) : cc * (kw + pad) + kw] = g[:, f]
    vmax = float(g.abs().max()) or 1.0
    fig, axes = plt.subplots(n, 2, figsize=(3 + 0.35 * cols * (kw + 1) / 4, 2.0 * n + 0.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1, max(2, cols * (kw + 1) / (kh + 1) / rows)]})
    for i in range(n):
        img = images[i].permute(1, 2, 0).numpy()
        axes[i, 0].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        axes[i, 0].set_title(titles[i], fontsize=8)
        axes[i, 0].axis("off")
        im = axes[i, 1].imshow(mosaic[i].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        axes[i, 1].set_title(f"‖grad‖ = {float(g[i].norm()):.3g}", fontsize=8)
        axes[i, 1].axis("off")
    fig.colorbar(im, ax=axes[:, 1].tolist(), shrink=0.6, label=f"∂y_{ref_name}/∂w")
    fig.suptitle(f"Gradient of the '{ref_name}' score w.r.t. the {o} filters of {layer} ({rows}×{cols} grid of "
                 f"{kh}×{kw} kernels{', summed over input channels' if grads.shape[2] > 1 else ''})", fontsize=9)
    return fig


def prune_figures(study: PruneStudy) -> Iterator[tuple[str, Saved]]:
    """Every figure of stage ``prune-by-importance`` as (file stem, figure at 110 dpi), drawn one at a time."""
    classes, n_sweep = list(study.classes), study.sweep_images
    ref = study.roles[0]
    relevance, other = study.relevance, study.other
    yield "importance_histogram", Saved(importance_histogram(study.stats.own, classes), {"dpi": 110})
    yield "same_vs_different_class", Saved(same_vs_different(relevance, other, study.stats.mean(correct=True),
                                                             study.stats.mean(correct=False), classes), {"dpi": 110})
    yield "sweep", Saved(sweep_plot(study.sweep_rows, classes, n_images=n_sweep), {"dpi": 110})
    thr_rows = [r for r in study.sweep_rows if r["method"] == "importance"]
    yield "threshold_per_class", Saved(threshold_per_class(thr_rows, classes, n_images=n_sweep), {"dpi": 110})
    overall = study.overall
    for layer in study.layers:
        yield f"importance_grid_{layer.replace('.', '_')}", Saved(importance_grid(
            overall[layer], relevance[layer][ref], other[layer][ref], layer, classes[ref]), {"dpi": 110})
    if study.volumes is not None:
        yield f"gradient_volumes_{study.table_layer.replace('.', '_')}", Saved(gradient_volumes(
            study.volumes, study.probe_pixels, list(study.probes), study.table_layer, classes[ref]), {"dpi": 110})
