"""Study of stage `train-baseline` (and of every stage that trains a classifier): train, then evaluate on test."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnvis import data as D
from cnnvis import models, training
from cnnvis.config import HardwareConfig, ModelConfig, TrainConfig, to_dict
from cnnvis.io import Checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    """A trained model with what rebuilds it and its test metrics."""

    model: nn.Module
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    spec: dict  # in_channels, num_classes, image_size, mean, std, classes
    metrics: dict  # test metrics, recipe, history, throughput
    tag: str

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.model, self.model_cfg, self.spec,
                          {"train": to_dict(self.train_cfg), "dataset": self.metrics["dataset"], "tag": self.tag,
                           "test_top1": self.metrics["test"]["top1"], "history": timeless(self.metrics["history"])})

    def run_record(self) -> dict:
        """The per-seed row other stages keep of this run."""
        m = self.metrics
        return {"seed": m["seed"], "test_top1": m["test"]["top1"], "test": m["test"], "parameters": m["parameters"],
                "epochs": m["epochs"], "train_seconds": m["train_seconds"], "final_val_top1": m["final_val_top1"]}


TIMING_KEYS = ("seconds", "images_per_s")


def timeless(history: list[dict]) -> list[dict]:
    """Per-epoch rows without wall times: what a checkpoint keeps, so equal training gives equal files. Rebuilt
    through JSON so equal rows pickle to equal bytes (a resumed run's rows would otherwise carry other string
    objects than a straight run's, which pickle differently)."""
    return json.loads(json.dumps([{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]))


@dataclass
class Epochs:
    """What a caller hands ``fit`` to resume and observe training: a saved state and a per-epoch callback."""

    resume: dict | None = None
    on_epoch_end: Callable[[dict], None] | None = None
    progress: training.Progress | None = None
    summary: dict = field(default_factory=dict)  # the run's headline numbers, for a logger that wants them


def fit(raw: D.RawDataset, model_cfg: ModelConfig, train_cfg: TrainConfig, hw: HardwareConfig, *, tag: str,
        epochs: Epochs | None = None) -> Trained:
    """Build ``model_cfg`` for ``raw``, train it with ``train_cfg``, evaluate it on the test split."""
    epochs = epochs or Epochs()
    td = D.prepare(raw, val_size=train_cfg.val_size, max_train=train_cfg.max_train_images,
                   max_test=train_cfg.max_test_images, seed=train_cfg.seed)
    spec = td.spec
    training.seed_everything(train_cfg.seed)
    model = models.build_model(model_cfg, in_channels=spec["in_channels"], num_classes=spec["num_classes"],
                               image_size=spec["image_size"])
    kw: dict[str, Any] = {"progress": epochs.progress} if epochs.progress is not None else {}
    result = training.train(model, td, train_cfg, hw, resume=epochs.resume, on_epoch_end=epochs.on_epoch_end, **kw)
    model.cpu()
    logits = training.predict_logits(model, td.test_x, td.mean, td.std, batch_size=train_cfg.eval_batch_size)
    test = training.classification_metrics(logits, td.test_y, len(td.classes))
    metrics = {
        "dataset": raw.name, "model": model_cfg.name, "tag": tag,
        "test": test, "classes": list(td.classes),
        "epochs": train_cfg.epochs, "seed": train_cfg.seed,
        "train_images": len(td.train_y), "test_images": len(td.test_y),
        "parameters": models.count_parameters(model),
        "train_seconds": round(result.train_seconds, 2), "images_per_s": round(result.images_per_s, 1),
        "threads": torch.get_num_threads(),
        "final_val_top1": result.history[-1].get("val_top1") if result.history else None,
        "val_still_rising": training.still_improving(result.history),
        "history": result.history,
    }
    log.info("%s %s: test top-1 %.2f %%, %.0f s training", raw.name, tag, test["top1"], result.train_seconds)
    return Trained(model, model_cfg, train_cfg, spec, metrics, tag)
