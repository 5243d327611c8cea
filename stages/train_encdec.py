"""Stage `train-encdec`: paper 4's encoder-decoder, its maps during training, Table 1.

    python -m stages.train_encdec --dataset fashion_mnist --data data/raw/fashion_mnist \
        --out data/models/fashion_mnist/encdec.pt --metrics reports/metrics/fashion_mnist/encdec.json \
        --snapshots data/arrays/fashion_mnist/encdec_snapshots.npz \
        --table reports/tables/fashion_mnist/table1_encdec.md --figures reports/figures/fashion_mnist/encdec

Trains the encoder-decoder (section `encdec`, recipe `encdec.train`) while
recording the class maps of fixed probe test images at `encdec.snapshot_epochs`
(Figs 3-5), then measures on the test set what section 5 only eyeballs (when
maps settle, same-class similarity, confidence vs sharpness; Figs 6-8) and,
for Table 1, trains the plain ResNet-18 with the same trunk, data and recipe.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnvis import data as D
from cnnvis import encdec as E
from cnnvis import models, training
from cnnvis.config import TrainConfig, to_dict
from cnnvis.io import atomic_path, save_checkpoint, save_figure, save_json, save_text
from stages._common import Params, add_common_args, progress_factory, stage_main

PARAMS = ("encdec",)
INPUTS = ("--data",)
OUTPUTS = ("--out", "--metrics", "--snapshots", "--table", "--figures")

log = logging.getLogger("cnnvis.train_encdec")


class SnapshotRecorder:
    """Records the probe maps after given optimizer steps (``training.train``'s ``on_step``).

    Maps are taken in eval mode without grad; ``predict_maps`` restores the
    training mode, so the run is unchanged.
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


def snapshot_steps(epochs: tuple[float, ...], train_epochs: int, steps_per_epoch: int) -> dict[int, float]:
    """Optimizer step → (fractional) epoch for every snapshot within the run; the last epoch always included."""
    out = {}
    for e in sorted(set(epochs) | {float(train_epochs)}):
        if e > train_epochs:
            log.info("snapshot epoch %g beyond encdec.train.epochs = %d: skipped", e, train_epochs)
            continue
        out[max(1, round(e * steps_per_epoch))] = float(e)
    return out


def table1(ours: list[dict], dataset: str, image_size: int, epochs: int) -> str:
    lines = [
        f"# Table 1 — encoder-decoder vs plain ResNet-18 ({dataset})",
        "",
        "| source | model | top-1 % | top-5 % | dataset | input | epochs |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for row in E.PAPER_TABLE1:
        lines.append(f"| paper 4 | {row['model']} | {row['top1']:.2f} | {row['top5']:.2f} | {row['dataset']} "
                     f"| {row['input']} | {row['epochs']} |")
    for row in ours:
        lines.append(f"| ours | {row['model']} | {row['top1']:.2f} | {row['top5']:.2f} | {dataset} test "
                     f"(n={row['n']}) | {image_size} px | {epochs} |")
    lines += ["", "Paper numbers: Tiny ImageNet, 80 epochs, full-width pretrained ResNet-18 on a K80. Ours: this "
              "run's dataset, recipe (`encdec.train`) and trunk width (`encdec.width_multiplier`); both of our "
              "models share trunk, stem, data and recipe. Top-5 of a 10-class problem is near 100 % by construction.",
              ""]
    return "\n".join(lines)



@stage_main("train-encdec")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--snapshots", required=True, type=Path)
    p.add_argument("--table", required=True, type=Path)
    p.add_argument("--figures", required=True, type=Path)
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS, args.dataset)
    cfg: E.EncDecConfig = params.section("encdec", E.EncDecConfig)
    tcfg: TrainConfig = cfg.train
    hw = params.apply_hardware()
    from cnnvis.plotting import encdec as PE  # plotting is a leaf: only stages import it

    raw = D.load_npz(args.data)
    td = D.prepare(raw, val_size=tcfg.val_size, max_train=tcfg.max_train_images, max_test=tcfg.max_test_images,
                   seed=tcfg.seed)
    spec = td.spec
    classes = list(td.classes)
    num_classes = len(classes)
    probe_idx = E.choose_probes(td.test_y, num_classes, cfg.probes_per_class, cfg.seed)
    probes, probe_y = td.test_x[probe_idx], td.test_y[probe_idx]

    # ---- the encoder-decoder, with map snapshots
    training.seed_everything(tcfg.seed)
    model_cfg = cfg.model_config()
    model = models.build_model(model_cfg, in_channels=spec["in_channels"], num_classes=num_classes,
                               image_size=spec["image_size"])
    steps_per_epoch = math.ceil(len(td.train_y) / tcfg.batch_size)
    recorder = SnapshotRecorder(model, probes, td.mean, td.std,
                                snapshot_steps(cfg.snapshot_epochs, tcfg.epochs, steps_per_epoch))
    result = training.train(model, td, tcfg, hw, on_step=recorder, progress=progress_factory(hw))
    model.cpu()
    maps, logits = E.predict_maps(model, td.test_x, td.mean, td.std, batch_size=tcfg.eval_batch_size)
    test = training.classification_metrics(logits, td.test_y, num_classes)
    log.info("encdec: test top-1 %.2f %%, top-5 %.2f %%, %.0f s training (+%.0f s snapshots)",
             test["top1"], test["top5"], result.train_seconds, recorder.seconds)

    # ---- when each probe's own-class map settles (final = the map after the last epoch)
    snaps = torch.stack(recorder.maps)  # T×P×C×m×m
    own = snaps[:, torch.arange(len(probe_y)), probe_y]  # T×P×m×m
    settle = E.settle_epochs(own, tuple(recorder.epochs), own[-1], cfg.settle_threshold)
    per_class_settle: list[float | None] = []
    for c in range(num_classes):
        values = [s for s, y in zip(settle, probe_y.tolist(), strict=True) if y == c]
        # a class has settled once all its probes have; None = some probe never did
        per_class_settle.append(None if not values or None in values else max(values))
    acc = test["per_class_top1"]
    pairs = [(s, a) for s, a in zip(per_class_settle, acc, strict=True) if s is not None and a is not None]
    settle_vs_acc = E.spearman([s for s, _ in pairs], [a for _, a in pairs])
    study = E.map_study(maps, logits, td.test_y)
    per_image = study.pop("per_image")

    # ---- the plain ResNet-18 for Table 1 (same trunk, stem, data, recipe)
    ours = [{"model": f"encoder-decoder (width ×{cfg.width_multiplier:g})", **_topk(test)}]
    resnet: dict[str, Any] | None = None
    if cfg.compare_resnet:
        training.seed_everything(tcfg.seed)
        plain = E.build_resnet_like(cfg, spec["in_channels"], num_classes, spec["image_size"])
        r_result = training.train(plain, td, tcfg, hw, progress=progress_factory(hw))
        plain.cpu()
        r_test = training.classification_metrics(
            training.predict_logits(plain, td.test_x, td.mean, td.std, batch_size=tcfg.eval_batch_size),
            td.test_y, num_classes)
        resnet = {"test": r_test, "train_seconds": round(r_result.train_seconds, 2),
                  "parameters": models.count_parameters(plain), "history": r_result.history}
        ours.append({"model": f"plain ResNet-18 (width ×{cfg.width_multiplier:g})", **_topk(r_test)})
        log.info("plain resnet18: test top-1 %.2f %%, %.0f s training", r_test["top1"], r_result.train_seconds)

    # ---- outputs
    save_checkpoint(args.out, model, model_cfg, spec, encdec=to_dict(cfg), dataset=raw.name, tag="encdec",
                    test_top1=test["top1"], history=result.history)
    with atomic_path(args.snapshots) as tmp, open(tmp, "wb") as f:
        np.savez(f, epochs=np.asarray(recorder.epochs), probe_index=probe_idx.numpy(), probe_label=probe_y.numpy(),
                 own_maps=own.numpy(), predicted=snaps.mean((3, 4)).argmax(2).numpy(), classes=np.asarray(classes))
    metrics = {
        "dataset": raw.name, "model": "encdec", "config": to_dict(cfg),
        "image_size": spec["image_size"], "map_side": int(maps.shape[-1]),
        "test": test, "classes": classes,
        "train_images": len(td.train_y), "test_images": len(td.test_y),
        "parameters": models.count_parameters(model),
        "train_seconds": round(result.train_seconds, 2), "snapshot_seconds": round(recorder.seconds, 2),
        "threads": torch.get_num_threads(), "history": result.history,
        "snapshots": {"epochs": recorder.epochs, "probe_index": probe_idx, "probe_label": probe_y},
        "settle": {"threshold": cfg.settle_threshold, "per_probe_epoch": settle,
                   "per_class_epoch": per_class_settle, "per_class_top1": acc,
                   "spearman_settle_vs_accuracy": settle_vs_acc,
                   "what": "first snapshot epoch from which the probe's own-class map keeps Pearson r >= threshold "
                           "with its final map; a class settles when all its probes have (None: never)"},
        **study,
        "resnet18": resnet,
    }
    save_json(args.metrics, metrics)
    save_text(args.table, table1(ours, raw.name, spec["image_size"], tcfg.epochs))

    figs = PE.encdec_figures(
        images=td.test_x, labels=td.test_y, maps=maps, logits=logits, classes=classes,
        probe_index=probe_idx, snapshot_epochs=recorder.epochs, snapshot_maps=snaps,
        per_class_settle=per_class_settle, per_class_top1=acc, per_image=per_image,
        examples=cfg.examples, seed=cfg.seed, dataset=raw.name)
    with atomic_path(args.figures, directory=True) as tmp:
        for name, fig in figs.items():
            save_figure(tmp / f"{name}.png", fig, dpi=110, bbox_inches="tight")


def _topk(test: dict) -> dict:
    return {"top1": test["top1"], "top5": test["top5"], "n": test["n"]}


if __name__ == "__main__":
    main()
