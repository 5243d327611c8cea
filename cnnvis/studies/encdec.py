"""Study of stage `train-encdec`: paper 4's encoder-decoder trained while its probe maps are recorded
(Figs 3-5), its class maps measured on the test set (section 5, Figs 6-8) and against shifted inputs (the
translation control), and for Table 1 the plain ResNet-18 with the same trunk, stem, data and recipe."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cnnvis import data as D
from cnnvis import encdec as E
from cnnvis import models, training
from cnnvis.config import HardwareConfig, to_dict
from cnnvis.io import Checkpoint
from cnnvis.report import md_table
from cnnvis.studies.training import Epochs, timeless

log = logging.getLogger(__name__)

# Table 1's paper rows as this stage labels them (label, dataset, input, epochs); their numbers are read from
# reports/paper_reference.yaml (table p4_table1, rows by key).
TABLE1_ID = "p4_table1"
TABLE1_PAPER_ROWS = {
    "baseline": ("Baseline (ResNet-18, recipe of github tjmoon0104/pytorch-tiny-imagenet)", "Tiny ImageNet val",
                 "not stated", "not stated"),
    "pretrained": ("Pre-trained ResNet-18 (224×224), reference", "ImageNet val", "224 px", "—"),
    "proposed": ("Proposed encoder-decoder", "Tiny ImageNet val", "64 px", "80"),
}
TABLE1_COLUMNS = ("top1", "top5")


class SnapshotRecorder:
    """Records the probe maps after given optimizer steps (``training.train``'s ``on_step``).

    Maps are taken in eval mode without grad; ``predict_maps`` restores the training mode, so the run is
    unchanged. ``state()`` / ``restore()`` carry the maps recorded so far through a resumed run.
    """

    def __init__(self, model: E.EncDec, probes_u8: torch.Tensor, mean: tuple, std: tuple, steps: dict[int, float]):
        self.model, self.probes, self.mean, self.std = model, probes_u8, mean, std
        self.steps = steps
        self.epochs: list[float] = []
        self.maps: list[torch.Tensor] = []  # each P×C×m×m
        self.seconds = 0.0

    def __call__(self, step: int) -> None:
        if step in self.steps:
            t0 = time.perf_counter()
            maps, _ = E.predict_maps(self.model, self.probes, self.mean, self.std)
            self.epochs.append(self.steps[step])
            self.maps.append(maps)
            self.seconds += time.perf_counter() - t0

    def state(self) -> dict:
        return {"epochs": list(self.epochs), "maps": list(self.maps), "seconds": self.seconds}

    def restore(self, state: dict) -> None:
        self.epochs, self.maps, self.seconds = list(state["epochs"]), list(state["maps"]), float(state["seconds"])


def snapshot_steps(epochs: tuple[float, ...], train_epochs: int, steps_per_epoch: int) -> dict[int, float]:
    """Optimizer step → (fractional) epoch for every snapshot within the run; the last epoch always included."""
    out = {}
    for e in sorted(set(epochs) | {float(train_epochs)}):
        if e > train_epochs:
            log.info("snapshot epoch %g beyond encdec.train.epochs = %d: skipped", e, train_epochs)
            continue
        out[max(1, round(e * steps_per_epoch))] = float(e)
    return out


@dataclass(frozen=True)
class Snapshots:
    """The probe images' class maps at each snapshot epoch."""

    epochs: tuple[float, ...]
    probe_index: torch.Tensor  # P, indices into the test images
    probe_label: torch.Tensor  # P
    maps: torch.Tensor  # T×P×C×m×m
    seconds: float

    @property
    def own(self) -> torch.Tensor:
        """T×P×m×m: each probe's own-class map."""
        return self.maps[:, torch.arange(len(self.probe_label)), self.probe_label]

    def arrays(self, classes: list[str]) -> dict[str, np.ndarray]:
        return {"epochs": np.asarray(self.epochs), "probe_index": self.probe_index.numpy(),
                "probe_label": self.probe_label.numpy(), "own_maps": self.own.numpy(),
                "predicted": self.maps.mean((3, 4)).argmax(2).numpy(), "classes": np.asarray(classes)}


@dataclass(frozen=True)
class PlainResNet:
    """Table 1's plain ResNet-18: its test metrics and run."""

    test: dict
    train_seconds: float
    parameters: int
    history: list[dict]

    def record(self) -> dict:
        return {"test": self.test, "train_seconds": round(self.train_seconds, 2), "parameters": self.parameters,
                "history": self.history}


@dataclass(frozen=True)
class EncDecStudy:
    """The trained encoder-decoder, its maps on the test set and what was measured from them."""

    dataset: str
    config: E.EncDecConfig
    model: E.EncDec
    spec: dict  # in_channels, num_classes, image_size, mean, std, classes
    images: torch.Tensor  # test images, uint8 N×C×H×W
    labels: torch.Tensor  # N
    maps: torch.Tensor  # N×C×m×m class maps
    logits: torch.Tensor  # N×C
    test: dict  # classification metrics
    history: list[dict]
    train_seconds: float
    train_images: int
    threads: int
    snapshots: Snapshots
    settle: dict  # per_probe_epoch, per_class_epoch, per_class_top1, spearman_settle_vs_accuracy
    measured: dict  # intra_class_similarity, confidence_vs_sharpness (E.map_study without per_image)
    per_image: dict[str, torch.Tensor]
    resnet: PlainResNet | None
    translation: E.TranslationControl | None  # do the maps move with shifted inputs?

    @property
    def classes(self) -> list[str]:
        return list(self.spec["classes"])

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.model, self.config.model_config(), self.spec,
                          {"encdec": to_dict(self.config), "dataset": self.dataset, "tag": "encdec",
                           "test_top1": self.test["top1"], "history": timeless(self.history)})

    def metrics(self) -> dict:
        s = self.snapshots
        return {
            "dataset": self.dataset, "model": "encdec", "config": to_dict(self.config),
            "image_size": self.spec["image_size"], "map_side": int(self.maps.shape[-1]),
            "test": self.test, "classes": self.classes,
            "train_images": self.train_images, "test_images": len(self.labels),
            "parameters": models.count_parameters(self.model),
            "train_seconds": round(self.train_seconds, 2), "snapshot_seconds": round(s.seconds, 2),
            "threads": self.threads, "history": self.history,
            "snapshots": {"epochs": list(s.epochs), "probe_index": s.probe_index, "probe_label": s.probe_label},
            "settle": {"threshold": self.config.settle_threshold, **self.settle,
                       "what": "first snapshot epoch from which the probe's own-class map keeps Pearson r >= "
                               "threshold with its final map; a class settles when all its probes have (None: never)"},
            **self.measured,
            "resnet18": self.resnet.record() if self.resnet is not None else None,
            "translation": self.translation.record() if self.translation is not None else None,
        }

    def table1(self, paper: Mapping[str, Mapping[str, float]]) -> str:
        """Table 1 in Markdown: the paper's rows (numbers from ``paper``, by row key) and ours."""
        ours = [(f"encoder-decoder (width ×{self.config.width_multiplier:g})", self.test)]
        if self.resnet is not None:
            ours.append((f"plain ResNet-18 (width ×{self.config.width_multiplier:g})", self.resnet.test))
        rows = [("paper 4", label, f"{paper[key]['top1']:.2f}", f"{paper[key]['top5']:.2f}", dataset, size, epochs)
                for key, (label, dataset, size, epochs) in TABLE1_PAPER_ROWS.items()]
        rows += [("ours", model, f"{t['top1']:.2f}", f"{t['top5']:.2f}", f"{self.dataset} test (n={t['n']})",
                  f"{self.spec['image_size']} px", self.config.train.epochs) for model, t in ours]
        return "\n".join([
            f"# Table 1 — encoder-decoder vs plain ResNet-18 ({self.dataset})", "",
            md_table(("source", "model", "top-1 %", "top-5 %", "dataset", "input", "epochs"), rows, align="llrrlll"), "",
            "Paper numbers: Tiny ImageNet, 80 epochs, full-width pretrained ResNet-18 on a K80. Ours: this run's "
            "dataset, recipe (`encdec.train`) and trunk width (`encdec.width_multiplier`); both of our models share "
            "trunk, stem, data and recipe. Top-5 of a 10-class problem is near 100 % by construction.", ""])


