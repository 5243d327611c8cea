"""Stage `retrain`: train the adjusted architecture and its uniform-width control with the baseline recipe.

    python -m stages.retrain --dataset fashion_mnist --data data/raw/fashion_mnist \
        --adjusted data/models/fashion_mnist/adjusted.yaml \
        --baseline-metrics reports/metrics/fashion_mnist/baseline.json \
        --recon data/visualize/fashion_mnist/reconstructions.npz \
        --out data/models/fashion_mnist/adjusted.pt --control-out data/models/fashion_mnist/control.pt \
        --metrics reports/metrics/fashion_mnist/adjusted.json \
        --rows reports/tables/table1_rows/fashion_mnist.json \
        --figures reports/figures/fashion_mnist/adjusted

Per seed (``adjust.seeds`` seeds from ``train.seed``): the adjusted model, the
control (every layer widened/narrowed by one shared factor to the adjusted
model's parameter count: the same capacity change without pHash guidance) and,
for seeds beyond the baseline's own, the baseline architecture again; all with
the same recipe (plus the adjust stage's extra epochs, if rule (1) fired — the
control gets them too, the "before" column does not). The first seed's models
are kept. Paper 1 Fig 13 / 14 are drawn from the adjusted model.

Table I is cross-dataset while this stage runs once per dataset (foreach), so
each run writes its own row file and the non-foreach stage ``table1``
(stages/table1.py) joins the rows of the selected datasets into one table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import yaml

from cnnvis import ConfigError, models
from cnnvis import adjust as A
from cnnvis import data as D
from cnnvis.config import ModelConfig, TrainConfig, parse, to_dict
from cnnvis.io import load_json, save_json
from cnnvis.models import load_checkpoint
from cnnvis.similarity import SimilarityConfig
from stages._common import Params, add_common_args, stage_main

PARAMS = ("train", "similarity", "adjust")
INPUTS = ("--data", "--adjusted", "--baseline-metrics", "--recon")
OUTPUTS = ("--out", "--control-out", "--metrics", "--rows", "--figures")
SCRATCH = ("--resume-dir",)

log = logging.getLogger("cnnvis.retrain")

# Paper 1, Table I: test accuracy (%) before → after the adjustment.
PAPER_TABLE1 = {"mnist": (98.07, 99.42), "cifar10": (82.25, 91.61), "cifar100": (77.41, 87.79)}
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST",
                 "tiny_imagenet": "Tiny ImageNet", "digits": "digits (sklearn)", "synthetic": "synthetic"}


def read_adjusted(path: Path) -> tuple[ModelConfig, dict, dict]:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; run the adjust-architecture stage first") from None
    if not isinstance(doc, dict) or "model" not in doc:
        raise ConfigError(f"{path}: no 'model' section; rerun the adjust-architecture stage")
    return parse(ModelConfig, doc["model"], f"{path}:model"), dict(doc.get("train_overrides") or {}), doc


def summary(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 3), "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def after_figures(model_path: Path, data_dir: Path, recon: Path, sim_cfg: SimilarityConfig, cfg: A.AdjustConfig,
                  figures: Path) -> list[dict]:
    """Paper 1 Fig 13 / 14: the adjusted model's reconstructions and similarity matrix (every conv layer)."""
    from cnnvis.io import atomic_path
    from cnnvis.models import conv_layers
    from cnnvis.similarity import fingerprints
    from stages.adjust_architecture import probe_images
    from stages.similarity import layer_record, write_layer_figures

    model, state = load_checkpoint(model_path)
    x, labels = probe_images(D.load_npz(data_dir), recon, None, state["spec"])
    names = [n for n, _ in conv_layers(model)]
    sims, reds, pixels = [], [], []
    for i in range(len(names)):
        ls, red, rec = A.measure(model, i, x, sim_cfg, mode=cfg.deconv_mode, rectify=cfg.deconv_rectify)
        sims.append(ls)
        reds.append(red)
        pixels.append(fingerprints(rec[:1], sim_cfg)[2][0])
    classes = state["spec"].get("classes") or []
    label = f"probe image 0, class {classes[int(labels[0])] if classes else int(labels[0])}"
    with atomic_path(figures, directory=True) as tmp:
        write_layer_figures(tmp, names, sims, reds, pixels, sim_cfg, probe_label=label, model_tag="adjusted model",
                            paper={len(names) - 1: {"groups": "p1_fig13", "matrix": "p1_fig14"}})
    return [layer_record(n, i, sims[i], reds[i]) for i, n in enumerate(names)]


