"""Stage `adjust-architecture`: paper 1's rule turns each conv layer's redundancy into a new width.

    python -m stages.adjust_architecture --dataset fashion_mnist --data data/raw/fashion_mnist \
        --baseline data/models/fashion_mnist/baseline.pt \
        --baseline-metrics reports/metrics/fashion_mnist/baseline.json \
        --similarity reports/metrics/fashion_mnist/similarity.json \
        --recon data/visualize/fashion_mnist/reconstructions.npz \
        --out data/models/fashion_mnist/adjusted.yaml --log reports/metrics/fashion_mnist/adjust.json

Growth candidates are trained briefly (``adjust.search_epochs`` on
``adjust.search_train_images``) and re-measured on the first
``adjust.probe_images`` probe images of the visualize stage. The decision log
holds every step's width, redundancy and proxy validation accuracy.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from cnnvis import DataError, models, training
from cnnvis import adjust as A
from cnnvis import data as D
from cnnvis.config import HardwareConfig, ModelConfig, TrainConfig, parse, to_dict
from cnnvis.io import load_json, save_json, save_text
from cnnvis.models import load_checkpoint
from cnnvis.similarity import SimilarityConfig, redundancy_from_dict
from stages._common import Params, add_common_args, stage_main

PARAMS = ("similarity", "adjust")
INPUTS = ("--data", "--baseline", "--baseline-metrics", "--similarity", "--recon")
OUTPUTS = ("--out", "--log")

log = logging.getLogger("cnnvis.adjust")


def probe_images(raw: D.RawDataset, recon_path: Path, n: int | None, spec: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The visualize stage's probe images (indices into the test split), normalized: [n, C, H, W], labels."""
    try:
        with np.load(recon_path, allow_pickle=False) as z:
            idx, labels = z["probe_indices"], z["probe_labels"]
    except FileNotFoundError:
        raise DataError(f"{recon_path}: missing; run the visualize stage first") from None
    except KeyError:
        raise DataError(f"{recon_path}: no probe_indices/probe_labels; rerun the visualize stage") from None
    idx, labels = idx[:n], labels[:n]
    if len(idx) and int(idx.max()) >= len(raw.test.labels):
        raise DataError(f"{recon_path}: probe index {int(idx.max())} outside the test split of {raw.name}")
    x = D.normalize(D.to_tensor(raw.test.images[idx]), tuple(spec["mean"]), tuple(spec["std"]))
    return x, labels


def search_data(raw: D.RawDataset, train_cfg: TrainConfig, cfg: A.AdjustConfig) -> D.TensorData:
    """The subset of the brief trainings, with the baseline's validation split (first search_val_images)."""
    td = D.prepare(raw, val_size=train_cfg.val_size, max_train=cfg.search_train_images, max_test=1,
                   seed=train_cfg.seed)
    return dataclasses.replace(td, val_x=td.val_x[: cfg.search_val_images], val_y=td.val_y[: cfg.search_val_images])