def _progress(epochs: Epochs) -> dict[str, Any]:
    return {"progress": epochs.progress} if epochs.progress is not None else {}


def _train_encdec(model: E.EncDec, td: D.TensorData, recorder: SnapshotRecorder, cfg: E.EncDecConfig,
                  hw: HardwareConfig, epochs: Epochs) -> training.TrainResult:
    """``training.train`` with the snapshot recorder; the recorded maps ride along in every resume state."""
    if epochs.resume is not None:
        recorder.restore(epochs.resume["snapshots"])

    def on_epoch_end(state: dict) -> None:
        if epochs.on_epoch_end is not None:
            epochs.on_epoch_end({**state, "snapshots": recorder.state()})

    return training.train(model, td, cfg.train, hw, resume=epochs.resume, on_epoch_end=on_epoch_end,
                          on_step=recorder, **_progress(epochs))


def settle_study(snapshots: Snapshots, num_classes: int, per_class_top1: list[float | None],
                 threshold: float) -> dict:
    """When each probe's own-class map settles (final = the map after the last epoch), per probe and class."""
    own = snapshots.own
    settle = E.settle_epochs(own, snapshots.epochs, own[-1], threshold)
    per_class: list[float | None] = []
    for c in range(num_classes):
        values = [s for s, y in zip(settle, snapshots.probe_label.tolist(), strict=True) if y == c]
        # a class has settled once all its probes have; None = some probe never did
        per_class.append(None if not values or None in values else max(values))
    pairs = [(s, a) for s, a in zip(per_class, per_class_top1, strict=True) if s is not None and a is not None]
    return {"per_probe_epoch": settle, "per_class_epoch": per_class, "per_class_top1": per_class_top1,
            "spearman_settle_vs_accuracy": E.spearman([s for s, _ in pairs], [a for _, a in pairs])}


