"""Study of stage `adjust-architecture`: paper 1's width rule (``cnnvis.adjust``) on the trained baseline.

Growth candidates are trained briefly (``adjust.search_epochs`` on the first
``adjust.search_train_images`` training images, the baseline's recipe and
seed otherwise); their proxy accuracy is the top-1 on the first
``adjust.search_val_images`` images of the baseline's validation split. The
baseline, the reference and every candidate are measured on the same probe
images: the visualize stage's, then further test images class by class, as
many as ``adjust.probe_images`` and the ablation's largest count; each setting
judges on its own first ``probe_images`` of them. The ablation re-runs the rule
on those trainings and measurements with one setting changed per row.
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
from cnnvis.report import md_table
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


def probe_indices(test_labels: np.ndarray, probes: Probes, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Test indices and classes of ``n`` probe images (None: the visualize stage's): its probes first, then
    further test images class by class (class 0, 1, …, each in split order), as the visualize stage picks them."""
    idx = [int(i) for i in (probes.indices if n is None else probes.indices[:n])]
    if n is not None and n > len(idx):
        used = set(idx)
        per_class = [np.flatnonzero(test_labels == c) for c in np.unique(test_labels)]
        for depth in range(max(map(len, per_class), default=0)):
            for members in per_class:
                if len(idx) < n and depth < len(members) and int(members[depth]) not in used:
                    idx.append(int(members[depth]))
                    used.add(idx[-1])
    idx_arr = np.asarray(idx, dtype=np.int64)
    if len(idx_arr) and int(idx_arr.max()) >= len(test_labels):
        raise DataError(f"reconstructions: probe index {int(idx_arr.max())} outside the test split; "
                        "rerun the visualize stage")
    return idx_arr, np.asarray(test_labels)[idx_arr]


