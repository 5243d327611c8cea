"""Study of stage `adjust-architecture`: paper 1's width rule (``cnnvis.adjust``) on the trained baseline.

Growth candidates are trained briefly (``adjust.search_epochs`` on the first
``adjust.search_train_images`` training images, the baseline's recipe and
seed otherwise) and re-measured on the first ``adjust.probe_images`` probe
images of the visualize stage; their proxy accuracy is the top-1 on the first
``adjust.search_val_images`` images of the baseline's validation split.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import yaml
from torch import nn

from cnnvis import DataError, models, training
from cnnvis import adjust as A
from cnnvis import data as D
from cnnvis.config import HardwareConfig, ModelConfig, TrainConfig, parse, to_dict
from cnnvis.io import load_npz_arrays
from cnnvis.similarity import Redundancy, SimilarityConfig

log = logging.getLogger(__name__)

ADJUSTED_HEADER = "# written by stages.adjust_architecture (paper 1 §IV rule); read by stages.retrain\n"


@dataclass(frozen=True)
class Probes:
    """The visualize stage's probe images: indices into the test split and their classes."""

    indices: np.ndarray  # [N_probe] int64
    labels: np.ndarray  # [N_probe] int64

    @classmethod
    def from_arrays(cls, z: dict[str, np.ndarray]) -> Probes:
        if "probe_indices" not in z or "probe_labels" not in z:
            raise DataError("reconstructions: no probe_indices/probe_labels; rerun the visualize stage")
        return cls(np.asarray(z["probe_indices"]), np.asarray(z["probe_labels"]))


def load_probes(path: str | os.PathLike) -> Probes:
    """The probe images of the visualize stage's reconstructions.npz (the loader of both stages' ``--recon``)."""
    return Probes.from_arrays(load_npz_arrays(path))


