"""Study of stage `visualize`, papers 2–3: feature synthesis (activation maximization, inversion) and the views of
one layer's activations for one image (grid, kernels, 3D volume, k-means and PCA orderings)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cnnvis import activations as Act
from cnnvis import data as D
from cnnvis import synthesis as S
from cnnvis.config import to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Maximized:
    """Activation maximization (paper 2 eq. (2)–(3)): one image per target unit (a class logit or a channel)."""

    layer: str  # "logits" or the conv layer whose channels are maximized
    targets: tuple[int, ...]
    images: Tensor  # [N, C, H, W] in [0, 1]
    initial: Tensor  # [N] objective at the start
    final: Tensor  # [N] objective at the end


@dataclass(frozen=True)
class Inverted:
    """Feature inversion (paper 2 eq. (4)) of the originals from one layer's features."""

    layer: str
    images: Tensor  # [N, C, H, W] in [0, 1]
    rel_error: Tensor  # [N] ‖φ(x) − φ(x0)‖ / ‖φ(x0)‖ at the end
    rel_error_start: Tensor  # [N] before the first step


@dataclass(frozen=True)
class ActivationViews:
    """One layer's filter outputs for one test image and their reorderings (paper 3 §3.1, paper 2 Fig 2)."""

    layer: str
    image_index: int  # into the test split
    label: str
    image: np.ndarray  # [C, H, W] in [0, 1]
    maps: np.ndarray  # [K, h, w]
    kernels: np.ndarray | None  # [K, C_in, kh, kw]; None when the layer is not a Conv2d
    volume: np.ndarray  # [K, h, w] float32, z = filter index
    map_order: np.ndarray  # [K] filters by first-PCA score of their whole map
    slice_rows: np.ndarray  # [K, h] the vertical slice at ``column``
    column: int
    orderings: tuple[Act.KMeansOrdering, ...]  # one per k of kmeans_clusters that fits K
    slice_order: np.ndarray  # [K] slice rows by first-PCA score

    def metrics(self) -> dict:
        return {"layer": self.layer, "image_index": self.image_index, "label": self.label, "slice_column": self.column,
                "dead_filters": int((np.abs(self.maps).reshape(len(self.maps), -1).max(1) == 0).sum()),
                "kmeans_clusters_found": {str(o.k): int(len(np.unique(o.labels))) for o in self.orderings},
                "pca_map_order": self.map_order.tolist(), "pca_slice_order": self.slice_order.tolist()}


@dataclass(frozen=True)
class SynthesisStudy:
    config: S.SynthesisConfig
    activations_config: Act.ActivationsConfig
    classes: tuple[str, ...]
    actmax_classes: Maximized
    actmax_channels: Maximized
    originals: Tensor  # [N, C, H, W] in [0, 1], the inverted test images
    original_labels: tuple[str, ...]
    inversions: tuple[Inverted, ...]  # one per inversion layer
    activations: ActivationViews
    timings: dict[str, float]  # seconds

    def metrics(self) -> dict:
        cls, ch = self.actmax_classes, self.actmax_channels
        return {
            "synthesis_config": to_dict(self.config), "activations_config": to_dict(self.activations_config),
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "actmax_classes": {"initial_logit_mean": float(cls.initial.mean()), "final_logit_mean": float(cls.final.mean()),
                               "final_logit": {c: float(v) for c, v in zip(self.classes, cls.final, strict=True)}},
            "actmax_channels": {"layer": ch.layer, "channels": len(ch.targets),
                                "increased_fraction": float((ch.final > ch.initial).float().mean()),
                                "final_mean": float(ch.final.mean())},
            "inversion": {inv.layer: {"rel_error_mean": float(inv.rel_error.mean()),
                                      "rel_error_start_mean": float(inv.rel_error_start.mean())}
                          for inv in self.inversions},
            "activations": self.activations.metrics(),
        }


