"""Named tests for comparisons the tables state: McNemar on per-image predictions, Welch across seeds.

Every comparison a table prints carries n, the spread and the test; its sentence is derived from the
test's outcome by ``verdict``, never written by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """A against B: the named test, its sample size, the effect and the two-sided p-value."""

    a: str
    b: str
    test: str  # "McNemar exact" | "Welch t" | "paired t" | "paired bootstrap"
    n: int  # images (McNemar) or seeds per group (Welch: the smaller group)
    difference: float  # A − B in accuracy points
    p_value: float
    detail: str  # the counts the test used
    alpha: float = 0.05

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": verdict(self)}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, names: tuple[str, str] = ("A", "B"), *,
            alpha: float = 0.05) -> Comparison:
    """Exact McNemar test of two classifiers on the same images (``correct_*``: [N] bool): the images only one of
    them gets right decide; under H0 each such image favours A or B with probability 1/2 (binomial). Works for a
    single trained model each (n = 1 seed)."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"mcnemar: expected two equal [N] masks, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return Comparison(*names, "McNemar exact", int(a.size), 100.0 * (only_a - only_b) / a.size, p,
                      f"{only_a} images right only by {names[0]}, {only_b} only by {names[1]}", alpha)


def welch(values_a: list[float], values_b: list[float], names: tuple[str, str] = ("A", "B"), *,
          alpha: float = 0.05) -> Comparison | None:
    """Welch's t-test of per-seed accuracies (unequal variances); None below 2 seeds per group."""
    from scipy.stats import ttest_ind

    if min(len(values_a), len(values_b)) < 2:
        return None
    r = ttest_ind(values_a, values_b, equal_var=False)
    sd = (float(np.std(values_a, ddof=1)), float(np.std(values_b, ddof=1)))
    return Comparison(*names, "Welch t", min(len(values_a), len(values_b)), float(np.mean(values_a) - np.mean(values_b)),
                      float(r.pvalue), f"sd {sd[0]:.2f} vs {sd[1]:.2f} over {len(values_a)} / {len(values_b)} seeds",
                      alpha)


def paired_t(values_a: list[float], values_b: list[float], names: tuple[str, str] = ("A", "B"), *,
             alpha: float = 0.05) -> Comparison | None:
    """Paired t-test across seeds (``values_*[i]``: seed i of each, the same seeds: the same data split,
    subsets and baseline), accuracies in points; None below 2 pairs or with equal pairs throughout."""
    from scipy.stats import ttest_rel

    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        return None
    d = a - b
    flat = bool(np.ptp(d) == 0)  # every pair differs by the same amount: no spread, the t statistic is undefined
    p = 1.0 if flat else float(ttest_rel(a, b).pvalue)  # reported as no evidence, never as p = 0
    return Comparison(*names, "paired t", int(a.size), float(d.mean()), p,
                      f"per-seed differences {', '.join(f'{v:+.2f}' for v in d)}"
                      + ("; no spread across the pairs: not testable" if flat else ""), alpha)


def tally(entries: list[dict[str, Any]], alpha: float = 0.05) -> tuple[list[int], list[int], list[int]]:
    """Seeds of per-seed test results (``seed``, ``difference`` A − B, positive favouring A, ``p_value``) by
    outcome: A better, B better, not distinguishable at ``alpha``."""
    a = [e["seed"] for e in entries if e["p_value"] < alpha and e["difference"] > 0]
    b = [e["seed"] for e in entries if e["p_value"] < alpha and e["difference"] < 0]
    return a, b, [e["seed"] for e in entries if e["seed"] not in a + b]


def summarize(frame: Any, by: list[str], value: str, confidence: float = 0.95) -> Any:
    """Per group of ``frame`` (pandas): n, mean, sample sd (n−1) and the two-sided ``confidence`` t interval of
    the mean of ``value``; sd and interval are NaN for a group of one."""
    from scipy.stats import t

    g = frame.groupby(by, sort=False)[value]
    out = g.agg(n="count", mean="mean", sd=lambda v: v.std(ddof=1)).reset_index()
    half = t.ppf((1 + confidence) / 2, out["n"] - 1) * out["sd"] / np.sqrt(out["n"])
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out


def verdict(c: Comparison) -> str:
    """The sentence a table prints: which is better, or that they are not distinguishable, with the test."""
    how = f"{c.test}, n={c.n}, p={c.p_value:.2g}; {c.detail}"
    if not c.p_value < c.alpha or c.difference == 0:
        return f"{c.a} and {c.b} not distinguishable at α={c.alpha:g} ({how})"
    better, worse = (c.a, c.b) if c.difference > 0 else (c.b, c.a)
    return f"{better} better than {worse} by {abs(c.difference):.2f} points ({how})"


def paired_bootstrap(per_item: np.ndarray, names: tuple[str, str] = ("A", "B"), *, what: str = "error",
                     resamples: int = 10_000, confidence: float = 0.95, seed: int = 0, alpha: float = 0.05) -> Comparison:
    """Paired bootstrap over items (images) of d_i = A_i − B_i [N] (e.g. per-image error averaged over the pruning
    fractions, in points): the CI of the mean difference and a two-sided bootstrap p-value (twice the share of
    resampled means on the other side of 0). ``difference`` is reported as B − A for an error, so that positive
    always means A is better."""
    d = np.asarray(per_item, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"paired_bootstrap: expected [N >= 2] differences, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    p = max(p, 1.0 / resamples) if d.any() else 1.0  # resolution of the bootstrap
    sign = -1.0 if what == "error" else 1.0
    return Comparison(*names, "paired bootstrap", int(d.size), sign * float(d.mean()), p,
                      f"mean {what} difference {float(d.mean()):+.2f} points, {int(confidence * 100)} % CI "
                      f"[{lo:+.2f}, {hi:+.2f}], {resamples} resamples", alpha)
