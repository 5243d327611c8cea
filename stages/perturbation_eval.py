"""Stage `perturbation-eval`: paper 4's section 5.3 on every trained model of a dataset.

    python -m stages.perturbation_eval --dataset fashion_mnist --data data/raw/fashion_mnist \
        --baseline data/models/fashion_mnist/baseline.pt --encdec data/models/fashion_mnist/encdec.pt \
        --metrics reports/metrics/fashion_mnist/perturbation.json \
        --table reports/tables/fashion_mnist/perturbation.md --figures reports/figures/fashion_mnist/perturbation

Each model flag (--baseline, --adjusted, --pruned, --encdec) is optional; a
given path must exist unless --skip-missing (runs outside DVC, where a model
stage has not run yet). Every perturbation is applied once to the uint8 test
images, with one seed, and the same perturbed images go to every model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from cnnvis import CheckpointError
from cnnvis import data as D
from cnnvis import perturb as P
from cnnvis.io import atomic_path, save_figure, save_json, save_text
from cnnvis.models import load_checkpoint
from cnnvis.training import predict_logits
from stages._common import Params, add_common_args, stage_main

PARAMS = ("perturb",)
MODEL_FLAGS = ("baseline", "adjusted", "pruned", "encdec")
INPUTS = ("--data", "--baseline", "--adjusted", "--pruned", "--encdec")  # each path given must be a dep
OUTPUTS = ("--metrics", "--table", "--figures")

log = logging.getLogger("cnnvis.perturbation_eval")


def load_models(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, dict]]:
    models = {}
    for name in MODEL_FLAGS:
        path: Path | None = getattr(args, name)
        if path is None:
            continue
        if not path.exists() and args.skip_missing:
            log.info("%s: %s missing, skipped (--skip-missing)", name, path)
            continue
        models[name] = load_checkpoint(path)
    if not models:
        raise CheckpointError("no model to evaluate: pass at least one of --baseline/--adjusted/--pruned/--encdec "
                              "with an existing checkpoint")
    return models


def render_table(dataset: str, n: int, shape: tuple[int, int, int], rows: list[dict], skipped: list[dict],
                 perts: list[P.Perturbation]) -> str:
    c, h, w = shape
    lines = [f"# Perturbation robustness — {dataset} (paper 4, section 5.3)", "",
             f"Test set: n = {n} images, {h}×{w}×{c}. Perturbations are applied to the uint8 pixels before "
             "normalization, seeded; Δ = perturbed − clean in percentage points. conf(pred) / conf(true): mean "
             "softmax probability of the predicted / the true class.", "",
             "| perturbation | model | top-1 % | Δ top-1 | conf(pred) % | Δ | conf(true) % | Δ |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["perturbation"] == "clean":
            lines.append(f"| clean | {r['model']} | {r['top1']:.2f} | — | {r['conf_pred']:.2f} | — | "
                         f"{r['conf_true']:.2f} | — |")
        else:
            lines.append(f"| {r['label']} | {r['model']} | {r['top1']:.2f} | {r['delta_top1']:+.2f} | "
                         f"{r['conf_pred']:.2f} | {r['delta_conf_pred']:+.2f} | {r['conf_true']:.2f} | "
                         f"{r['delta_conf_true']:+.2f} |")
    for s in skipped:
        lines.append(f"| {s['label']} | all | {s['reason']} | | | | | |")
    notes = ["", "Notes:"]
    for p in perts:
        if "rate" in p.params:
            m = P.noise_count(p.params["rate"], shape)
            note = f"- {p.label}: M = round(λ·H·W·C) = round({p.params['rate']:g}·{h * w * c}) = {m} channel values per image"
            if m == 0:
                note += " — no value changes at this image size, so the row equals clean"
            notes.append(note + ".")
    gray = next((r for r in rows if r["perturbation"] == "grayscale" and r["model"] == "encdec"), None)
    ours = (f"ours (encdec, whole test set): {gray['top1']:.2f} %" if gray is not None else
            "ours: " + next((s["reason"] for s in skipped if s["name"] == "grayscale"), "not evaluated"))
    notes.append(f"- Paper 4 (5.3.1): grayscale input, {P.PAPER_GRAYSCALE_TOP1:.2f} % top-1 on 100 random Tiny "
                 f"ImageNet validation images (its encoder-decoder); {ours}.")
    return "\n".join(lines + notes) + "\n"


@stage_main("perturbation-eval")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data", required=True, type=Path)
    for name in MODEL_FLAGS:
        p.add_argument(f"--{name}", type=Path, default=None, help=f"checkpoint of the {name} model")
    p.add_argument("--skip-missing", action="store_true", help="skip model flags whose file does not exist")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--table", required=True, type=Path)
    p.add_argument("--figures", required=True, type=Path)
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS, args.dataset)
    cfg: P.PerturbConfig = params.section("perturb", P.PerturbConfig)
    params.apply_hardware()
    from cnnvis.plotting import perturb as PP  # plotting is a leaf: only stages import it

    raw = D.load_npz(args.data)
    x, y = D.to_tensor(raw.test.images), torch.as_tensor(raw.test.labels)
    if cfg.max_test_images is not None and cfg.max_test_images < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.max_test_images].sort().values
        x, y = x[keep], y[keep]
    shape = tuple(x.shape[1:])
    models = load_models(args)
    for name, (_, state) in models.items():
        spec = state["spec"]
        if (spec["in_channels"], spec["image_size"]) != (shape[0], shape[1]):
            raise CheckpointError(f"--{name}: model expects {spec['in_channels']}×{spec['image_size']} px input, "
                                  f"the {raw.name} test set is {shape[0]}×{shape[1]} px")

    perts = P.perturbations(cfg)
    applicable, skipped = [], []
    for pert in perts:
        reason = P.applicability(pert, shape[0])
        if reason is None:
            applicable.append(pert)
        else:
            skipped.append({"name": pert.name, "label": pert.label, "reason": reason})

    def evaluate(images: torch.Tensor) -> dict[str, tuple[dict, torch.Tensor]]:
        out = {}
        for name, (model, state) in models.items():
            logits = predict_logits(model, images, tuple(state["spec"]["mean"]), tuple(state["spec"]["std"]),
                                    batch_size=cfg.batch_size)
            out[name] = (P.confidence_metrics(logits, y), logits)
        return out

    clean = evaluate(x)
    rows: list[dict[str, Any]] = [{"perturbation": "clean", "label": "clean", "model": m, **r}
                                  for m, (r, _) in clean.items()]
    example_idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed + 1))[:cfg.examples].sort().values
    figures = {}
    for i, pert in enumerate(perts):
        if pert not in applicable:
            continue
        xp = pert(x, seed=cfg.seed * 1000 + i)
        results = evaluate(xp)
        for name, (r, _) in results.items():
            rows.append({"perturbation": pert.name, "label": pert.label, "model": name, **pert.params,
                         **P.with_deltas(r, clean[name][0])})
            log.info("%-20s %-8s top-1 %.2f %% (clean %.2f)", pert.name, name, r["top1"], clean[name][0]["top1"])
        figures[pert.name] = PP.perturbation_grid(
            x[example_idx], xp[example_idx], y[example_idx], raw.classes, models,
            {name: logits[example_idx] for name, (_, logits) in results.items()},
            {name: logits[example_idx] for name, (_, logits) in clean.items()},
            title=f"{raw.name}: {pert.label}")
    figures["summary"] = PP.summary_bars(rows, raw.name)

    save_json(args.metrics, {
        "dataset": raw.name, "n": int(len(y)), "image_shape_chw": list(shape), "seed": cfg.seed,
        "models": {name: {"model": state["model"]["name"], "tag": state.get("tag")} for name, (_, state) in models.items()},
        "rows": rows, "not_applicable": skipped,
        "salt_pepper_counts": {f"{r:g}": P.noise_count(r, shape) for r in cfg.salt_pepper_rates},
        "paper": {"grayscale_top1": P.PAPER_GRAYSCALE_TOP1,
                  "what": "paper 4 5.3.1: its encoder-decoder on 100 random grayscale Tiny ImageNet val images"},
    })
    save_text(args.table, render_table(raw.name, len(y), shape, rows, skipped, perts))
    with atomic_path(args.figures, directory=True) as tmp:
        for name, fig in figures.items():
            save_figure(tmp / f"{name}.png", fig, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
