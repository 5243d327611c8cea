"""Figures of paper 4's section 5.3: perturbed examples with their explanations, and a summary."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from cnnvis.io import Saved
from cnnvis.plotting.encdec import show_image


def perturbation_grid(clean: torch.Tensor, perturbed: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...] | list[str],
                      models: dict[str, tuple[torch.nn.Module, dict]], logits: dict[str, torch.Tensor],
                      clean_logits: dict[str, torch.Tensor], title: str) -> Figure:
    """Rows = example images. Columns: clean, perturbed, then per model its explanation of its
    prediction on the perturbed image (encdec: its class map; CNNs: Grad-CAM) over the image."""
    from cnnvis.perturb import explanation_maps

    n = len(clean)
    names = list(models)
    fig, axes = plt.subplots(n, 2 + len(names), figsize=(1.9 * (2 + len(names)) + 0.8, 1.9 * n + 0.9), squeeze=False)
    im = None
    for j, name in enumerate(names):
        model, state = models[name]
        spec = state["spec"]
        from cnnvis.data import normalize

        xn = normalize(perturbed, tuple(spec["mean"]), tuple(spec["std"]))
        probs = logits[name].softmax(1)
        pred = probs.argmax(1)
        clean_pred = clean_logits[name].argmax(1)
        maps = explanation_maps(model, xn, pred)
        method = "class map" if hasattr(model, "class_maps") else "Grad-CAM"
        for i in range(n):
            ax = axes[i, 2 + j]
            show_image(ax, perturbed[i])
            im = ax.imshow(maps[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ok = int(pred[i]) == int(labels[i])
            ax.set_title(f"{name}: {classes[int(pred[i])]} P={probs[i, pred[i]]:.2f}\n(clean: {classes[int(clean_pred[i])]})",
                         fontsize=6.5, color="black" if ok else "red")
            if i == n - 1:
                ax.set_xlabel(f"{name} ({method})", fontsize=7)
    for i in range(n):
        show_image(axes[i, 0], clean[i])
        axes[i, 0].set_title(f"clean — true: {classes[int(labels[i])]}", fontsize=6.5)
        show_image(axes[i, 1], perturbed[i])
        axes[i, 1].set_title("perturbed", fontsize=6.5)
    fig.suptitle(f"{title}\nexplanation of each model's prediction on the perturbed image (red title = wrong)", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.5, label="explanation / its max")
    return fig


def summary_bars(rows: list[dict[str, Any]], dataset: str) -> Figure:
    """Top-1 accuracy per perturbation (groups) and model (bars)."""
    perts = list(dict.fromkeys(r["label"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    acc = {(r["label"], r["model"]): r["top1"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(perts) * max(1, len(models)) / 2 + 2), 4.2))
    width = 0.8 / max(1, len(models))
    xs = np.arange(len(perts))
    for k, m in enumerate(models):
        ax.bar(xs + k * width, [acc.get((p, m), np.nan) for p in perts], width, label=m)
    ax.set_xticks(xs + width * (len(models) - 1) / 2)
    ax.set_xticklabels(perts, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{dataset}: accuracy under paper 4's perturbations (not-applicable ones omitted)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def perturbation_figures(study: Any) -> Iterator[tuple[str, Saved]]:
    """Every figure of stage perturbation-eval from its ``cnnvis.studies.perturb.PerturbStudy``, as (file stem,
    Saved): one grid per evaluated perturbation, then the summary."""
    options = {"dpi": 110, "bbox_inches": "tight"}
    for grid in study.grids:
        yield f"{grid.perturbation.name}.png", Saved(perturbation_grid(  # stems with dots (salt_pepper_0.0005)
            study.examples, grid.perturbed, study.example_labels, study.classes, study.models, grid.logits,
            study.clean_logits, title=f"{study.dataset}: {grid.perturbation.label}"), options)
    yield "summary", Saved(summary_bars(study.rows, study.dataset), options)