def retrain(args: argparse.Namespace) -> None:
    from stages.train_baseline import fit

    params = Params.load(args.params, PARAMS, args.dataset)
    train_cfg = params.section("train", TrainConfig)
    sim_cfg = params.section("similarity", SimilarityConfig)
    cfg = params.section("adjust", A.AdjustConfig)
    hw = params.apply_hardware()
    adjusted_cfg, overrides, doc = read_adjusted(args.adjusted)
    baseline_metrics = load_json(args.baseline_metrics)
    recipe = parse(TrainConfig, {**to_dict(train_cfg), **overrides}, f"{args.adjusted}:train_overrides")
    spec: dict = {}  # the dataset spec, read from the first adjusted checkpoint
    base_cfg = parse(ModelConfig, {**doc["model"], "widths": doc["baseline_widths"]}, "baseline model")

    seeds = [train_cfg.seed + i for i in range(cfg.seeds)]
    rows: dict[str, list] = {"before": [], "after": [], "control": []}
    runs: dict[str, list] = {"before": [], "after": [], "control": []}
    control_cfg = None
    with tempfile.TemporaryDirectory(prefix="cnnvis-retrain-") as scratch_dir:
        scratch = Path(scratch_dir)
        for k, seed in enumerate(seeds):
            first = k == 0
            m = fit(args.data, adjusted_cfg, _seeded(recipe, seed), hw,
                    out=args.out if first else scratch / "adjusted.pt",
                    metrics_path=scratch / f"adjusted-{seed}.json", live_dir=None, resume_dir=args.resume_dir,
                    tag="adjusted")
            rows["after"].append(m["test"]["top1"])
            runs["after"].append(_run_record(m))
            if first:
                spec = load_checkpoint(args.out)[1]["spec"]
                target = models.count_parameters_of(adjusted_cfg, spec)
                def count(ws: tuple[int, ...], spec: dict = spec) -> int:
                    return models.count_parameters_of(_with_widths(base_cfg, ws), spec)

                widths = A.uniform_control_widths(tuple(doc["baseline_widths"]), count, target)
                control_cfg = _with_widths(base_cfg, widths)
            c = fit(args.data, control_cfg, _seeded(recipe, seed), hw,
                    out=args.control_out if first else scratch / "control.pt",
                    metrics_path=scratch / f"control-{seed}.json", live_dir=None, resume_dir=args.resume_dir,
                    tag="control")
            rows["control"].append(c["test"]["top1"])
            runs["control"].append(_run_record(c))
            if seed == baseline_metrics.get("seed", train_cfg.seed):
                rows["before"].append(baseline_metrics["test"]["top1"])
                runs["before"].append({"seed": seed, "test_top1": baseline_metrics["test"]["top1"],
                                       "source": str(args.baseline_metrics)})
            else:
                b = fit(args.data, base_cfg, _seeded(train_cfg, seed), hw, out=scratch / "baseline.pt",
                        metrics_path=scratch / f"baseline-{seed}.json", live_dir=None, resume_dir=args.resume_dir,
                        tag="baseline")
                rows["before"].append(b["test"]["top1"])
                runs["before"].append(_run_record(b))

    similarity_after = after_figures(args.out, args.data, args.recon, sim_cfg, cfg, args.figures)
    params_count = {"before": models.count_parameters_of(base_cfg, spec), "after": target,
                    "control": models.count_parameters_of(control_cfg, spec)}
    widths = {"before": list(base_cfg.widths), "after": list(adjusted_cfg.widths), "control": list(control_cfg.widths)}
    result = {k: summary(v) for k, v in rows.items() if v}
    row = {"dataset": args.dataset, "name": DATASET_NAMES.get(args.dataset, args.dataset), "seeds": seeds,
           "epochs": {"before": train_cfg.epochs, "after": recipe.epochs, "control": recipe.epochs},
           "widths": widths, "parameters": params_count, **result,
           "paper": dict(zip(("before", "after"), PAPER_TABLE1[args.dataset], strict=True))
           if args.dataset in PAPER_TABLE1 else None}
    save_json(args.metrics, {"dataset": args.dataset, "tag": "adjusted", "model": to_dict(adjusted_cfg),
                             "control_model": to_dict(control_cfg), "recipe": to_dict(recipe),
                             "train_overrides": overrides, "test": runs["after"][0]["test"] if runs["after"] else None,
                             "top1": result.get("after"), "control_top1": result.get("control"),
                             "before": {"top1": result["before"]["mean"], **result["before"]},
                             "control": {"top1": result["control"]["mean"], **result["control"]},
                             "parameters": params_count, "widths": widths,
                             "runs": runs, "similarity_after": similarity_after})
    save_json(args.rows, row)
    log.info("%s: before %s, after %s, control %s (test top-1 %%, n=%d)", args.dataset, result.get("before"),
             result.get("after"), result.get("control"), len(seeds))


def _seeded(cfg: TrainConfig, seed: int) -> TrainConfig:
    return parse(TrainConfig, {**to_dict(cfg), "seed": seed}, "train")


def _with_widths(cfg: ModelConfig, widths: tuple[int, ...]) -> ModelConfig:
    return parse(ModelConfig, {**to_dict(cfg), "widths": list(widths)}, "model")


def _run_record(m: dict) -> dict:
    return {"seed": m["seed"], "test_top1": m["test"]["top1"], "test": m["test"], "parameters": m["parameters"],
            "epochs": m["epochs"], "train_seconds": m["train_seconds"], "final_val_top1": m["final_val_top1"]}


@stage_main("retrain")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--adjusted", required=True, type=Path)
    p.add_argument("--baseline-metrics", required=True, type=Path)
    p.add_argument("--recon", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--control-out", required=True, type=Path)
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--rows", required=True, type=Path, help="this dataset's Table I row (JSON)")
    p.add_argument("--figures", required=True, type=Path, help="directory of Fig 13 / 14")
    p.add_argument("--resume-dir", type=Path, default=Path("data/resume"))
    add_common_args(p)
    args = p.parse_args(argv)
    retrain(args)


if __name__ == "__main__":
    main()