def run(data_dir: Path, baseline_path: Path, baseline_metrics: dict, similarity: dict, recon_path: Path,
        sim_cfg: SimilarityConfig, cfg: A.AdjustConfig, hw: HardwareConfig) -> tuple[A.AdjustResult, dict]:
    base_model, state = load_checkpoint(baseline_path)
    model_cfg = parse(ModelConfig, {**state["model"], "pretrained": False}, "checkpoint.model")
    train_cfg = parse(TrainConfig, state.get("train", {}), "checkpoint.train")
    spec = state["spec"]
    if model_cfg.name != "p1_cnn":
        raise DataError(f"adjust-architecture: model {model_cfg.name!r} has no per-layer widths; use model=p1_cnn")
    history = state.get("history") or baseline_metrics.get("history") or []
    undertrained = bool(baseline_metrics.get("val_still_rising", training.still_improving(history)))

    raw = D.load_npz(data_dir)
    td = search_data(raw, train_cfg, cfg)
    x_probe, _ = probe_images(raw, recon_path, cfg.probe_images, spec)
    brief = dataclasses.replace(train_cfg, epochs=cfg.search_epochs)

    def proxy_top1(model: torch.nn.Module) -> float:
        logits = training.predict_logits(model, td.val_x, td.mean, td.std, batch_size=train_cfg.eval_batch_size)
        return training.classification_metrics(logits, td.val_y, len(td.classes))["top1"]

    def train_fn(widths: tuple[int, ...]) -> tuple[torch.nn.Module, float]:
        training.seed_everything(train_cfg.seed)
        m = models.build_model(dataclasses.replace(model_cfg, widths=widths), in_channels=spec["in_channels"],
                               num_classes=spec["num_classes"], image_size=spec["image_size"])
        training.train(m, td, brief, hw)
        m.cpu()
        return m, proxy_top1(m)

    def measure_fn(model: torch.nn.Module, i: int):
        return A.measure(model, i, x_probe, sim_cfg, mode=cfg.deconv_mode, rectify=cfg.deconv_rectify)[1]

    def further_fn() -> torch.nn.Module:
        m = copy.deepcopy(base_model)
        extra = dataclasses.replace(train_cfg, epochs=cfg.extra_epochs, lr=train_cfg.lr * cfg.extra_lr_factor)
        training.train(m, td, extra, hw, epoch_offset=train_cfg.epochs)
        m.cpu()
        return m

    baseline = [redundancy_from_dict(layer) for layer in similarity["layers"]]
    t0 = time.perf_counter()
    result = A.adjust_widths(baseline, model_cfg.widths, cfg, train_fn=train_fn, measure_fn=measure_fn,
                             undertrained=undertrained, further_fn=further_fn)
    seconds = time.perf_counter() - t0

    info = {"model": model_cfg, "train": train_cfg, "undertrained": undertrained, "seconds": seconds,
            "parameters": {"baseline": models.count_parameters_of(model_cfg, spec),
                           "adjusted": models.count_parameters_of(dataclasses.replace(model_cfg, widths=result.widths),
                                                                  spec)},
            "baseline_val_history": [h.get("val_top1") for h in history]}
    return result, info


@stage_main("adjust-architecture")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--baseline", required=True, type=Path)
    p.add_argument("--baseline-metrics", required=True, type=Path)
    p.add_argument("--similarity", required=True, type=Path)
    p.add_argument("--recon", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="adjusted architecture (YAML)")
    p.add_argument("--log", required=True, type=Path, help="decision log (JSON)")
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS, args.dataset)
    sim_cfg = params.section("similarity", SimilarityConfig)
    cfg = params.section("adjust", A.AdjustConfig)
    hw = params.apply_hardware()

    result, info = run(args.data, args.baseline, load_json(args.baseline_metrics), load_json(args.similarity),
                       args.recon, sim_cfg, cfg, hw)
    adjusted_cfg = result.model_config(info["model"])
    overrides = {"epochs": info["train"].epochs + result.extra_epochs} if result.further_training else {}
    doc = {"dataset": args.dataset, "model": to_dict(adjusted_cfg), "train_overrides": overrides,
           "baseline_widths": list(result.baseline_widths), "widths": list(result.widths),
           "metric": cfg.metric, "band": [cfg.lower, cfg.upper], "decisions": result.decisions}
    save_text(args.out, "# written by stages.adjust_architecture (paper 1 §IV rule); read by stages.retrain\n"
              + yaml.safe_dump(doc, sort_keys=False))
    save_json(args.log, {
        "dataset": args.dataset, "config": to_dict(cfg), "similarity_config": to_dict(sim_cfg),
        "baseline_widths": list(result.baseline_widths), "widths": list(result.widths),
        "parameters": info["parameters"], "undertrained": info["undertrained"],
        "baseline_val_history": info["baseline_val_history"],
        "further_training": result.further_training, "train_overrides": overrides,
        "decisions": result.decisions, "steps": [s.as_dict() for s in result.steps],
        "search_seconds": round(info["seconds"], 2),
    })
    for d in result.decisions:
        log.info("layer %d: %s %d → %d (%s)", d["layer"], d["action"], d["from"], d["to"], d["reason"])


if __name__ == "__main__":
    main()
