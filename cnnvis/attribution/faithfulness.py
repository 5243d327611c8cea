"""Deletion / insertion faithfulness of attribution maps (Petsiuk et al., RISE, 2018), tested against random maps.

Pixels are taken in the map's order, most important first. Deletion replaces
them step by step with a baseline and records the target-class probability;
insertion starts from the baseline and puts them back. The score is the area
under that curve over the fraction of pixels changed, in [0, 1]: deletion
lower is better, insertion higher is better.

One importance per pixel for every method and every metric
(``pixel_importance``): the map's channels are summed first, then one sign
rule applies to that sum, the same for one- and multi-channel maps (the order
of Captum's ``visualize_image_attr``: a pixel's attribution is the total over
its channels, and its sign is the sign of that total).

Baselines (what replaced pixels become): "black" (intensity 0), "mean" (0 in
normalized units: the dataset's mean pixel), "blur" (a Gaussian-blurred copy),
"road" (Rong et al. 2022, ROAD: a noisy linear imputation from the neighbours,
so the shape of the replaced region carries no class information of its own).

``faithfulness_study`` runs both metrics with every baseline for a set of maps
and for a control (independent uniform random maps per image, seeded), and
tests each method against the control on the same images.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse, stats
from scipy.sparse.linalg import spsolve
from torch import nn

from cnnvis.hooks import model_state_guard

SIGNS = ("positive", "absolute", "signed")
# The study's default: every method is judged on the claim Grad-CAM makes (evidence for the class, ≥ 0); the
# non-positive pixels tie and are taken in a random order. "signed" would also credit the order of the evidence
# against the class, which only signed maps have; "absolute" counts evidence against as evidence for.
SIGN = "positive"
SIGN_RULES = {"positive": "max(Σ_c a_c, 0): evidence for the class; the other pixels tie (random order)",
              "absolute": "|Σ_c a_c|: evidence for or against the class alike",
              "signed": "Σ_c a_c: evidence for the class first, evidence against it last"}
BASELINES = ("black", "mean", "blur", "road")
METRICS = ("deletion", "insertion")
BETTER = {"deletion": "lower", "insertion": "higher"}  # the side of the control a faithful map's AUC lies on
RANDOM = "random"  # the control's name among the methods of a study
# ROAD's neighbour weights (Rong et al. 2022; tleemann/road_evaluation): direct 1/6, diagonal 1/12, sum 1
ROAD_WEIGHTS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))

Key = tuple[str, str, str]  # (method, metric, baseline)


# --------------------------------------------------------------------------- one importance per pixel


def pixel_importance(attr: torch.Tensor, sign: str = "signed") -> torch.Tensor:
    """One importance per pixel, [N, H, W]: s = Σ_c attr_c, then the sign rule.

    "positive": max(s, 0); "absolute": |s|; "signed": s as is (this function's
    default: the channel sum itself). The metrics pass their rule; the study's
    default is ``SIGN`` = "positive".
    """
    if attr.ndim != 4:
        raise ValueError(f"attributions: expected N×C×H×W, got shape {tuple(attr.shape)}")
    if sign not in SIGNS:
        raise ValueError(f"sign = {sign!r}: unknown; allowed: {', '.join(SIGNS)}")
    total = attr.sum(1)
    if sign == "positive":
        return total.clamp(min=0)
    return total.abs() if sign == "absolute" else total


def pixel_ranks(importance: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """rank[n, p]: the position of pixel p in image n's order, 0 = most important (LongTensor [N, H·W]).

    Ties are taken in index order, or with ``generator`` in a random order
    (a map that ties says nothing about the order; index order is a raster scan).
    """
    flat = importance.flatten(1)
    n, d = flat.shape
    if generator is None:
        order = flat.argsort(dim=1, descending=True, stable=True)
    else:  # a stable sort of a randomly permuted row: ties keep the random order
        shuffle = torch.rand(n, d, generator=generator, device=generator.device).to(flat.device).argsort(dim=1)
        order = shuffle.gather(1, flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    return torch.empty_like(order).scatter_(1, order, torch.arange(d, device=flat.device).expand(n, -1))


# --------------------------------------------------------------------------- baselines


def baseline_images(images: torch.Tensor, kind: str, blur_sigma: float = 2.0,
                    black: torch.Tensor | None = None) -> torch.Tensor:
    """The image a pixel is replaced by (or starts from), [N, C, H, W] like ``images``.

    "black": intensity 0, given as its normalized per-channel value ``black`` [C]
    (= −mean/std); "mean": all zeros (normalized images: the dataset's mean
    pixel, a gray that adds content on black backgrounds); "blur": Gaussian blur (σ in px).
    ("road" depends on the replaced pixels: ``noisy_linear_imputation``.)
    """
    if kind == "black":
        if black is None:
            raise ValueError("baseline 'black' needs the normalized value of intensity 0 per channel (black=)")
        return black.to(images).view(1, -1, 1, 1).expand_as(images).clone()
    if kind == "mean":
        return torch.zeros_like(images)
    if kind != "blur":
        raise ValueError(f"baseline = {kind!r}: unknown; allowed: black, mean, blur (and road, per step)")
    return gaussian_blur(images, blur_sigma)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` with kernel 2·⌈3σ⌉+1, clipped to the largest odd size that reflect
    padding allows on the image."""
    from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

    k = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(images.shape[-2:]) // 2) - 1)
    return tv_gaussian_blur(images, [k, k], [sigma, sigma])