def encdec_study(raw: D.RawDataset, cfg: E.EncDecConfig, hw: HardwareConfig, *,
                 epochs: tuple[Epochs | None, Epochs | None] = (None, None)) -> EncDecStudy:
    """Train the encoder-decoder on ``raw`` with ``cfg`` (recording the probe maps at ``cfg.snapshot_epochs``),
    measure its maps on the test split, and (``cfg.compare_resnet``) train the plain ResNet-18 of Table 1.

    ``epochs``: the resume state and per-epoch callback of the encoder-decoder's and of the ResNet's training.
    """
    enc_epochs, res_epochs = (e or Epochs() for e in epochs)
    tcfg = cfg.train
    td = D.prepare(raw, val_size=tcfg.val_size, max_train=tcfg.max_train_images, max_test=tcfg.max_test_images,
                   seed=tcfg.seed)
    spec = td.spec
    num_classes = len(td.classes)
    probe_idx = E.choose_probes(td.test_y, num_classes, cfg.probes_per_class, cfg.seed)
    probe_y = td.test_y[probe_idx]

    training.seed_everything(tcfg.seed)
    model = models.build_model(cfg.model_config(), in_channels=spec["in_channels"], num_classes=num_classes,
                               image_size=spec["image_size"])
    steps_per_epoch = math.ceil(len(td.train_y) / tcfg.batch_size)
    recorder = SnapshotRecorder(model, td.test_x[probe_idx], td.mean, td.std,
                                snapshot_steps(cfg.snapshot_epochs, tcfg.epochs, steps_per_epoch))
    result = _train_encdec(model, td, recorder, cfg, hw, enc_epochs)
    model.cpu()
    maps, logits = E.predict_maps(model, td.test_x, td.mean, td.std, batch_size=tcfg.eval_batch_size)
    test = training.classification_metrics(logits, td.test_y, num_classes)
    log.info("encdec: test top-1 %.2f %%, top-5 %.2f %%, %.0f s training (+%.0f s snapshots)",
             test["top1"], test["top5"], result.train_seconds, recorder.seconds)

    snapshots = Snapshots(tuple(recorder.epochs), probe_idx, probe_y, torch.stack(recorder.maps), recorder.seconds)
    settle = settle_study(snapshots, num_classes, test["per_class_top1"], cfg.settle_threshold)
    measured = E.map_study(maps, logits, td.test_y)
    per_image = measured.pop("per_image")
    translation = None
    if cfg.translation_shifts:
        n, k = len(td.test_y), cfg.translation_images
        index = (torch.arange(n) if k is None or k >= n else
                 torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 2))[:k].sort().values)
        translation = E.translation_control(model, td.test_x, td.test_y, index, td.mean, td.std,
                                            cfg.translation_shifts, batch_size=tcfg.eval_batch_size)
        for row in translation.record()["rows"]:
            log.info("translation %d px: follow r %.3f, stay r %.3f (follow wins on %.0f %% of images)",
                     row["shift_px"], row["follow_r"], row["stay_r"], 100 * row["follow_wins"])

    resnet = None
    if cfg.compare_resnet:  # same trunk, stem, data, recipe
        training.seed_everything(tcfg.seed)
        plain = E.build_resnet_like(cfg, spec["in_channels"], num_classes, spec["image_size"])
        r_result = training.train(plain, td, tcfg, hw, resume=res_epochs.resume, on_epoch_end=res_epochs.on_epoch_end,
                                  **_progress(res_epochs))
        plain.cpu()
        r_test = training.classification_metrics(
            training.predict_logits(plain, td.test_x, td.mean, td.std, batch_size=tcfg.eval_batch_size),
            td.test_y, num_classes)
        resnet = PlainResNet(r_test, r_result.train_seconds, models.count_parameters(plain), r_result.history)
        log.info("plain resnet18: test top-1 %.2f %%, %.0f s training", r_test["top1"], r_result.train_seconds)

    return EncDecStudy(raw.name, cfg, model, spec, td.test_x, td.test_y, maps, logits, test, result.history,
                       result.train_seconds, len(td.train_y), torch.get_num_threads(), snapshots, settle, measured,
                       per_image, resnet, translation)
