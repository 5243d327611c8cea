"""Stage `train-baseline`: train the configured model on one dataset.

    python -m stages.train_baseline --dataset fashion_mnist --data data/raw/fashion_mnist \
        --out data/models/fashion_mnist/baseline.pt --metrics reports/metrics/fashion_mnist/baseline.json \
        --live reports/live/fashion_mnist/baseline

Resumable: after every epoch the full training state goes to
``--resume-dir`` (scratch, keyed by a digest of the config); a killed run
restarts from its last finished epoch and gives the same result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from cnnvis import data as D
from cnnvis import models, training
from cnnvis.config import HardwareConfig, ModelConfig, TrainConfig, to_dict
from cnnvis.io import atomic_path, save_checkpoint, save_json
from stages._common import Params, add_common_args, progress_factory, stage_main

PARAMS = ("model", "train")
INPUTS = ("--data",)
OUTPUTS = ("--out", "--metrics", "--live")
SCRATCH = ("--resume-dir",)

log = logging.getLogger("cnnvis.train")


def run_digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit(data_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, hw: HardwareConfig, *, out: Path,
        metrics_path: Path, live_dir: Path | None, resume_dir: Path | None, tag: str, extra: dict | None = None) -> dict:
    """Train, evaluate on the test split, write checkpoint + metrics (+ DVCLive curves). Returns the metrics."""
    raw = D.load_npz(data_dir)
    td = D.prepare(raw, val_size=train_cfg.val_size, max_train=train_cfg.max_train_images,
                   max_test=train_cfg.max_test_images, seed=train_cfg.seed)
    spec = td.spec
    training.seed_everything(train_cfg.seed)
    model = models.build_model(model_cfg, in_channels=spec["in_channels"], num_classes=spec["num_classes"],
                               image_size=spec["image_size"])

    resume_file, resume = None, None
    if resume_dir is not None:
        digest = run_digest(tag, raw.name, to_dict(model_cfg), to_dict(train_cfg))
        resume_file = resume_dir / f"{raw.name}-{tag}-{digest}.pt"
        if resume_file.exists():
            try:
                resume = torch.load(resume_file, map_location="cpu", weights_only=True)
                log.info("resuming %s from %s (epoch %d)", tag, resume_file, resume["epoch"])
            except Exception:
                log.warning("ignoring unreadable resume file %s", resume_file)
                resume = None

    live = None
    live_tmp = None
    if live_dir is not None:
        from dvclive import Live

        live_tmp = live_dir.with_name(f".{live_dir.name}.tmp")
        shutil.rmtree(live_tmp, ignore_errors=True)
        live = Live(dir=str(live_tmp), dvcyaml=False, save_dvc_exp=False, report=None)
        for row in (resume or {}).get("history", []):
            _log_live(live, row)

    def on_epoch_end(state: dict) -> None:
        if live is not None:
            _log_live(live, state["history"][-1])
        if resume_file is not None:
            with atomic_path(resume_file) as tmp:
                torch.save(state, tmp)

    result = training.train(model, td, train_cfg, hw, resume=resume, on_epoch_end=on_epoch_end,
                            progress=progress_factory(hw))
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
        **(extra or {}),
    }
    save_checkpoint(out, model, model_cfg, spec, train=to_dict(train_cfg), dataset=raw.name, tag=tag,
                    test_top1=test["top1"], history=result.history)
    save_json(metrics_path, metrics)
    if live is not None:
        live.summary = {"test_top1": test["top1"], "test_top5": test["top5"]}
        live.end()
        if live_dir.exists():
            shutil.rmtree(live_dir)
        os.replace(live_tmp, live_dir)
    if resume_file is not None:
        resume_file.unlink(missing_ok=True)
    log.info("%s %s: test top-1 %.2f %%, %.0f s training", raw.name, tag, test["top1"], result.train_seconds)
    return metrics


def _log_live(live: Any, row: dict) -> None:
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "lr_start", "images_per_s"):
        if key in row:
            live.log_metric(key, row[key])
    live.next_step()


@stage_main("train-baseline")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--live", type=Path, default=None, help="DVCLive directory for the learning curves")
    p.add_argument("--resume-dir", type=Path, default=Path("data/resume"))
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS, args.dataset)
    model_cfg = params.section("model", ModelConfig)
    train_cfg = params.section("train", TrainConfig)
    fit(args.data, model_cfg, train_cfg, params.apply_hardware(), out=args.out, metrics_path=args.metrics,
        live_dir=args.live, resume_dir=args.resume_dir, tag="baseline")


if __name__ == "__main__":
    main()
