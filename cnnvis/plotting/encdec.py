"""Figures of paper 4's class maps: Figs 3-5 (maps over training), 6-8 (samples), and the measured study."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from cnnvis.io import Saved

MAP_CMAP = "inferno"


def show_image(ax: Any, img_chw: torch.Tensor) -> None:
    """A uint8 C×H×W image (1 or 3 channels) without axes."""
    arr = img_chw.permute(1, 2, 0).numpy()
    if arr.shape[-1] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(arr)
    ax.set_xticks([])
    ax.set_yticks([])


def show_map(ax: Any, m: torch.Tensor) -> Any:
    """A normalized (eq. 10) map in [0, 1]; returns the image for a colorbar."""
    im = ax.imshow(m.numpy(), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _norm(maps: torch.Tensor) -> torch.Tensor:
    from cnnvis.encdec import normalize_maps

    return normalize_maps(maps)


def map_evolution(images: torch.Tensor, labels: list[str], epochs: list[float], own_maps: torch.Tensor,
                  predicted: list[list[str]], dataset: str) -> Figure:
    """Figs 3-5: rows = probe images, columns = the image then its true-class map (eq. 10) at each snapshot.

    own_maps: T×P×m×m raw maps; predicted[t][p]: class predicted at snapshot t.
    """
    t_count, p_count = own_maps.shape[:2]
    fig, axes = plt.subplots(p_count, t_count + 1, figsize=(1.25 * (t_count + 1) + 0.8, 1.45 * p_count + 0.8),
                             squeeze=False)
    norm = _norm(own_maps)
    im = None
    for p in range(p_count):
        show_image(axes[p, 0], images[p])
        axes[p, 0].set_ylabel(labels[p], fontsize=7)
        for t in range(t_count):
            ax = axes[p, t + 1]
            im = show_map(ax, norm[t, p])
            ok = predicted[t][p] == labels[p]
            ax.set_xlabel(f"→ {predicted[t][p]}", fontsize=6, color="black" if ok else "red")
            if p == 0:
                ax.set_title(f"epoch {epochs[t]:g}", fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    fig.suptitle(f"{dataset}: true-class activation map (eq. 10, max-normalized) of fixed test images during "
                 "training\n(label under each map: predicted class at that epoch, red = wrong)", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="map / max(map)")
    return fig


def samples_with_maps(images: torch.Tensor, true: list[str], maps: torch.Tensor, logits: torch.Tensor,
                      classes: list[str], title: str, top: int = 3) -> Figure:
    """Figs 6-7: each row an image (true label), then the maps of its top-k classes with P_k."""
    n = len(images)
    top = min(top, len(classes))
    fig, axes = plt.subplots(max(n, 1), top + 1, figsize=(1.6 * (top + 1) + 0.8, 1.6 * max(n, 1) + 0.6), squeeze=False)
    probs = logits.softmax(1)
    im = None
    for i in range(n):
        show_image(axes[i, 0], images[i])
        axes[i, 0].set_title(f"true: {true[i]}", fontsize=7)
        p, k = probs[i].topk(top)
        for j in range(top):
            im = show_map(axes[i, j + 1], _norm(maps[i, k[j]]))
            axes[i, j + 1].set_title(f"{classes[k[j]]}\nP={p[j]:.2f}", fontsize=7)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no such samples", ha="center", va="center")
        axes[0, 0].axis("off")
        for ax in axes[0, 1:]:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="map / max(map)")
    return fig


def same_class_maps(images: torch.Tensor, maps: torch.Tensor, names: list[str], per_class: int, dataset: str) -> Figure:
    """Fig 8: per class (row), correctly classified images each followed by its class map."""
    rows = len(names)
    fig, axes = plt.subplots(rows, 2 * per_class, figsize=(1.3 * 2 * per_class + 0.8, 1.4 * rows + 0.6), squeeze=False)
    im = None
    for r in range(rows):
        for j in range(per_class):
            i = r * per_class + j
            show_image(axes[r, 2 * j], images[i])
            im = show_map(axes[r, 2 * j + 1], _norm(maps[i]))
        axes[r, 0].set_ylabel(names[r], fontsize=7)
    fig.suptitle(f"{dataset}: correctly classified images of one class and their class maps — same class, same pattern?",
                 fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="map / max(map)")
    return fig


def study_figure(per_class_settle: list[float | None], per_class_top1: list[float | None], classes: list[str],
          per_image: dict[str, torch.Tensor], dataset: str) -> Figure:
    """The measured section 5: settle epoch vs accuracy, similarity correct vs wrong, confidence vs sharpness."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for s, a, name in zip(per_class_settle, per_class_top1, classes, strict=True):
        if s is not None and a is not None:
            ax.scatter(s, a, color="tab:blue")
            ax.annotate(name, (s, a), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("epoch at which the class's probe maps settle (r ≥ threshold with final)")
    ax.set_ylabel("final test accuracy of the class (%)")
    ax.set_title("When a class's pattern forms vs how well it is learned", fontsize=9)

    ax = axes[1]
    sims, correct = per_image["similarity"], per_image["correct"]
    ok = torch.isfinite(sims)
    bins = np.linspace(-1, 1, 41)
    ax.hist(sims[ok & correct].numpy(), bins=bins, density=True, alpha=0.6, label=f"correct (n={int((ok & correct).sum())})")
    ax.hist(sims[ok & ~correct].numpy(), bins=bins, density=True, alpha=0.6, label=f"wrong (n={int((ok & ~correct).sum())})")
    ax.set_xlabel("Pearson r of true-class map with the class's mean map")
    ax.set_ylabel("density")
    ax.set_title("Intra-class map similarity", fontsize=9)
    ax.legend(fontsize=7)

    ax = axes[2]
    conf, sharp = per_image["confidence"], per_image["peak_to_mean"]
    ax.scatter(sharp[correct].numpy(), conf[correct].numpy(), s=3, alpha=0.3, label="correct")
    ax.scatter(sharp[~correct].numpy(), conf[~correct].numpy(), s=3, alpha=0.5, color="tab:red", label="wrong")
    ax.set_xlabel("peak-to-mean ratio of the predicted class's map")
    ax.set_ylabel("confidence P_k of the predicted class")
    ax.set_title("Confidence vs map sharpness", fontsize=9)
    ax.legend(fontsize=7, markerscale=4)
    fig.suptitle(f"{dataset}: paper 4's section 5 observations, measured on the test set", fontsize=10)
    fig.tight_layout()
    return fig


def translation_figure(control: Any, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                       dataset: str) -> Figure:
    """The translation control (``cnnvis.encdec.TranslationControl``): for its first images, the input and its
    true-class map, then per shift s the input moved s px right, its map and the original map moved alike; beside
    them, per shift, the distribution over images of r(map of moved input, moved map) vs r(…, unmoved map)."""
    from cnnvis.encdec import shift_images

    shifts = control.shifts
    n = control.example_maps.shape[1]
    fig = plt.figure(figsize=(1.25 * (2 + 3 * len(shifts)) + 5.0, 1.35 * max(n, 3) + 1.0))
    left, right = fig.subfigures(1, 2, width_ratios=[1.25 * (2 + 3 * len(shifts)), 5.0])
    axes = left.subplots(n, 2 + 3 * len(shifts), squeeze=False)
    idx = control.index[:n]
    im = None
    for i in range(n):
        show_image(axes[i, 0], images[idx[i]])
        axes[i, 0].set_ylabel(classes[int(labels[idx[i]])], fontsize=7)
        base = control.example_maps[0, i]
        im = show_map(axes[i, 1], _norm(base))
        for k, s in enumerate(shifts):
            c = 2 + 3 * k
            show_image(axes[i, c], shift_images(images[idx[i]], 0, s))
            show_map(axes[i, c + 1], _norm(control.example_maps[k + 1, i]))
            show_map(axes[i, c + 2], _norm(shift_images(base, 0, s)))
            if i == 0:
                for j, what in enumerate((f"input → {s} px", "its map", f"map → {s} px")):
                    axes[0, c + j].set_title(what, fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    axes[0, 1].set_title("true-class map", fontsize=7)
    if im is not None:
        left.colorbar(im, ax=axes, shrink=0.6, label="map / max(map)")
    ax = right.subplots()
    pos = np.arange(len(shifts), dtype=float)
    for offset, data, name, color in ((-0.18, control.follow, "moved map (follows)", "tab:blue"),
                                      (0.18, control.stay, "unmoved map (stays)", "tab:orange")):
        parts = ax.boxplot([d[control.informative].numpy() for d in data], positions=pos + offset, widths=0.3, patch_artist=True,
                           showmeans=True, showfliers=False, manage_ticks=False)
        for box in parts["boxes"]:
            box.set_facecolor(color)
        ax.plot([], [], color=color, linewidth=6, label=f"r with the {name}")
    ax.scatter(pos, control.shift_alone[:, control.informative].mean(1).numpy(), marker="x", color="black", zorder=3,
               label="r of the map with itself moved (mean)")
    ax.set_xticks(pos)
    ax.set_xticklabels([f"{s} px" for s in shifts])
    ax.set_xlabel("input shift (right, down, left, up; zero fill)")
    ax.set_ylabel("Pearson r of the map of the moved input")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"n = {int(control.informative.sum())} test images with a non-constant map "
                 f"(of {len(control.index)})", fontsize=8)
    fig.suptitle(f"{dataset}: translation control — do the class maps move with the input?", fontsize=10)
    return fig


def encdec_figures(study: Any, max_rows: int = 10) -> Iterator[tuple[str, Saved]]:
    """Every figure of stage train-encdec from its ``cnnvis.studies.encdec.EncDecStudy``, as (file stem, Saved),
    each drawn when it is asked for. Samples are chosen with ``study.config.seed`` (in this order)."""
    images, labels, maps, logits = study.images, study.labels, study.maps, study.logits
    classes, dataset, snaps = study.classes, study.dataset, study.snapshots
    g = torch.Generator().manual_seed(study.config.seed)
    correct = logits.argmax(1) == labels

    # Figs 3-5: at most one probe per class, at most max_rows rows
    probe_y = snaps.probe_label
    first = [int(torch.nonzero(probe_y == c)[0]) for c in probe_y.unique().tolist()][:max_rows]
    p_rows = torch.tensor(first, dtype=torch.long)
    own = snaps.maps[:, p_rows, probe_y[p_rows]]  # T×R×m×m
    snap_pred = snaps.maps.mean((3, 4)).argmax(2)[:, p_rows]  # T×R
    yield "fig3_5_map_evolution", _saved(map_evolution(
        images[snaps.probe_index[p_rows]], [classes[int(y)] for y in probe_y[p_rows]], list(snaps.epochs), own,
        [[classes[int(k)] for k in row] for row in snap_pred], dataset))

    for name, mask, what in (("fig6_correct", correct, "correct"), ("fig7_wrong", ~correct, "wrong")):
        idx = mask.nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)[:study.config.examples]].sort().values
        yield name, _saved(samples_with_maps(
            images[idx], [classes[int(y)] for y in labels[idx]], maps[idx], logits[idx], classes,
            f"{dataset}: random {what} test predictions — maps of the top classes with confidence P_k"))

    per_class = 3
    rows, names = [], []
    for c in range(len(classes)):
        idx = (correct & (labels == c)).nonzero().flatten()
        if len(idx) >= per_class and len(names) < max_rows:
            rows.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
            names.append(classes[c])
    if rows:
        idx = torch.cat(rows)
        yield "fig8_same_class", _saved(same_class_maps(images[idx], maps[idx, labels[idx]], names, per_class, dataset))
    if study.translation is not None:
        yield "translation_control", _saved(translation_figure(study.translation, images, labels, classes, dataset))
    yield "study", _saved(study_figure(study.settle["per_class_epoch"], study.settle["per_class_top1"], classes,
                                       study.per_image, dataset))


def _saved(fig: Figure) -> Saved:
    return Saved(fig, {"dpi": 110, "bbox_inches": "tight"})