def noisy_linear_imputation(images: torch.Tensor, known: torch.Tensor, *, noise: float = 0.01,
                            generator: torch.Generator | None = None, empty: float = 0.0) -> torch.Tensor:
    """ROAD's imputation (Rong et al. 2022): ``images`` [N, C, H, W] with the pixels where ``known`` [N, H, W]
    is False replaced.

    Each replaced pixel is the weighted mean of its in-image neighbours (known
    or replaced; ``ROAD_WEIGHTS``), one sparse linear system for all replaced
    pixels of all images (every channel shares it), plus ``noise``·N(0, 1) from
    ``generator``, in the images' units. An image with no known pixel has
    nothing to impute from: it becomes ``empty``.
    """
    n, c, h, w = images.shape
    if known.shape != (n, h, w) or known.dtype != torch.bool:
        raise ValueError(f"known: expected a bool mask of shape {(n, h, w)}, got {known.dtype} {tuple(known.shape)}")
    if noise > 0 and generator is None:
        raise ValueError("noisy_linear_imputation: noise > 0 needs a generator= (seeded)")
    out = images.detach().clone()
    solvable = known.flatten(1).any(1)
    out[~solvable] = empty
    known_np = known.cpu().numpy().reshape(-1)
    missing = np.flatnonzero(~known_np & np.repeat(solvable.cpu().numpy(), h * w))  # flat ids i·H·W + y·W + x
    m = len(missing)
    if m == 0:
        return out
    img_id, y, x = missing // (h * w), missing % (h * w) // w, missing % w
    var = np.full(n * h * w, -1)
    var[missing] = np.arange(m)
    values = images.detach().permute(0, 2, 3, 1).reshape(-1, c).cpu().double().numpy()  # [N·H·W, C]
    diag, rhs = np.zeros(m), np.zeros((m, c))
    rows, cols, data = [np.arange(m)], [np.arange(m)], []
    for (dy, dx), weight in ROAD_WEIGHTS:  # Σ_valid w · x_u − Σ_missing w x_v = Σ_known w x_q
        inside = np.flatnonzero((y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w))
        q = img_id[inside] * h * w + (y[inside] + dy) * w + x[inside] + dx
        diag[inside] += weight
        has = known_np[q]
        rhs[inside[has]] += weight * values[q[has]]
        rows.append(inside[~has])
        cols.append(var[q[~has]])
        data.append(np.full(int((~has).sum()), -weight))
    a = sparse.csc_matrix((np.concatenate([diag, *data]), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m))
    sol = torch.from_numpy(np.asarray(spsolve(a, rhs)).reshape(m, c)).to(out)
    if noise > 0:
        sol = sol + noise * torch.randn(sol.shape, generator=generator, device=generator.device).to(sol)
    ids = [torch.from_numpy(v).to(out.device) for v in (img_id, y, x)]
    out[ids[0], :, ids[1], ids[2]] = sol
    return out


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class Curves:
    """Target probabilities after each step: [N, steps + 1] (step 0 = nothing changed yet), and the AUCs [N]."""

    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves [N, S+1] sampled at 0, 1/S, …, 1."""
    s = curve.shape[1] - 1
    return (curve.sum(1) - 0.5 * (curve[:, 0] + curve[:, -1])) / s


def perturbation_curve(model: nn.Module, images: torch.Tensor, rank: torch.Tensor, target: torch.Tensor, *,
                       metric: str, baseline: str, steps: int = 14, blur_sigma: float = 2.0,
                       black: torch.Tensor | None = None, road_noise: float = 0.01,
                       generator: torch.Generator | None = None, batch_size: int = 1024) -> torch.Tensor:
    """Target probabilities [N, steps + 1] of one metric and baseline for pixel ranks [N, H·W] (``pixel_ranks``).

    After step s the k = round(s·H·W/steps) most important pixels are replaced
    (deletion), or all but them (insertion). ``generator``: ROAD's noise;
    ``batch_size``: images per forward pass.
    """
    n, c, h, w = images.shape
    if rank.shape != (n, h * w):
        raise ValueError(f"rank: expected shape {(n, h * w)}, got {tuple(rank.shape)}")
    if target.shape != (n,):
        raise ValueError(f"target: expected {n} class indices, got shape {tuple(target.shape)}")
    if metric not in METRICS:
        raise ValueError(f"metric = {metric!r}: unknown; allowed: {', '.join(METRICS)}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline = {baseline!r}: unknown; allowed: {', '.join(BASELINES)}")
    base = None if baseline == "road" else baseline_images(images, baseline, blur_sigma, black)
    per_pass = max(1, batch_size // n)  # steps whose images share one forward pass
    probs = []
    with torch.no_grad(), model_state_guard(model, eval_mode=True):
        for first in range(0, steps + 1, per_pass):
            xs = []
            for s in range(first, min(first + per_pass, steps + 1)):
                top = (rank < round(s * h * w / steps)).view(n, h, w)
                replaced = top if metric == "deletion" else ~top
                if base is None:
                    xs.append(noisy_linear_imputation(images, ~replaced, noise=road_noise, generator=generator))
                else:
                    xs.append(torch.where(replaced[:, None], base, images))
            probs.append(_target_prob(model, torch.cat(xs), target.repeat(len(xs)), batch_size).view(len(xs), n))
    return torch.cat(probs).t()


@torch.no_grad()
def deletion_insertion(model: nn.Module, images: torch.Tensor, importance: torch.Tensor, target: torch.Tensor, *,
                       steps: int = 14, deletion_baseline: str = "black", insertion_baseline: str = "blur",
                       blur_sigma: float = 2.0, black: torch.Tensor | None = None, road_noise: float = 0.01,
                       generator: torch.Generator | None = None, batch_size: int = 1024) -> Curves:
    """Deletion and insertion curves of ``importance`` [N, H, W] for normalized ``images`` [N, C, H, W].

    One pixel order for both (``pixel_ranks``; ties in index order unless
    ``generator`` is given, which also draws ROAD's noise).
    """
    n, c, h, w = images.shape
    if importance.shape != (n, h, w):
        raise ValueError(f"importance: expected shape {(n, h, w)}, got {tuple(importance.shape)}")
    rank = pixel_ranks(importance, generator)
    kw = dict(steps=steps, blur_sigma=blur_sigma, black=black, road_noise=road_noise, generator=generator,
              batch_size=batch_size)
    d = perturbation_curve(model, images, rank, target, metric="deletion", baseline=deletion_baseline, **kw)
    i = perturbation_curve(model, images, rank, target, metric="insertion", baseline=insertion_baseline, **kw)
    return Curves(d, i, auc(d), auc(i))


def _target_prob(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = [F.softmax(model(x[i : i + batch_size]), 1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).gather(1, target[:, None])[:, 0]


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class AUCSummary:
    """AUCs of one method, metric and baseline over n images: mean, sd (ddof 1), bootstrap CI of the mean."""

    mean: float
    sd: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """A method against the random control on the same n images: d_i = AUC_i(method) − AUC_i(control)."""

    n: int
    mean_difference: float
    ci_low: float  # bootstrap CI (percentile, ``confidence``) of the mean difference
    ci_high: float
    confidence: float
    p_value: float  # two-sided Wilcoxon signed-rank test of d (scipy.stats.wilcoxon, its defaults)
    shift: str  # "lower" / "higher": the side of the control the method's AUCs lie on (by the test); "none"
    better: str  # the side that means more faithful: "lower" (deletion) or "higher" (insertion)
    alpha: float

    @property
    def verdict(self) -> str:
        return verdict(self)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def verdict(test: PairedTest) -> str:
    """The sentence a table prints for ``test``: more / less faithful than random, or not distinguishable."""
    detail = f"p={test.p_value:.2g}, n={test.n}"
    if not test.p_value < test.alpha or test.shift == "none":
        return f"not distinguishable from random at α={test.alpha:g} ({detail})"
    return f"{'more' if test.shift == test.better else 'less'} faithful than random ({detail})"


def bootstrap_ci(values: np.ndarray, *, confidence: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` [n] (scipy.stats.bootstrap, seeded)."""
    values = np.asarray(values, dtype=np.float64)
    if np.all(values == values[0]):  # every resample has the same mean
        return float(values[0]), float(values[0])
    res = stats.bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(aucs: torch.Tensor, *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> AUCSummary:
    v = aucs.detach().double().cpu().numpy()
    lo, hi = bootstrap_ci(v, confidence=confidence, resamples=resamples, seed=seed)
    return AUCSummary(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, lo, hi, len(v))


def paired_test(method_auc: torch.Tensor, control_auc: torch.Tensor, *, better: str, alpha: float = 0.05,
                confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> PairedTest:
    """Wilcoxon signed-rank test and bootstrap CI of the per-image differences method − control ([n] each)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better = {better!r}: expected 'lower' or 'higher'")
    if method_auc.shape != control_auc.shape or method_auc.ndim != 1:
        raise ValueError(f"AUCs: expected two [n] tensors, got {tuple(method_auc.shape)} and {tuple(control_auc.shape)}")
    d = (method_auc.double() - control_auc.double()).cpu().numpy()
    if np.all(d == 0):
        p, shift = 1.0, "none"
    else:
        p = float(stats.wilcoxon(d).pvalue)
        p_less, p_greater = (float(stats.wilcoxon(d, alternative=a).pvalue) for a in ("less", "greater"))
        shift = "lower" if p_less < p_greater else "higher" if p_greater < p_less else "none"
    lo, hi = bootstrap_ci(d, confidence=confidence, resamples=resamples, seed=seed)
    return PairedTest(len(d), float(d.mean()), lo, hi, confidence, p, shift, better, alpha)


# --------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class FaithfulnessStudy:
    """Every metric × baseline for each map and the random control (keys (method, metric, baseline))."""

    sign: str
    steps: int
    baselines: tuple[str, ...]
    random_maps: int
    alpha: float
    confidence: float
    seed: int
    n: int
    methods: tuple[str, ...]  # the maps' names, then RANDOM
    curves: Mapping[Key, torch.Tensor]  # target probabilities [N, steps + 1]; the control: mean over its maps
    aucs: Mapping[Key, torch.Tensor]  # [N]; the control: mean over its maps
    summaries: Mapping[Key, AUCSummary]
    tests: Mapping[Key, PairedTest]  # every method but the control, against it on the same metric and baseline

    def verdict(self, method: str, metric: str, baseline: str) -> str:
        return self.tests[(method, metric, baseline)].verdict

    def as_dict(self) -> dict[str, Any]:
        """JSON form: the settings, then per method, metric and baseline the AUC summary, mean curve and test."""
        results: dict[str, Any] = {}
        for key, summary in self.summaries.items():
            method, metric, baseline = key
            entry = {"auc": summary.as_dict(), "mean_curve": self.curves[key].mean(0).tolist()}
            if key in self.tests:
                entry["vs_random"] = self.tests[key].as_dict()
            results.setdefault(method, {}).setdefault(metric, {})[baseline] = entry
        return {"sign": self.sign, "sign_rule": SIGN_RULES[self.sign], "steps": self.steps,
                "baselines": list(self.baselines), "random_maps": self.random_maps, "alpha": self.alpha,
                "confidence": self.confidence, "seed": self.seed, "n": self.n, "methods": results}

    def figure_curves(self, deletion: str = "black", insertion: str = "blur") -> dict[str, dict[str, Any]]:
        """Per method the per-image curves [N, S+1] and mean AUCs of one deletion and one insertion baseline,
        the input of ``cnnvis.plotting.attribution.faithfulness_curves``."""
        return {m: {"deletion": self.curves[(m, "deletion", deletion)].cpu().numpy(),
                    "insertion": self.curves[(m, "insertion", insertion)].cpu().numpy(),
                    "deletion_auc": self.summaries[(m, "deletion", deletion)].mean,
                    "insertion_auc": self.summaries[(m, "insertion", insertion)].mean} for m in self.methods}


def faithfulness_study(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                       maps: Mapping[str, torch.Tensor], *, black: torch.Tensor | None, sign: str = SIGN,
                       steps: int = 14, baselines: Sequence[str] = ("black", "blur", "road"), blur_sigma: float = 2.0,
                       road_noise: float = 0.01, random_maps: int = 4, alpha: float = 0.05, confidence: float = 0.95,
                       bootstrap: int = 10_000, seed: int = 0, batch_size: int = 1024) -> FaithfulnessStudy:
    """Deletion and insertion with every baseline for each attribution map, against random maps.

    ``maps[name]``: a method's attributions [N, C or 1, H, W] for normalized
    ``images`` [N, C, H, W] and class indices ``targets`` [N]; reduced by
    ``pixel_importance(·, sign)`` (default ``SIGN`` = "positive"). The control:
    ``random_maps`` independent uniform maps per image; its per-image curve and
    AUC are their mean. Each method is tested against it per image
    (``paired_test``). Randomness (random maps, tie order, ROAD's noise,
    bootstrap) is drawn from generators seeded by ``seed`` and the name of what
    they serve, so it does not depend on which other methods are studied.
    ``black``: intensity 0 in normalized units per channel [C] (baseline "black").
    """
    n, c, h, w = images.shape
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device)
    if targets.shape != (n,):
        raise ValueError(f"targets: expected {n} class indices, got shape {tuple(targets.shape)}")
    if n < 2:
        raise ValueError("faithfulness_study: a paired test needs at least 2 images")
    if sign not in SIGNS:
        raise ValueError(f"sign = {sign!r}: unknown; allowed: {', '.join(SIGNS)}")
    baselines = tuple(baselines)
    if not baselines or len(set(baselines)) < len(baselines) or not set(baselines) <= set(BASELINES):
        raise ValueError(f"baselines = {list(baselines)}: expected distinct entries of {', '.join(BASELINES)}")
    if random_maps < 1 or steps < 2 or seed < 0:
        raise ValueError(f"random_maps = {random_maps}, steps = {steps}, seed = {seed}: expected ≥ 1, ≥ 2, ≥ 0")
    if RANDOM in maps:
        raise ValueError(f"maps: {RANDOM!r} is the control's name")
    ranks = {}
    for name, attr in maps.items():
        if attr.ndim != 4 or attr.shape[0] != n or attr.shape[2:] != images.shape[2:]:
            raise ValueError(f"maps[{name!r}]: expected [{n}, C, {h}, {w}], got {tuple(attr.shape)}")
        ranks[name] = pixel_ranks(pixel_importance(attr.detach(), sign), _generator(seed, "ties", name))
    g = _generator(seed, RANDOM)
    control = [pixel_ranks(torch.rand(n, h, w, generator=g, device=g.device).to(images.device))
               for _ in range(random_maps)]

    curves, aucs, summaries, tests = {}, {}, {}, {}
    kw = dict(steps=steps, blur_sigma=blur_sigma, black=black, road_noise=road_noise, batch_size=batch_size)
    for metric in METRICS:
        for baseline in baselines:
            for name, rank in ranks.items():
                curves[(name, metric, baseline)] = perturbation_curve(
                    model, images, rank, targets, metric=metric, baseline=baseline,
                    generator=_generator(seed, "road", name, metric), **kw)
            curves[(RANDOM, metric, baseline)] = torch.stack([perturbation_curve(
                model, images, rank, targets, metric=metric, baseline=baseline,
                generator=_generator(seed, "road", RANDOM, str(k), metric), **kw) for k, rank in enumerate(control)]).mean(0)
    for key, curve in curves.items():
        aucs[key] = auc(curve)
        summaries[key] = summarize(aucs[key], confidence=confidence, resamples=bootstrap,
                                   seed=_seed(seed, "bootstrap", *key))
    for (name, metric, baseline) in curves:
        if name != RANDOM:
            tests[(name, metric, baseline)] = paired_test(
                aucs[(name, metric, baseline)], aucs[(RANDOM, metric, baseline)], better=BETTER[metric], alpha=alpha,
                confidence=confidence, resamples=bootstrap, seed=_seed(seed, "paired", name, metric, baseline))
    return FaithfulnessStudy(sign, steps, baselines, random_maps, alpha, confidence, seed, n, (*maps, RANDOM),
                             MappingProxyType(curves), MappingProxyType(aucs), MappingProxyType(summaries),
                             MappingProxyType(tests))


def study_options(cfg: Any) -> dict[str, Any]:
    """The keyword arguments of ``faithfulness_study`` from a ``VisualizeConfig``."""
    return {"sign": cfg.faithfulness_sign, "steps": cfg.faithfulness_steps, "baselines": cfg.faithfulness_baselines,
            "blur_sigma": cfg.blur_sigma, "road_noise": cfg.road_noise, "random_maps": cfg.faithfulness_random_maps,
            "alpha": cfg.faithfulness_alpha, "bootstrap": cfg.faithfulness_bootstrap, "seed": cfg.seed}


def _seed(seed: int, *purpose: str) -> int:
    """A seed for one use of randomness: ``seed`` and the name of that use (crc32: the same in every process)."""
    return ((seed << 32) | zlib.crc32("/".join(purpose).encode())) % 2**63


def _generator(seed: int, *purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, *purpose))