def probe_images(raw: D.RawDataset, probes: Probes, n: int | None, spec: dict) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` probe images (``probe_indices``), normalized with the model's ``spec``: [n, C, H, W], labels [n]."""
    idx, labels = probe_indices(raw.test.labels, probes, n)
    x = D.normalize(D.to_tensor(raw.test.images[idx]), tuple(spec["mean"]), tuple(spec["std"]))
    return x, labels


def search_data(raw: D.RawDataset, train_cfg: TrainConfig, cfg: A.AdjustConfig) -> D.TensorData:
    """The subset of the brief trainings, with the baseline's validation split (first search_val_images)."""
    td = D.prepare(raw, val_size=train_cfg.val_size, max_train=cfg.search_train_images, max_test=1,
                   seed=train_cfg.seed)
    return dataclasses.replace(td, val_x=td.val_x[: cfg.search_val_images], val_y=td.val_y[: cfg.search_val_images])


def measured_images(cfg: A.AdjustConfig, visualize_probes: int) -> int:
    """How many probe images every layer is measured on: the rule's and every ablation row's."""
    return max(cfg.probe_images or visualize_probes, visualize_probes, *cfg.ablation_probe_images)


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
    probe: dict  # the test indices and classes measured on; how many are the visualize stage's
    similarity_stage: list  # the similarity stage's value of each layer (its probe images), for comparison
    ablation: tuple[A.AblationRow, ...]

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
        """adjust.json: every step's width, redundancy and proxy accuracy, the decisions and the ablation."""
        r = self.result
        return {
            "dataset": dataset, "config": to_dict(self.config), "similarity_config": to_dict(self.similarity),
            "baseline_widths": list(r.baseline_widths), "widths": list(r.widths),
            "parameters": self.parameters, "undertrained": self.undertrained,
            "baseline_val_history": self.baseline_val_history,
            "further_training": r.further_training, "train_overrides": self.train_overrides,
            "probe": self.probe, "similarity_stage": self.similarity_stage,
            "decisions": r.decisions, "steps": [s.as_dict() for s in r.steps],
            "ablation": [row.as_dict() for row in self.ablation],
            "search_seconds": round(self.seconds, 2),
        }

    def ablation_markdown(self, dataset: str) -> str:
        """The ablation table: the rule re-judged with one setting changed per row."""
        return ablation_markdown(self.ablation, dataset, self.config, self.probe)


def ablation_markdown(rows: tuple[A.AblationRow, ...], dataset: str, cfg: A.AdjustConfig, probe: dict) -> str:
    def decisions(row: A.AblationRow) -> str:
        if row.missing:
            return f"not judged: needs {row.missing}"
        return "; ".join(f"conv{d['layer'] + 1} {d['action']} {d['from']}→{d['to']} ({_judged(d)})"
                         for d in row.decisions)

    body = []
    for row in rows:
        c = row.config
        body.append((row.setting, f"[{c.lower:g}, {c.upper:g}]", c.max_width,
                     c.calibration if c.search_calibrate else "off", f"{c.margin_se:g}",
                     c.probe_images if c.probe_images is not None else probe["visualize_probes"],
                     "—" if row.widths is None else list(row.widths), decisions(row),
                     f"{row.reused}" + (f" + {len(row.added)} added" if row.added else "")))
    return "\n".join([
        f"# Width rule ablation — {dataset}", "",
        "The adjust-architecture stage's search re-judged with one setting changed per row (cnnvis.adjust.ablation): "
        "each row re-runs the rule on the brief trainings and probe-image measurements of the default search; a "
        f"width it did not train is trained once for the ablation (at most {cfg.ablation_trainings} in all) and "
        "counted as added. Each decision shows the judged value and its range, value ± margin × its sd over "
        f"{cfg.bootstrap} resamples of the probe images (low / high only when the whole range leaves the band). "
        "*Previous rule*: offset calibration, no margin, the visualize stage's probes.", "",
        md_table(("setting", "band", "cap", "calibration", "margin (sd)", "probe images", "widths", "decisions",
                  "trainings re-used"), body), ""])


def _judged(d: dict) -> str:
    j = d.get("judged")
    if not j:
        return ""
    v, lo, hi = j["value"], j["lo"], j["hi"]
    return f"{v:.3f}" if lo == hi else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def adjust_study(raw: D.RawDataset, baseline: nn.Module, state: dict, baseline_metrics: dict,
                 similarity: list[Redundancy] | None, probes: Probes, sim_cfg: SimilarityConfig,
                 cfg: A.AdjustConfig, hw: HardwareConfig) -> AdjustStudy:
    """The rule on every conv layer of the trained ``baseline`` (with its checkpoint ``state``), measured on the
    probe images; ``similarity`` (the similarity stage's Redundancy per conv layer of the same baseline), when
    given, is reported beside it."""
    model_cfg = parse(ModelConfig, {**state["model"], "pretrained": False}, "checkpoint.model")
    train_cfg = parse(TrainConfig, state.get("train", {}), "checkpoint.train")
    spec = state["spec"]
    if model_cfg.name != "p1_cnn":
        raise DataError(f"adjust-architecture: model {model_cfg.name!r} has no per-layer widths; use model=p1_cnn")
    history = state.get("history") or baseline_metrics.get("history") or []
    undertrained = bool(baseline_metrics.get("val_still_rising", training.still_improving(history)))

    td = search_data(raw, train_cfg, cfg)
    visualize_probes = len(probes.indices)
    x_probe, labels = probe_images(raw, probes, measured_images(cfg, visualize_probes), spec)
    idx, _ = probe_indices(raw.test.labels, probes, len(x_probe))
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

    def measure_fn(model: nn.Module, i: int) -> A.Measurement:
        return A.measurement(model, i, x_probe, sim_cfg, mode=cfg.deconv_mode, rectify=cfg.deconv_rectify)

    def further_fn() -> nn.Module:
        m = copy.deepcopy(baseline)
        extra = dataclasses.replace(train_cfg, epochs=cfg.extra_epochs, lr=train_cfg.lr * cfg.extra_lr_factor)
        training.train(m, td, extra, hw, epoch_offset=train_cfg.epochs)
        m.cpu()
        return m

    if similarity is not None and len(similarity) != len(model_cfg.widths):
        raise DataError(f"similarity: {len(similarity)} conv layers, the baseline has {len(model_cfg.widths)}; "
                        "rerun the similarity stage")
    t0 = time.perf_counter()
    measured = [measure_fn(baseline, i) for i in range(len(model_cfg.widths))]
    result = A.adjust_widths(measured, model_cfg.widths, cfg, train_fn=train_fn, measure_fn=measure_fn,
                             undertrained=undertrained, further_fn=further_fn)
    seconds = time.perf_counter() - t0
    for d in result.decisions:
        log.info("layer %d: %s %d → %d (%s)", d["layer"], d["action"], d["from"], d["to"], d["reason"])
    rows = A.ablation(result.record, model_cfg.widths, A.ablation_settings(cfg, visualize_probes),
                      undertrained=undertrained, measure_fn=measure_fn, train_fn=train_fn, further_fn=further_fn,
                      budget=cfg.ablation_trainings)
    for row in rows:
        log.info("ablation %s: %s", row.setting, row.missing and f"needs {row.missing}" or list(row.widths))
    parameters = {"baseline": models.count_parameters_of(model_cfg, spec),
                  "adjusted": models.count_parameters_of(result.model_config(model_cfg), spec)}
    probe = {"indices": idx.tolist(), "labels": labels.tolist(), "visualize_probes": visualize_probes,
             "judged": cfg.probe_images or visualize_probes}
    stage_values = [{"layer": i, "value": A.metric_value(r, cfg.metric), "distinct": r.distinct,
                     "dead": len(r.dead_kernels), "ours_on_its_probes": A.metric_value(
                         m.first(min(visualize_probes, m.images)).redundancy, cfg.metric)}
                    for i, (r, m) in enumerate(zip(similarity, measured, strict=True))] if similarity is not None else []
    return AdjustStudy(result, model_cfg, train_cfg, undertrained, parameters,
                       [h.get("val_top1") for h in history], seconds, cfg, sim_cfg, probe, stage_values, tuple(rows))