def synthesis_study(model: nn.Module, spec: dict, images_u8: Tensor, labels: Tensor, cfg: S.SynthesisConfig,
                    acfg: Act.ActivationsConfig) -> SynthesisStudy:
    """Papers 2–3 for a trained ``model`` on uint8 test images [N, C, H, W] with their labels [N]; ``spec`` gives
    the normalization (mean, std) and the class names."""
    mean, std, classes = spec["mean"], spec["std"], tuple(spec["classes"])
    shape = tuple(images_u8.shape[1:])
    timings: dict[str, float] = {}

    # activation maximization per class and per channel (paper 2 eq. (2)–(3))
    t0 = time.perf_counter()
    res = S.maximize(model, torch.arange(len(classes)), cfg, image_shape=shape, mean=mean, std=std)
    by_class = Maximized(S.LOGITS, tuple(range(len(classes))), D.denormalize(res.images, mean, std), res.initial,
                         res.final)
    layer_name, layer_mod = Act.resolve_layer(model, cfg.channel_layer)
    n_ch = min(cfg.max_channels, layer_mod.out_channels)
    resc = S.maximize(model, torch.arange(n_ch), cfg, image_shape=shape, mean=mean, std=std, layer=layer_name)
    by_channel = Maximized(layer_name, tuple(range(n_ch)), D.denormalize(resc.images, mean, std), resc.initial,
                           resc.final)
    timings["actmax_s"] = time.perf_counter() - t0

    # feature inversion (paper 2 eq. (4)): the first test image of each class, as many as configured
    t0 = time.perf_counter()
    idx = [int(torch.nonzero(labels == c)[0]) for c in range(len(classes)) if bool((labels == c).any())]
    idx = idx[: cfg.inversion_images]
    x0 = D.normalize(images_u8[idx], mean, std)
    inversions = []
    for layer in cfg.inversion_layers:
        inv = S.invert(model, x0, layer, cfg, mean=mean, std=std)
        inversions.append(Inverted(inv.layer, D.denormalize(inv.images, mean, std), inv.rel_error, inv.history[0]))
    timings["inversion_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    views = activation_views(model, spec, images_u8, labels, acfg)
    timings["activations_s"] = time.perf_counter() - t0
    return SynthesisStudy(cfg, acfg, classes, by_class, by_channel, D.denormalize(x0, mean, std),
                          tuple(classes[int(labels[i])] for i in idx), tuple(inversions), views, timings)


def activation_views(model: nn.Module, spec: dict, images_u8: Tensor, labels: Tensor,
                     acfg: Act.ActivationsConfig) -> ActivationViews:
    """The filter outputs of ``acfg.layer`` for test image ``acfg.image_index`` (the last one if beyond)."""
    mean, std = spec["mean"], spec["std"]
    i = min(acfg.image_index, len(images_u8) - 1)
    x = D.normalize(images_u8[i : i + 1], mean, std)
    lname, module = Act.resolve_layer(model, acfg.layer)
    maps = Act.layer_outputs(model, x, lname, rectify=acfg.rectify)[0].numpy()
    kernels = None
    if isinstance(module, nn.Conv2d):
        kernels = Act.layer_kernels(model, lname).numpy()
    else:  # a non-conv layer has no kernels; the other views still come
        log.warning("kernels figure skipped: activations.layer = %s is a %s, not a Conv2d", lname, type(module).__name__)
    vol = Act.volume(torch.from_numpy(maps))
    map_order = Act.pca_order(vol.reshape(len(vol), -1))
    rows, column = Act.vertical_slice(vol, acfg.slice_column)
    ks = [k for k in acfg.kmeans_clusters if k <= len(rows)]
    orderings = tuple(Act.kmeans_order(rows, k, seed=acfg.seed, n_init=acfg.kmeans_n_init) for k in ks)
    return ActivationViews(lname, i, spec["classes"][int(labels[i])], D.denormalize(x, mean, std)[0].numpy(), maps,
                           kernels, vol, map_order, rows, column, orderings, Act.pca_order(rows))
