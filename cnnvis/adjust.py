"""Paper 1's width rule, made precise: redundancy of each conv layer decides its number of kernels.

Paper 1 §IV: if the reconstructed feature maps of a layer are very similar
(high redundancy) either (1) the model is under-trained — train longer and
adjust the learning rate — or (2) it is trained and the layer has too many
kernels — remove some; if they are dissimilar (low redundancy) add kernels,
step by step, until the similarity sits at a suitable level (their layer 2
ends near 128 kernels).

Here, per conv layer, in order, with ``r`` = the configured redundancy metric:
- r > ``upper``: shrink to the number of distinct kernel groups (near-duplicate
  groups count once, dead kernels not at all), never below ``min_width`` nor
  below ``shrink_floor`` × the width. Before any shrink, an under-trained
  baseline (validation accuracy still rising) is trained further first and
  re-measured (rule 1), and the retrain recipe gets the extra epochs.
- r < ``lower``: grow (× ``growth_factor`` or + ``growth_step``), train the new
  architecture briefly, re-measure; repeat until r ≥ ``lower`` or ``max_width``
  or ``max_steps``. A step that overshoots above ``upper`` is undone.
- otherwise keep.

Calibration. The search first trains the unchanged width with the same brief
recipe (the reference). Briefly trained models are far more redundant than the
trained baseline, and mostly through dead kernels (the paper's own rule 1: an
under-trained layer looks redundant): the committed Fashion-MNIST search
measured conv2 at 64 kernels as 0.0 trained but 0.469 briefly trained, 18 of
its 30 non-distinct kernels dead, and the dead share fell as the layer grew
(18/64, 9/96, 10/128), so the brief values fell with width (0.458 at 96, 0.297
at 128). The previous calibration (``calibration: offset``: baseline +
candidate − reference, on the fraction with dead kernels) therefore judged
every candidate below the baseline's 0.0 (−0.010, −0.172): the band could not
be entered and the width cap decided. ``calibration: share`` (the default)
calibrates at the level where brief training acts: dead kernels are set aside
(the candidate keeps the baseline's share of alive kernels) and the share of
distinct kernels among the alive ones is scaled by the factor the brief recipe
loses at the reference width, ``s0 · s / s_ref`` (s = distinct/alive), clipped
to [0, 1]. The judged value stays a redundancy in [0, 1], equals the trained
baseline's at the reference width, and rises when widening adds duplicates
(the committed candidate at 96 kernels: 52 distinct of 87 alive → 0.191, in
the band).

Margin. A pair of kernels is a near-duplicate when its similarity, averaged
over the probe images, reaches the threshold; with few images that average is
noisy and a layer near a band edge flips (the committed conv1 is 0.1875 on one
run and 0.125 on a retrained model, either side of ``lower`` = 0.15). The
spread across probe images is measured by resampling them (``bootstrap``
resamples with replacement, the same resamples for baseline, reference and
candidate, which share their images): the judged value's standard deviation
over the resamples gives the range value ± ``margin_se`` × sd. A layer is "low"
only if the whole range is below ``lower`` and "high" only if it is all above
``upper``; a range that reaches into the band keeps the width (a growth step
stops there). 2.5 sd: a search takes some 5–10 such judgments, and 2.5 sd
(0.6 % one-sided each) keeps a wrong move from noise near 5 % for the whole
search. More probe images (``probe_images``) narrow the range.

The library does not train or project by itself: the caller passes
``train_fn(widths) -> (model, proxy_top1)`` and ``measure_fn(model, layer_index)
-> Measurement`` (or a bare ``Redundancy``), so the rule is testable with fakes
and the stage owns the data. Every training and measurement is kept in a
``SearchRecord``, from which ``ablation`` re-judges the search under other
settings without training again.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnvis import ConfigError
from cnnvis import similarity as S
from cnnvis.config import ModelConfig, opt
from cnnvis.similarity import LayerSimilarity, Redundancy, SimilarityConfig, layer_similarity, redundancy

log = logging.getLogger(__name__)

METRICS = ("redundant_fraction", "fraction_above", "mean_similarity")
CALIBRATIONS = ("share", "offset")


@dataclass(frozen=True)
class AdjustConfig:
    """Section ``adjust`` of params.yaml."""

    # 1 − distinct/K (share of kernels that are dead or a near-duplicate of another) | share of
    # near-duplicate pairs | mean pairwise similarity
    metric: str = opt("redundant_fraction", choices=METRICS)
    lower: float = opt(0.15, ge=0.0, le=1.0)  # below: grow the layer
    upper: float = opt(0.30, ge=0.0, le=1.0)  # above: shrink (or train longer first)
    layers: tuple[int, ...] | None = opt(None, ge=0)  # conv layer indices to adjust (default: all)
    growth: str = opt("multiply", choices=("multiply", "add"))
    growth_factor: float = opt(1.5, gt=1.0)
    growth_step: int = opt(32, ge=1)
    max_width: int = opt(128, ge=1)
    min_width: int = opt(8, ge=1)
    max_steps: int = opt(4, ge=1)  # growth steps per layer
    shrink_floor: float = opt(0.5, gt=0.0, le=1.0)  # never shrink below this share of the width at once
    check_undertrained: bool = opt(True)  # rule (1): train longer before shrinking a still-improving model
    extra_epochs: int = opt(2, ge=1)  # rule (1): further epochs (added to the retrain recipe too)
    extra_lr_factor: float = opt(0.5, gt=0.0)  # rule (1): lr of the further training, × the recipe's lr
    search_epochs: int = opt(1, ge=1)  # brief training of each growth candidate
    search_train_images: int | None = opt(12000, ge=1)  # subset for the brief trainings (None = all)
    search_val_images: int = opt(2000, ge=1)  # validation images for the proxy accuracy
    search_reference: bool = opt(True)  # measure the unchanged width with the brief recipe first
    search_calibrate: bool = opt(True)  # judge candidates relative to that reference (see calibration)
    calibration: str = opt("share", choices=CALIBRATIONS)  # share: distinct/alive scaled; offset: the previous rule
    margin_se: float = opt(2.5, ge=0.0)  # judged value ± this many sd over probe-image resamples (0: none)
    bootstrap: int = opt(200, ge=0)  # probe-image resamples that measure that sd (0: no margin)
    # probe images the rule judges on: the visualize stage's first, then more test images class by class
    # (None = the visualize stage's probes)
    probe_images: int | None = opt(40, ge=1)
    deconv_mode: str = opt("all", choices=("all", "max"))  # signal of each projected map (as visualize)
    deconv_rectify: bool = opt(True)  # project relu(A_k), as Zeiler & Fergus
    # the ablation re-judges the search's trainings and measurements with one setting changed per row
    ablation_bands: tuple[tuple[float, ...], ...] = opt(((0.10, 0.25), (0.20, 0.40)))  # [lower, upper] pairs
    ablation_max_widths: tuple[int, ...] = opt((96,), ge=1)
    ablation_probe_images: tuple[int, ...] = opt((4, 10, 20), ge=2)
    ablation_trainings: int = opt(4, ge=0)  # brief trainings the ablation may add for widths the search skipped

    def check(self, section: str) -> None:
        if self.lower > self.upper:
            raise ConfigError(f"{section}.lower = {self.lower}: must be <= upper ({self.upper})")
        if self.min_width > self.max_width:
            raise ConfigError(f"{section}.min_width = {self.min_width}: must be <= max_width ({self.max_width})")
        for i, band in enumerate(self.ablation_bands):
            if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
                raise ConfigError(f"{section}.ablation_bands[{i}] = {list(band)}: expected [lower, upper] with "
                                  "0 <= lower <= upper <= 1")


def metric_value(r: Redundancy, metric: str) -> float:
    """The redundancy number the rule compares with its band."""
    if metric == "redundant_fraction":
        return 1.0 - r.distinct / r.num_kernels if r.num_kernels else 0.0
    if metric == "fraction_above":
        return r.fraction_above
    if metric == "mean_similarity":
        return r.mean_similarity
    raise ValueError(f"metric = {metric!r}; allowed: {', '.join(METRICS)}")


def classify(value: float, cfg: AdjustConfig, lo: float | None = None, hi: float | None = None) -> str:
    """'high' | 'low' | 'in_band' of a value whose plausible range is [lo, hi] (default: the value alone): low
    or high only if the whole range is outside the band. NaN (e.g. every kernel dead) counts as high."""
    lo = value if lo is None else lo
    hi = value if hi is None else hi
    if math.isnan(value) or lo > cfg.upper:
        return "high"
    if hi < cfg.lower:
        return "low"
    return "in_band"


def grow_width(width: int, cfg: AdjustConfig) -> int:
    new = round(width * cfg.growth_factor) if cfg.growth == "multiply" else width + cfg.growth_step
    return min(max(new, width + 1), cfg.max_width)


def shrink_width(width: int, r: Redundancy, cfg: AdjustConfig) -> int:
    """Towards the number of distinct groups, within [min_width, width] and ≥ shrink_floor·width."""
    floor = max(cfg.min_width, math.ceil(cfg.shrink_floor * width))
    return min(width, max(r.distinct, floor))


# --------------------------------------------------------------------------- one measured layer


class NotMeasured(Exception):
    """A re-judged setting needs a training or probe images the search did not have."""


BOOTSTRAP_SEED = 0  # one fixed set of resamples per number of images: paired across the measurements


@functools.lru_cache(maxsize=8)
def resamples(n: int, b: int) -> np.ndarray:
    """``b`` bootstrap resamples of ``n`` probe images as counts per image: int64 [b, n] (read-only)."""
    counts = np.random.default_rng(BOOTSTRAP_SEED).multinomial(n, np.full(n, 1.0 / n), size=b)
    counts.flags.writeable = False
    return counts


@dataclass(frozen=True, eq=False)
class Measurement:
    """One conv layer of one model on n probe images: its redundancy and, to re-judge it on fewer images or to
    resample the images, the layer's similarity with each image's fingerprints and dead maps."""

    redundancy: Redundancy
    similarity: LayerSimilarity | None = None
    sim_cfg: SimilarityConfig | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def images(self) -> int | None:
        return None if self.similarity is None else int(self.similarity.dead_maps.shape[0])

    def first(self, n: int | None) -> Measurement:
        """The same layer judged on its first ``n`` probe images only (None: all)."""
        if n is None or self.similarity is None or n == self.images:
            return self
        if n > self.images:
            raise NotMeasured(f"{n} probe images (the search measured {self.images})")
        if ("first", n) not in self._cache:
            ls = similarity_of(self.similarity.fingerprints[:n], self.similarity.dead_maps[:n])
            self._cache["first", n] = Measurement(redundancy(ls, self.sim_cfg), ls, self.sim_cfg)
        return self._cache["first", n]

    def replicates(self, b: int) -> tuple[Redundancy, ...] | None:
        """The redundancy on each of ``b`` bootstrap resamples of its probe images (None without per-image data
        or with fewer than 2 images)."""
        ls, n = self.similarity, self.images
        if ls is None or b == 0 or n < 2:
            return None
        if ("replicates", b) not in self._cache:
            w = resamples(n, b).astype(np.float64)  # [b, n]
            sim = 1.0 - S.pairwise_hamming(ls.fingerprints).astype(np.float64) / 64.0  # [n, K, K]
            alive = ~ls.dead_maps
            both = (alive[:, :, None] & alive[:, None, :]).astype(np.float64)
            k = sim.shape[1]
            num = (w @ (sim * both).reshape(n, -1)).reshape(b, k, k)
            den = (w @ both.reshape(n, -1)).reshape(b, k, k)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(den > 0, num / den, np.nan)
            out = []
            for r in range(b):
                pick = np.repeat(np.arange(n), resamples(n, b)[r])
                ls_r = LayerSimilarity(mean=mean[r], std=np.zeros_like(mean[r]), count=den[r].astype(np.int64),
                                       dead_maps=ls.dead_maps[pick], fingerprints=ls.fingerprints[pick])
                out.append(redundancy(ls_r, self.sim_cfg))
            self._cache["replicates", b] = tuple(out)
        return self._cache["replicates", b]


def as_measurement(m: Measurement | Redundancy) -> Measurement:
    return m if isinstance(m, Measurement) else Measurement(m)


def similarity_of(fingerprints: np.ndarray, dead: np.ndarray) -> LayerSimilarity:
    """``layer_similarity`` from 64-bit fingerprints [N, K] and dead maps [N, K] already computed (a subset of
    probe images re-judged without hashing again): the same mean, std and count over the images where both
    maps are alive."""
    sim = 1.0 - S.pairwise_hamming(fingerprints).astype(np.float64) / 64.0  # [N, K, K]
    alive = ~dead
    both = alive[:, :, None] & alive[:, None, :]
    count = both.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(both, sim, 0.0).sum(0) / count
        var = np.where(both, (sim - mean) ** 2, 0.0).sum(0) / count
    return LayerSimilarity(mean=np.where(count > 0, mean, np.nan), std=np.where(count > 0, np.sqrt(var), np.nan),
                           count=count, dead_maps=dead, fingerprints=fingerprints)


# --------------------------------------------------------------------------- judging a value


def _alive(r: Redundancy) -> int:
    return r.num_kernels - len(r.dead_kernels)


def calibrated(cand: Redundancy, ref: Redundancy | None, base: Redundancy, cfg: AdjustConfig) -> float:
    """The candidate's redundancy on the trained baseline's scale (see the module docstring); the raw value
    without a reference or with ``search_calibrate`` off."""
    v = metric_value(cand, cfg.metric)
    if ref is None or not cfg.search_calibrate:
        return v
    if cfg.calibration == "offset":
        return v - (metric_value(ref, cfg.metric) - metric_value(base, cfg.metric))
    if cfg.metric == "redundant_fraction":
        if not (_alive(cand) and _alive(ref) and _alive(base) and ref.distinct):
            return float("nan")
        share = (base.distinct / _alive(base)) * (cand.distinct / _alive(cand)) / (ref.distinct / _alive(ref))
        return 1.0 - _alive(base) / base.num_kernels * min(share, 1.0)
    # pair statistics of alive kernels only: the same ratio on their complement (dissimilarity)
    v0, vr = metric_value(base, cfg.metric), metric_value(ref, cfg.metric)
    if any(math.isnan(x) for x in (v, v0, vr)) or vr >= 1.0:
        return float("nan")
    return 1.0 - min((1.0 - v0) * (1.0 - v) / (1.0 - vr), 1.0)


@dataclass(frozen=True)
class Judged:
    value: float
    lo: float  # value − margin_se · sd
    hi: float  # value + margin_se · sd
    sd: float = 0.0  # over the bootstrap resamples of the probe images

    def band(self, cfg: AdjustConfig) -> str:
        return classify(self.value, cfg, self.lo, self.hi)

    def text(self) -> str:
        return f"{self.value:.3f}" if self.lo == self.hi else f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def judge(cand: Measurement, ref: Measurement | None, base: Measurement, cfg: AdjustConfig) -> Judged:
    """The calibrated value with its range ± ``margin_se`` sd over the bootstrap resamples of the probe images
    (candidate, reference and baseline resampled together; one without per-image data stays fixed)."""
    value = calibrated(cand.redundancy, ref.redundancy if ref is not None else None, base.redundancy, cfg)
    reps = [m.replicates(cfg.bootstrap) if m is not None and cfg.margin_se > 0 else None for m in (cand, ref, base)]
    if all(r is None for r in reps):
        return Judged(value, value, value)
    b = len(next(r for r in reps if r is not None))

    def pick(m: Measurement | None, rep: tuple | None, k: int) -> Redundancy | None:
        return None if m is None else (m.redundancy if rep is None else rep[k])

    values = np.array([calibrated(pick(cand, reps[0], k), pick(ref, reps[1], k), pick(base, reps[2], k), cfg)
                       for k in range(b)])
    finite = values[np.isfinite(values)]
    sd = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    return Judged(value, value - cfg.margin_se * sd, value + cfg.margin_se * sd, sd)


# --------------------------------------------------------------------------- the search


@dataclass
class Step:
    layer: int
    width: int
    phase: str  # baseline | further_training | reference | grow | shrink | keep
    value: float | None
    band: str | None
    proxy_top1: float | None = None
    seconds: float = 0.0
    note: str = ""
    redundancy: dict | None = None
    judged: Judged | None = None

    def as_dict(self) -> dict[str, Any]:
        j = self.judged
        return {"layer": self.layer, "width": self.width, "phase": self.phase, "redundancy_value": self.value,
                "judged": None if j is None else j.value, "judged_range": None if j is None else [j.lo, j.hi],
                "judged_sd": None if j is None else j.sd,
                "band": self.band, "proxy_top1": self.proxy_top1, "seconds": round(self.seconds, 2),
                "note": self.note, "summary": self.redundancy}


@dataclass
class SearchRecord:
    """What the search trained and measured: enough to re-judge it under other settings without training."""

    baseline: list[Measurement]
    further: list[Measurement] | None = None
    trained: dict[tuple[int, ...], tuple[Any, float]] = field(default_factory=dict)  # widths → (model, top-1)
    measured: dict[tuple[tuple[int, ...], int], Measurement] = field(default_factory=dict)


@dataclass
class AdjustResult:
    widths: tuple[int, ...]
    baseline_widths: tuple[int, ...]
    further_training: bool = False  # rule (1) applied
    extra_epochs: int = 0
    steps: list[Step] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    record: SearchRecord | None = None

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return replace(base, widths=self.widths)


TrainFn = Callable[[tuple[int, ...]], tuple[Any, float]]
MeasureFn = Callable[[Any, int], "Measurement | Redundancy"]
FurtherFn = Callable[[], Any]


def adjust_widths(baseline: Sequence[Measurement | Redundancy], widths: tuple[int, ...], cfg: AdjustConfig, *,
                  train_fn: TrainFn, measure_fn: MeasureFn, undertrained: bool = False,
                  further_fn: FurtherFn | None = None) -> AdjustResult:
    """Apply the rule to every selected conv layer of a model with ``widths``.

    ``baseline``: the measured redundancy of each conv layer of the trained baseline.
    ``further_fn()``: trains the baseline further (rule 1) and returns it, to be re-measured.
    The result's ``record`` keeps every trained model and measurement (``ablation`` re-judges them).
    """
    record = SearchRecord([as_measurement(m) for m in baseline])

    def train(ws: tuple[int, ...]) -> tuple[Any, float]:
        record.trained[ws] = train_fn(ws)
        return ws, record.trained[ws][1]

    def measure(ws: tuple[int, ...], i: int) -> Measurement:
        if (ws, i) not in record.measured:
            record.measured[ws, i] = as_measurement(measure_fn(record.trained[ws][0], i))
        return record.measured[ws, i]

    def further() -> list[Measurement]:
        model = further_fn()
        record.further = [as_measurement(measure_fn(model, i)) for i in range(len(widths))]
        return record.further

    res = _search(record.baseline, widths, cfg, train, measure, undertrained,
                  further if further_fn is not None else None)
    res.record = record
    return res


def _search(baseline: list[Measurement], widths: tuple[int, ...], cfg: AdjustConfig,
            train: Callable[[tuple[int, ...]], tuple[Any, float]], measure: Callable[[Any, int], Measurement],
            undertrained: bool, further: Callable[[], list[Measurement]] | None) -> AdjustResult:
    """The rule itself: ``train(widths) -> (model, top-1)``, ``measure(model, i)`` and ``further()`` give
    measurements on every probe image; each is judged on the first ``cfg.probe_images``."""
    if len(baseline) != len(widths):
        raise ConfigError(f"similarity has {len(baseline)} conv layers but model.widths has {len(widths)}")
    layers = range(len(widths)) if cfg.layers is None else cfg.layers
    bad = [i for i in layers if i >= len(widths)]
    if bad:
        raise ConfigError(f"adjust.layers = {list(cfg.layers)}: index {bad[0]} out of range (model has {len(widths)} conv layers)")
    n = cfg.probe_images
    res = AdjustResult(widths=tuple(widths), baseline_widths=tuple(widths))
    train = functools.cache(train)  # one layer's last trial is often the next layer's reference: train it once
    current = [m.first(n) for m in baseline]
    judged = [judge(m, None, m, cfg) for m in current]
    for i, (m, j) in enumerate(zip(current, judged, strict=True)):
        res.steps.append(Step(i, widths[i], "baseline", j.value, j.band(cfg), redundancy=m.redundancy.as_dict(),
                              judged=j))

    high = [i for i in layers if judged[i].band(cfg) == "high"]
    if high and undertrained and cfg.check_undertrained and further is not None:
        # rule (1): redundancy may come from too little training; train on, then re-measure
        t0 = time.perf_counter()
        current = [m.first(n) for m in further()]
        judged = [judge(m, None, m, cfg) for m in current]
        dt = time.perf_counter() - t0
        res.further_training, res.extra_epochs = True, cfg.extra_epochs
        for i, (m, j) in enumerate(zip(current, judged, strict=True)):
            res.steps.append(Step(i, widths[i], "further_training", j.value, j.band(cfg), seconds=dt,
                                  note=f"+{cfg.extra_epochs} epochs at lr×{cfg.extra_lr_factor}: baseline was still improving",
                                  redundancy=m.redundancy.as_dict(), judged=j))

    new_widths = list(widths)
    for i in layers:
        r, j = current[i].redundancy, judged[i]
        band, v = j.band(cfg), j.value
        w = new_widths[i]
        if band == "high":
            target = shrink_width(w, r, cfg)
            note = f"{r.distinct} distinct groups of {w} kernels ({len(r.dead_kernels)} dead)"
            res.steps.append(Step(i, target, "shrink", v, band, note=note, judged=j))
            res.decisions.append({"layer": i, "action": "shrink" if target < w else "keep", "from": w, "to": target,
                                  "judged": _plain(j), "reason": f"{cfg.metric} {j.text()} > upper {cfg.upper}; {note}"})
            new_widths[i] = target
        elif band == "low":
            new_widths[i] = _grow(i, new_widths, current[i], cfg, train, measure, res)
        else:
            inside = cfg.lower <= v <= cfg.upper
            res.steps.append(Step(i, w, "keep", v, band, judged=j))
            res.decisions.append({"layer": i, "action": "keep", "from": w, "to": w, "judged": _plain(j),
                                  "reason": f"{cfg.metric} {j.text()} " + (f"within [{cfg.lower}, {cfg.upper}]" if inside
                                            else f"reaches [{cfg.lower}, {cfg.upper}] within {cfg.margin_se:g} sd")})
    res.widths = tuple(new_widths)
    return res


def _plain(j: Judged) -> dict:
    return {"value": j.value, "lo": j.lo, "hi": j.hi, "sd": j.sd}


def _grow(i: int, widths: list[int], base: Measurement, cfg: AdjustConfig, train: Callable, measure: Callable,
          res: AdjustResult) -> int:
    """Grow layer ``i`` step by step; return its final width (the others as in ``widths``)."""
    n = cfg.probe_images
    start = widths[i]
    reason = f"{cfg.metric} {judge(base, None, base, cfg).text()} < lower {cfg.lower}"
    ref = None  # the unchanged width with the brief recipe
    if cfg.search_reference:
        t0 = time.perf_counter()
        model, acc = train(tuple(widths))
        ref = measure(model, i).first(n)
        j = judge(ref, ref, base, cfg)
        v = metric_value(ref.redundancy, cfg.metric)
        res.steps.append(Step(i, start, "reference", v, j.band(cfg), acc, time.perf_counter() - t0,
                              f"unchanged width, brief recipe; trained baseline {metric_value(base.redundancy, cfg.metric):.3f}"
                              f", brief {v:.3f} ({len(ref.redundancy.dead_kernels)} dead)", ref.redundancy.as_dict(), j))
    best, stop = start, "max_steps reached"
    w = start
    for _ in range(cfg.max_steps):
        if w >= cfg.max_width:
            stop = f"max_width {cfg.max_width} reached"
            break
        w = grow_width(w, cfg)
        trial = list(widths)
        trial[i] = w
        t0 = time.perf_counter()
        model, acc = train(tuple(trial))
        m = measure(model, i).first(n)
        v = metric_value(m.redundancy, cfg.metric)
        j = judge(m, ref, base, cfg)
        band = j.band(cfg)
        note = f"measured {v:.3f}, judged {j.text()}" if ref is not None and cfg.search_calibrate else ""
        res.steps.append(Step(i, w, "grow", v, band, acc, time.perf_counter() - t0, note, m.redundancy.as_dict(), j))
        log.info("layer %d width %d: %s %.3f (judged %s: %s), proxy top-1 %.2f", i, w, cfg.metric, v, j.text(),
                 band, acc)
        if band == "high":
            stop = f"width {w} overshoots upper {cfg.upper} (judged {j.text()}); kept {best}"
            break
        best = w
        if band == "in_band":
            inside = cfg.lower <= j.value <= cfg.upper
            stop = f"width {w} enters the band (judged {j.text()})" if inside else \
                f"width {w} reaches the band within {cfg.margin_se:g} sd (judged {j.text()})"
            break
    else:
        if w >= cfg.max_width:
            stop = f"max_width {cfg.max_width} reached"
    res.decisions.append({"layer": i, "action": "grow" if best > start else "keep", "from": start, "to": best,
                          "judged": _plain(judge(base, None, base, cfg)), "reason": f"{reason}; {stop}"})
    return best


# --------------------------------------------------------------------------- re-judging the search


@dataclass(frozen=True)
class AblationRow:
    """The search re-judged with one setting changed: its widths, or what it would have needed."""

    setting: str
    config: AdjustConfig
    widths: tuple[int, ...] | None
    decisions: tuple[dict, ...]
    reused: int  # brief trainings of the search this row re-used
    added: tuple[tuple[int, ...], ...]  # width tuples trained for the ablation that this row used
    missing: str | None  # what the row would need beyond the search and the ablation's training budget

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {"setting": self.setting, "band": [c.lower, c.upper], "max_width": c.max_width,
                "calibration": c.calibration if c.search_calibrate else "off", "margin_se": c.margin_se,
                "probe_images": c.probe_images, "widths": None if self.widths is None else list(self.widths),
                "decisions": list(self.decisions), "reused_trainings": self.reused,
                "added_trainings": [list(w) for w in self.added], "missing": self.missing}


def ablation_settings(cfg: AdjustConfig, previous_probe_images: int | None) -> list[tuple[str, AdjustConfig]]:
    """The default, the previous rule (offset calibration, no margin, the visualize stage's probes), and one
    change per row: calibration offset / off, no margin, each band, cap and number of probe images."""
    return [("default", cfg),
            ("previous rule", replace(cfg, calibration="offset", margin_se=0.0, probe_images=previous_probe_images)),
            ("calibration offset", replace(cfg, calibration="offset")),
            ("calibration off", replace(cfg, search_calibrate=False)),
            ("no margin", replace(cfg, margin_se=0.0)),
            *[(f"band [{lo:g}, {hi:g}]", replace(cfg, lower=lo, upper=hi)) for lo, hi in cfg.ablation_bands],
            *[(f"cap {w}", replace(cfg, max_width=w)) for w in cfg.ablation_max_widths],
            *[(f"{n} probe images", replace(cfg, probe_images=n)) for n in cfg.ablation_probe_images]]


def ablation(record: SearchRecord, widths: tuple[int, ...], settings: Sequence[tuple[str, AdjustConfig]], *,
             undertrained: bool, measure_fn: MeasureFn | None = None, train_fn: TrainFn | None = None,
             further_fn: FurtherFn | None = None, budget: int = 0) -> list[AblationRow]:
    """Re-run the rule of every setting on the search's trainings and measurements (``record``, which grows
    with what is added here). A width tuple the search did not train is trained with ``train_fn`` while
    ``budget`` brief trainings last (rule (1)'s further training counts as one), then the row ends with
    ``missing``; so does a row that needs more probe images than were measured. A layer of a trained model
    that was not measured is measured now with ``measure_fn`` (no training)."""
    searched = set(record.trained)
    left = [budget]
    rows = []
    for name, cfg in settings:
        used: set[tuple[int, ...]] = set()

        def train(ws: tuple[int, ...], used: set = used) -> tuple[Any, float]:
            if ws not in record.trained:
                if train_fn is None or left[0] <= 0:
                    raise NotMeasured(f"a brief training of widths {list(ws)}")
                left[0] -= 1
                record.trained[ws] = train_fn(ws)
            used.add(ws)
            return ws, record.trained[ws][1]

        def measure(ws: tuple[int, ...], i: int) -> Measurement:
            if (ws, i) not in record.measured:
                if measure_fn is None:
                    raise NotMeasured(f"layer {i} of widths {list(ws)} measured")
                record.measured[ws, i] = as_measurement(measure_fn(record.trained[ws][0], i))
            return record.measured[ws, i]

        def further() -> list[Measurement]:
            if record.further is None:
                if further_fn is None or measure_fn is None or left[0] <= 0:
                    raise NotMeasured("rule (1)'s further training of the baseline")
                left[0] -= 1
                model = further_fn()
                record.further = [as_measurement(measure_fn(model, i)) for i in range(len(widths))]
            return record.further

        try:
            res = _search(record.baseline, widths, cfg, train, measure, undertrained, further)
            widths_out, decisions, missing = res.widths, tuple(res.decisions), None
        except NotMeasured as e:
            widths_out, decisions, missing = None, (), str(e)
        rows.append(AblationRow(name, cfg, widths_out, decisions, len(used & searched),
                                tuple(sorted(used - searched)), missing))
    return rows


# --------------------------------------------------------------------------- measuring a model


def reconstruct(model: nn.Module, layer_index: int, images: torch.Tensor, *, mode: str = "all",
                rectify: bool = True) -> np.ndarray:
    """Deconvnet reconstructions of every kernel of conv layer ``layer_index``: float32 [N, K, C, H, W]."""
    from cnnvis.attribution.deconvnet import project_feature_maps
    from cnnvis.models import conv_layers

    convs = conv_layers(model)
    if not 0 <= layer_index < len(convs):
        raise ConfigError(f"conv layer {layer_index}: model has {len(convs)} conv layers")
    return project_feature_maps(model, convs[layer_index][1], images, mode=mode, rectify=rectify).float().cpu().numpy()


def measure(model: nn.Module, layer_index: int, images: torch.Tensor, sim_cfg: SimilarityConfig, *,
            mode: str = "all", rectify: bool = True) -> tuple[LayerSimilarity, Redundancy, np.ndarray]:
    """Similarity and redundancy of one conv layer of ``model`` on normalized probe ``images``;
    also the reconstructions [N, K, C, H, W]."""
    recon = reconstruct(model, layer_index, images, mode=mode, rectify=rectify)
    ls = layer_similarity(recon, sim_cfg)
    return ls, redundancy(ls, sim_cfg), recon


def measurement(model: nn.Module, layer_index: int, images: torch.Tensor, sim_cfg: SimilarityConfig, *,
                mode: str = "all", rectify: bool = True) -> Measurement:
    """One conv layer of ``model`` measured on every one of the probe ``images``, from float16 reconstructions
    (what the visualize stage stores and the similarity stage hashes, so the baseline's first probes give the
    similarity stage's numbers)."""
    if sim_cfg.bits != 64:
        raise ConfigError(f"similarity.hash_size = {sim_cfg.hash_size}: the width rule re-judges subsets of probe "
                          "images from 64-bit fingerprints; use hash_size 8")
    recon = reconstruct(model, layer_index, images, mode=mode, rectify=rectify).astype(np.float16)
    cfg = replace(sim_cfg, max_probe_images=None)  # the rule's own probe_images decides how many are judged
    ls = layer_similarity(recon, cfg)
    return Measurement(redundancy(ls, cfg), ls, cfg)


# --------------------------------------------------------------------------- the control


def uniform_control_widths(base: tuple[int, ...], count_fn: Callable[[tuple[int, ...]], int], target: int,
                           max_factor: float = 8.0) -> tuple[int, ...]:
    """Widths ``round(w·α)`` for one α shared by every layer whose parameter count is closest to ``target``.

    ``count_fn(widths)`` gives a model's parameter count; it grows with α, so α is
    bisected and the closest of the neighbouring integer width sets is taken.
    """
    def widths_at(a: float) -> tuple[int, ...]:
        return tuple(max(1, round(w * a)) for w in base)

    lo, hi = 1.0 / max_factor, max_factor
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if count_fn(widths_at(mid)) < target:
            lo = mid
        else:
            hi = mid
    candidates = {widths_at(lo), widths_at(hi)}
    return min(candidates, key=lambda ws: (abs(count_fn(ws) - target), ws))
