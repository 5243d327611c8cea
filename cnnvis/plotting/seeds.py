"""Figures of the `seeds` stage: every seed's result beside the mean and its 95 % interval."""

from __future__ import annotations

import math
from collections.abc import Iterator

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

ACCURACY_MODELS = ("baseline", "adjusted", "control", "encdec", "resnet18")
LABELS = {"baseline": "baseline", "adjusted": "adjusted\n(pHash rule)", "control": "uniform-width\ncontrol",
          "encdec": "encoder-\ndecoder", "resnet18": "ResNet-18\n(its trunk)"}


def _interval(row: pd.Series) -> tuple[float, float]:
    if math.isnan(row["ci_low"]):
        return 0.0, 0.0
    return row["mean"] - row["ci_low"], row["ci_high"] - row["mean"]


def seed_figures(frame: pd.DataFrame, summary: pd.DataFrame, seeds: tuple[int, ...],
                 dataset: str) -> Iterator[tuple[str, plt.Figure]]:
    n = len(seeds)
    top1 = summary[(summary.metric == "top1") & summary.model.isin(ACCURACY_MODELS)]
    if len(top1):
        fig, ax = plt.subplots(figsize=(1.6 * len(top1) + 2, 4))
        for x, (_, row) in enumerate(top1.iterrows()):
            per_seed = frame[(frame.model == row.model) & (frame.metric == "top1")]
            jitter = np.linspace(-0.12, 0.12, len(per_seed)) if len(per_seed) > 1 else np.zeros(1)
            ax.scatter(x + jitter, per_seed.value, s=18, color="0.55", zorder=2,
                       label="one seed" if x == 0 else None)
            lo, hi = _interval(row)
            ax.errorbar(x + 0.3, row["mean"], yerr=[[lo], [hi]], fmt="o", color="C0", capsize=4, zorder=3,
                        label="mean, 95 % t interval" if x == 0 else None)
        ax.set_xticks(range(len(top1)), [LABELS.get(m, m) for m in top1.model])
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{dataset}: test accuracy over {n} seed{'s' * (n != 1)} ({', '.join(map(str, seeds))})")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        yield "top1_across_seeds.png", fig

    prune = summary[summary.metric.str.startswith("error_at_")]
    if len(prune):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for i, (model, rows) in enumerate(prune.groupby("model", sort=False)):
            fractions = rows.metric.str.removeprefix("error_at_").astype(int).to_numpy()
            order = np.argsort(fractions)
            x, mean = fractions[order], rows["mean"].to_numpy()[order]
            ax.plot(x, mean, marker="o", color=f"C{i}", label=model.removeprefix("pruned ").strip("()"))
            if n > 1:
                ax.fill_between(x, rows["ci_low"].to_numpy()[order], rows["ci_high"].to_numpy()[order],
                                color=f"C{i}", alpha=0.15, linewidth=0)
        ax.set_xlabel("filters removed, % of every conv layer")
        ax.set_ylabel("test error (%)")
        band = "; bands: 95 % t interval over seeds" if n > 1 else ""
        ax.set_title(f"{dataset}: pruning by ranking, mean over {n} seed{'s' * (n != 1)}{band}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(title="ranking", fontsize=8)
        fig.tight_layout()
        yield "pruning_across_seeds.png", fig
