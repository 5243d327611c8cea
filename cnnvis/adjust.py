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
  or ``max_steps``. A step that overshoots above ``upper`` is undone. The
  search first measures the unchanged width with the same brief recipe; with
  ``search_calibrate`` a candidate is judged by baseline value + (candidate −
  reference), because briefly trained models are more redundant than the
  trained baseline (the paper's own rule 1) and raw values would not be
  comparable with the band.
- otherwise keep.

The library does not train or project by itself: the caller passes
``train_fn(widths) -> (model, proxy_top1)`` and ``measure_fn(model, layer_index)
-> Redundancy``, so the rule is testable with fakes and the stage owns the data.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnvis import ConfigError
from cnnvis.config import ModelConfig, opt
from cnnvis.similarity import LayerSimilarity, Redundancy, SimilarityConfig, layer_similarity, redundancy

log = logging.getLogger(__name__)

METRICS = ("redundant_fraction", "fraction_above", "mean_similarity")


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
    search_calibrate: bool = opt(True)  # judge candidates by their change from that reference (see below)
    probe_images: int | None = opt(10, ge=1)  # probe images for re-measuring (first n of the visualize probes)
    deconv_mode: str = opt("all", choices=("all", "max"))  # signal of each projected map (as visualize)
    deconv_rectify: bool = opt(True)  # project relu(A_k), as Zeiler & Fergus
    seeds: int = opt(1, ge=1)  # retrain: seeds per model (Table I mean ± std)

    def check(self, section: str) -> None:
        if self.lower > self.upper:
            raise ConfigError(f"{section}.lower = {self.lower}: must be <= upper ({self.upper})")
        if self.min_width > self.max_width:
            raise ConfigError(f"{section}.min_width = {self.min_width}: must be <= max_width ({self.max_width})")


def metric_value(r: Redundancy, metric: str) -> float:
    """The redundancy number the rule compares with its band."""
    if metric == "redundant_fraction":
        return 1.0 - r.distinct / r.num_kernels if r.num_kernels else 0.0
    if metric == "fraction_above":
        return r.fraction_above
    if metric == "mean_similarity":
        return r.mean_similarity
    raise ValueError(f"metric = {metric!r}; allowed: {', '.join(METRICS)}")


def classify(value: float, cfg: AdjustConfig) -> str:
    """'high' | 'low' | 'in_band' (NaN, e.g. every kernel dead, counts as high)."""
    if math.isnan(value) or value > cfg.upper:
        return "high"
    if value < cfg.lower:
        return "low"
    return "in_band"


def grow_width(width: int, cfg: AdjustConfig) -> int:
    new = round(width * cfg.growth_factor) if cfg.growth == "multiply" else width + cfg.growth_step
    return min(max(new, width + 1), cfg.max_width)


def shrink_width(width: int, r: Redundancy, cfg: AdjustConfig) -> int:
    """Towards the number of distinct groups, within [min_width, width] and ≥ shrink_floor·width."""
    floor = max(cfg.min_width, math.ceil(cfg.shrink_floor * width))
    return min(width, max(r.distinct, floor))


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

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "width": self.width, "phase": self.phase, "redundancy_value": self.value,
                "band": self.band, "proxy_top1": self.proxy_top1, "seconds": round(self.seconds, 2),
                "note": self.note, "summary": self.redundancy}


@dataclass
class AdjustResult:
    widths: tuple[int, ...]
    baseline_widths: tuple[int, ...]
    further_training: bool = False  # rule (1) applied
    extra_epochs: int = 0
    steps: list[Step] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return replace(base, widths=self.widths)


TrainFn = Callable[[tuple[int, ...]], tuple[nn.Module, float]]
MeasureFn = Callable[[nn.Module, int], Redundancy]
FurtherFn = Callable[[], nn.Module]