def probe_images(raw: D.RawDataset, probes: Probes, n: int | None, spec: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The first ``n`` probe images (all if None), normalized with the model's ``spec``: [n, C, H, W], labels [n]."""
    idx, labels = probes.indices[:n], probes.labels[:n]
    if len(idx) and int(idx.max()) >= len(raw.test.labels):
        raise DataError(f"reconstructions: probe index {int(idx.max())} outside the test split of {raw.name}; "
                        "rerun the visualize stage")
    x = D.normalize(D.to_tensor(raw.test.images[idx]), tuple(spec["mean"]), tuple(spec["std"]))
    return x, labels


def search_data(raw: D.RawDataset, train_cfg: TrainConfig, cfg: A.AdjustConfig) -> D.TensorData:
    """The subset of the brief trainings, with the baseline's validation split (first search_val_images)."""
    td = D.prepare(raw, val_size=train_cfg.val_size, max_train=cfg.search_train_images, max_test=1,
                   seed=train_cfg.seed)
    return dataclasses.replace(td, val_x=td.val_x[: cfg.search_val_images], val_y=td.val_y[: cfg.search_val_images])


@dataclass(frozen=True)
class AdjustStudy:
    result: A.AdjustResult
    model: ModelConfig  # the baseline's architecture
    train: TrainConfig  # the baseline's recipe
    undertrained: bool
    parameters: dict  # baseline / adjusted parameter counts
    baseline_val_history: list
    seconds: float  # the search alone
    config: A.AdjustConfig
    similarity: SimilarityConfig

    @property
    def train_overrides(self) -> dict:
        """What the retrain recipe changes: the extra epochs of rule (1), if it fired."""
        return {"epochs": self.train.epochs + self.result.extra_epochs} if self.result.further_training else {}

    def adjusted(self, dataset: str) -> dict:
        """adjusted.yaml: the new architecture and the recipe change, for the retrain stage."""
        r, cfg = self.result, self.config
        return {"dataset": dataset, "model": to_dict(r.model_config(self.model)), "train_overrides": self.train_overrides,
                "baseline_widths": list(r.baseline_widths), "widths": list(r.widths),
                "metric": cfg.metric, "band": [cfg.lower, cfg.upper], "decisions": r.decisions}

    def adjusted_text(self, dataset: str) -> str:
        return ADJUSTED_HEADER + yaml.safe_dump(self.adjusted(dataset), sort_keys=False)

    def log(self, dataset: str) -> dict:
        """adjust.json: every step's width, redundancy and proxy accuracy, and the decisions."""
        r = self.result
        return {
            "dataset": dataset, "config": to_dict(self.config), "similarity_config": to_dict(self.similarity),
            "baseline_widths": list(r.baseline_widths), "widths": list(r.widths),
            "parameters": self.parameters, "undertrained": self.undertrained,
            "baseline_val_history": self.baseline_val_history,
            "further_training": r.further_training, "train_overrides": self.train_overrides,
            "decisions": r.decisions, "steps": [s.as_dict() for s in r.steps],
            "search_seconds": round(self.seconds, 2),
        }


def adjust_study(raw: D.RawDataset, baseline: nn.Module, state: dict, baseline_metrics: dict,
                 similarity: list[Redundancy], probes: Probes, sim_cfg: SimilarityConfig, cfg: A.AdjustConfig,
                 hw: HardwareConfig) -> AdjustStudy:
    """The rule on every conv layer of the trained ``baseline`` (with its checkpoint ``state``), starting from the
    similarity stage's ``similarity`` (one Redundancy per conv layer)."""
    model_cfg = parse(ModelConfig, {**state["model"], "pretrained": False}, "checkpoint.model")
    train_cfg = parse(TrainConfig, state.get("train", {}), "checkpoint.train")
    spec = state["spec"]
    if model_cfg.name != "p1_cnn":
        raise DataError(f"adjust-architecture: model {model_cfg.name!r} has no per-layer widths; use model=p1_cnn")
    history = state.get("history") or baseline_metrics.get("history") or []
    undertrained = bool(baseline_metrics.get("val_still_rising", training.still_improving(history)))

    td = search_data(raw, train_cfg, cfg)
    x_probe, _ = probe_images(raw, probes, cfg.probe_images, spec)
    brief = dataclasses.replace(train_cfg, epochs=cfg.search_epochs)

    def proxy_top1(model: nn.Module) -> float:
        logits = training.predict_logits(model, td.val_x, td.mean, td.std, batch_size=train_cfg.eval_batch_size)
        return training.classification_metrics(logits, td.val_y, len(td.classes))["top1"]

    def train_fn(widths: tuple[int, ...]) -> tuple[nn.Module, float]:
        training.seed_everything(train_cfg.seed)
        m = models.build_model(dataclasses.replace(model_cfg, widths=widths), in_channels=spec["in_channels"],
                               num_classes=spec["num_classes"], image_size=spec["image_size"])
        training.train(m, td, brief, hw)
        m.cpu()
        return m, proxy_top1(m)

    def measure_fn(model: nn.Module, i: int) -> Redundancy:
        return A.measure(model, i, x_probe, sim_cfg, mode=cfg.deconv_mode, rectify=cfg.deconv_rectify)[1]

    def further_fn() -> nn.Module:
        m = copy.deepcopy(baseline)
        extra = dataclasses.replace(train_cfg, epochs=cfg.extra_epochs, lr=train_cfg.lr * cfg.extra_lr_factor)
        training.train(m, td, extra, hw, epoch_offset=train_cfg.epochs)
        m.cpu()
        return m

    t0 = time.perf_counter()
    result = A.adjust_widths(list(similarity), model_cfg.widths, cfg, train_fn=train_fn, measure_fn=measure_fn,
                             undertrained=undertrained, further_fn=further_fn)
    seconds = time.perf_counter() - t0
    for d in result.decisions:
        log.info("layer %d: %s %d → %d (%s)", d["layer"], d["action"], d["from"], d["to"], d["reason"])
    parameters = {"baseline": models.count_parameters_of(model_cfg, spec),
                  "adjusted": models.count_parameters_of(result.model_config(model_cfg), spec)}
    return AdjustStudy(result, model_cfg, train_cfg, undertrained, parameters,
                       [h.get("val_top1") for h in history], seconds, cfg, sim_cfg)