def adjust_widths(baseline: list[Redundancy], widths: tuple[int, ...], cfg: AdjustConfig, *,
                  train_fn: TrainFn, measure_fn: MeasureFn, undertrained: bool = False,
                  further_fn: FurtherFn | None = None) -> AdjustResult:
    """Apply the rule to every selected conv layer of a model with ``widths``.

    ``baseline``: the redundancy of each conv layer of the trained baseline.
    ``further_fn()``: trains the baseline further (rule 1) and returns it, to be re-measured.
    """
    if len(baseline) != len(widths):
        raise ConfigError(f"similarity has {len(baseline)} conv layers but model.widths has {len(widths)}")
    layers = range(len(widths)) if cfg.layers is None else cfg.layers
    bad = [i for i in layers if i >= len(widths)]
    if bad:
        raise ConfigError(f"adjust.layers = {list(cfg.layers)}: index {bad[0]} out of range (model has {len(widths)} conv layers)")
    res = AdjustResult(widths=tuple(widths), baseline_widths=tuple(widths))
    train_fn = functools.cache(train_fn)  # one layer's last trial is often the next layer's reference: train it once
    current = list(baseline)
    for i, r in enumerate(current):
        v = metric_value(r, cfg.metric)
        res.steps.append(Step(i, widths[i], "baseline", v, classify(v, cfg), redundancy=r.as_dict()))

    high = [i for i in layers if classify(metric_value(current[i], cfg.metric), cfg) == "high"]
    if high and undertrained and cfg.check_undertrained and further_fn is not None:
        # rule (1): redundancy may come from too little training; train on, then re-measure
        t0 = time.perf_counter()
        model = further_fn()
        current = [measure_fn(model, i) for i in range(len(widths))]
        dt = time.perf_counter() - t0
        res.further_training, res.extra_epochs = True, cfg.extra_epochs
        for i, r in enumerate(current):
            v = metric_value(r, cfg.metric)
            res.steps.append(Step(i, widths[i], "further_training", v, classify(v, cfg), seconds=dt,
                                  note=f"+{cfg.extra_epochs} epochs at lr×{cfg.extra_lr_factor}: baseline was still improving",
                                  redundancy=r.as_dict()))

    new_widths = list(widths)
    for i in layers:
        v = metric_value(current[i], cfg.metric)
        band = classify(v, cfg)
        w = new_widths[i]
        if band == "high":
            target = shrink_width(w, current[i], cfg)
            note = f"{current[i].distinct} distinct groups of {w} kernels ({len(current[i].dead_kernels)} dead)"
            res.steps.append(Step(i, target, "shrink", v, band, note=note))
            res.decisions.append({"layer": i, "action": "shrink" if target < w else "keep", "from": w, "to": target,
                                  "reason": f"{cfg.metric} {v:.3f} > upper {cfg.upper}; {note}"})
            new_widths[i] = target
        elif band == "low":
            new_widths[i] = _grow(i, new_widths, v, cfg, train_fn, measure_fn, res)
        else:
            res.steps.append(Step(i, w, "keep", v, band))
            res.decisions.append({"layer": i, "action": "keep", "from": w, "to": w,
                                  "reason": f"{cfg.metric} {v:.3f} within [{cfg.lower}, {cfg.upper}]"})
    res.widths = tuple(new_widths)
    return res


def _grow(i: int, widths: list[int], v0: float, cfg: AdjustConfig, train_fn: TrainFn, measure_fn: MeasureFn,
          res: AdjustResult) -> int:
    """Grow layer ``i`` step by step; return its final width (the others as in ``widths``)."""
    start = widths[i]
    reason = f"{cfg.metric} {v0:.3f} < lower {cfg.lower}"
    offset = 0.0  # brief-recipe redundancy minus the trained model's, at the unchanged width
    if cfg.search_reference:
        t0 = time.perf_counter()
        model, acc = train_fn(tuple(widths))
        r = measure_fn(model, i)
        v = metric_value(r, cfg.metric)
        if cfg.search_calibrate:
            offset = v - v0
        res.steps.append(Step(i, start, "reference", v, classify(v - offset, cfg), acc, time.perf_counter() - t0,
                              f"unchanged width, brief recipe; offset to the trained baseline {v - v0:+.3f}",
                              r.as_dict()))
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
        model, acc = train_fn(tuple(trial))
        r = measure_fn(model, i)
        v = metric_value(r, cfg.metric)
        band = classify(v - offset, cfg)
        note = f"measured {v:.3f}, judged {v - offset:.3f} (offset {offset:+.3f})" if offset else ""
        res.steps.append(Step(i, w, "grow", v, band, acc, time.perf_counter() - t0, note, r.as_dict()))
        log.info("layer %d width %d: %s %.3f (judged %.3f: %s), proxy top-1 %.2f", i, w, cfg.metric, v, v - offset,
                 band, acc)
        if band == "high":
            stop = f"width {w} overshoots upper {cfg.upper}; kept {best}"
            break
        best = w
        if band == "in_band":
            stop = f"width {w} enters the band"
            break
    else:
        if w >= cfg.max_width:
            stop = f"max_width {cfg.max_width} reached"
    res.decisions.append({"layer": i, "action": "grow" if best > start else "keep", "from": start, "to": best,
                          "reason": f"{reason}; {stop}"})
    return best


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
