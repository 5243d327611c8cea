"""Stage `visualize`: seeing inside the baseline model (paper 1 §II–III; papers 2–3 via `_viz_synthesis`).

    python -m stages.visualize --dataset fashion_mnist --model data/models/fashion_mnist/baseline.pt \
        --data data/raw/fashion_mnist --figures reports/figures/fashion_mnist/visualize \
        --recon data/visualize/fashion_mnist/reconstructions.npz \
        --metrics reports/metrics/fashion_mnist/visualize.json

Figures (paper 1): Fig 2–4 deconvnet projections of every first-layer kernel for
one test image of each of three classes, Fig 5a / Fig 6 the 7th map of conv
layer 1 / 2 projected for many images, Fig 5b every second-layer kernel, Fig 7
Grad-CAM at the first vs the last conv layer, Fig 8 input / backpropagation /
Grad-CAM / Guided Grad-CAM. Beyond the papers: the cascading model-parameter
randomization test, class sensitivity and deletion/insertion faithfulness.

``--recon`` holds the per-kernel reconstructions of every conv layer for the
probe images (read by the similarity stage): ``layers`` (conv layer names),
``recon_<i>`` float16 [N_probe, K_i, C, H, W], ``probe_labels``, ``probe_indices``
(int64, into the test split).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from cnnvis import ConfigError
from cnnvis import attribution as A
from cnnvis import data as D
from cnnvis.attribution import faithfulness as F
from cnnvis.attribution import sanity
from cnnvis.config import to_dict
from cnnvis.io import atomic_path, save_figure, save_json
from cnnvis.models import conv_layers, load_checkpoint
from stages._common import Params, add_common_args, stage_main

try:  # feature synthesis and activation volumes (papers 2-3), written by its own module
    SYNTHESIS = importlib.import_module("stages._viz_synthesis")
except ModuleNotFoundError as e:
    if e.name != "stages._viz_synthesis":
        raise
    SYNTHESIS = None

PARAMS = ("visualize", *(SYNTHESIS.PARAMS if SYNTHESIS is not None else ()))
INPUTS = ("--model", "--data")
OUTPUTS = ("--figures", "--recon", "--metrics")

log = logging.getLogger("cnnvis.visualize")

FAITHFULNESS_METHODS = ("gradcam", "guided_gradcam", "saliency", "random")


def round_robin(labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """Test indices of n images taken class by class (class 0, 1, …, C−1, 0, …), each class in split order."""
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(num_classes)]
    out, depth = [], 0
    while len(out) < n and depth < max(map(len, per_class), default=0):
        for c in range(num_classes):
            if len(out) < n and depth < len(per_class[c]):
                out.append(per_class[c][depth])
        depth += 1
    return torch.tensor(out, dtype=torch.long)


def gradcam_layer(model: torch.nn.Module, conv_name: str, on: str) -> str:
    """The module Grad-CAM reads for a conv layer: the conv itself, or ("relu") its rectified maps, i.e. the
    first ``nn.ReLU`` after it in definition order (P1CNN: features.relu<i>; ResNet: the block's output ReLU)."""
    if on == "conv":
        return conv_name
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    after = names[names.index(conv_name) + 1 :]
    return next((n for n in after if isinstance(modules[n], torch.nn.ReLU)), conv_name)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def factories(model: torch.nn.Module, last: str) -> dict[str, sanity.MethodFactory]:
    """Every method, rebuilt for any copy of ``model`` (Grad-CAM at the layer named ``last``)."""
    def layer(m: torch.nn.Module) -> torch.nn.Module:
        return dict(m.named_modules())[last]

    return {
        "saliency": lambda m: A.Saliency(m),
        "deconvnet": lambda m: A.Deconvnet(m),
        "guided_backprop": lambda m: A.GuidedBackprop(m),
        "gradcam": lambda m: A.GradCAM(m, layer(m)),
        "guided_gradcam": lambda m: A.GuidedGradCAM(m, layer(m)),
    }


def run(model: torch.nn.Module, spec: dict, test_u8: torch.Tensor, test_y: torch.Tensor, cfg: A.VisualizeConfig,
        fig_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Compute everything, save figures into ``fig_dir``; return (metrics, reconstructions npz arrays)."""
    from cnnvis.plotting import attribution as P

    classes = list(spec["classes"])
    mean, std = tuple(spec["mean"]), tuple(spec["std"])
    num_classes = len(classes)
    bad = [c for c in cfg.figure_classes if c >= num_classes]
    if bad:
        raise ConfigError(f"visualize.figure_classes = {list(cfg.figure_classes)}: class {bad[0]} does not exist "
                          f"({num_classes} classes)")
    convs = conv_layers(model)
    if len(convs) < 2:
        raise ConfigError(f"model has {len(convs)} conv layer(s); paper 1's figures need at least two")
    (n1, conv1), (n2, conv2), (nlast, _) = convs[0], convs[1], convs[-1]
    cam_first, cam_last = gradcam_layer(model, n1, cfg.gradcam_on), gradcam_layer(model, nlast, cfg.gradcam_on)
    modules = dict(model.named_modules())
    if cfg.feature_map >= min(conv1.out_channels, conv2.out_channels):
        raise ConfigError(f"visualize.feature_map = {cfg.feature_map}: layers have only "
                          f"{min(conv1.out_channels, conv2.out_channels)} maps")

    def images(idx: torch.Tensor) -> torch.Tensor:
        return D.normalize(test_u8[idx], mean, std)

    def display(idx: torch.Tensor) -> torch.Tensor:
        return test_u8[idx].float() / 255.0

    def label(i: int) -> str:
        return classes[int(test_y[i])]

    project = dict(mode=cfg.projection, rectify=cfg.rectify, max_batch=cfg.max_batch)
    signal = f"{'strongest activation' if cfg.projection == 'max' else 'whole map'}" + \
        (", rectified" if cfg.rectify else "")
    timings: dict[str, float] = {}
    figures: dict[str, object] = {}

    # --- reconstructions of every conv layer for the probe images (similarity stage)
    t0 = time.perf_counter()
    probe = round_robin(test_y, cfg.probe_images, num_classes)
    recon = {"layers": np.array([n for n, _ in convs]), "probe_labels": test_y[probe].numpy().astype(np.int64),
             "probe_indices": probe.numpy().astype(np.int64)}
    x_probe = images(probe)
    for i, (_, conv) in enumerate(convs):
        recon[f"recon_{i}"] = A.project_feature_maps(model, conv, x_probe, **project).numpy().astype(np.float16)
    timings["reconstructions_s"] = time.perf_counter() - t0

    # --- Fig 2-4: every first-layer kernel for one image of each of three classes; Fig 5b: second layer
    t0 = time.perf_counter()
    fig_idx = torch.tensor([int(torch.nonzero(test_y == c)[0]) for c in cfg.figure_classes])
    rec1 = A.project_feature_maps(model, conv1, images(fig_idx), **project)
    for j, (i, c) in enumerate(zip(fig_idx.tolist(), cfg.figure_classes, strict=True)):
        key = f"p1_fig{2 + j:02d}_deconv_{n1.replace('.', '_')}_{slug(classes[c])}" if j < 3 else \
            f"p1_fig02-04_extra_deconv_{slug(classes[c])}"
        figures[key] = P.projection_grid(
            display(fig_idx[j : j + 1])[0], rec1[j],
            title=f"Deconvnet projection of each of the {conv1.out_channels} feature maps of {n1} (first conv layer) "
                  f"to pixel space\ntest image #{i}, class '{classes[c]}' (signal: {signal})")
    rec2 = A.project_feature_maps(model, conv2, images(fig_idx[:1]), **project)
    figures[f"p1_fig05b_deconv_{n2.replace('.', '_')}"] = P.projection_grid(
        display(fig_idx[:1])[0], rec2[0],
        title=f"Deconvnet projection of each of the {conv2.out_channels} feature maps of {n2} (second conv layer)\n"
              f"test image #{int(fig_idx[0])}, class '{classes[cfg.figure_classes[0]]}' (signal: {signal})")

    # --- Fig 5a / 6: the 7th map of layers 1 and 2 across many images
    many = torch.arange(min(cfg.feature_map_images, len(test_y)))
    for key, name, conv in (("p1_fig05a", n1, conv1), ("p1_fig06", n2, conv2)):
        rec = A.project_feature_maps(model, conv, images(many), channels=[cfg.feature_map], **project)[:, 0]
        figures[f"{key}_map{cfg.feature_map + 1}_{name.replace('.', '_')}"] = P.map_across_images(
            display(many), rec, [f"#{i} {label(i)}" for i in many.tolist()],
            title=f"Feature map {cfg.feature_map + 1} of {name} projected to pixel space for "
                  f"{len(many)} test images (deconvnet, signal: {signal})")
    timings["deconvnet_figures_s"] = time.perf_counter() - t0

    # --- Fig 7 / 8: Grad-CAM first vs last conv layer; input / backprop / Grad-CAM / Guided Grad-CAM
    t0 = time.perf_counter()
    cam_idx = round_robin(test_y, cfg.gradcam_images, num_classes)
    x_cam, y_cam = images(cam_idx), test_y[cam_idx]
    with torch.no_grad():
        pred = model.eval()(x_cam).argmax(1)
    rows = [f"#{i}: {classes[int(y)]}\n(pred. {classes[int(p)]})" for i, y, p in zip(cam_idx.tolist(), y_cam, pred, strict=True)]
    fig7 = {f"Grad-CAM at {cam_first}\n(first conv layer)": A.GradCAM(model, modules[cam_first]).attribute(x_cam, y_cam),
            f"Grad-CAM at {cam_last}\n(last conv layer)": A.GradCAM(model, modules[cam_last]).attribute(x_cam, y_cam)}
    figures["p1_fig07_gradcam_first_vs_last"] = P.method_columns(
        display(cam_idx), fig7, rows, overlay=list(fig7),
        title="Grad-CAM (eq. 1: averaged gradients, ReLU, bilinear upsampling) for the true class:\n"
              "first vs last conv layer")
    fig8 = {"backpropagation\n(|gradient|)": A.Saliency(model).attribute(x_cam, y_cam),
            f"Grad-CAM\n({cam_last})": A.GradCAM(model, modules[cam_last]).attribute(x_cam, y_cam),
            "Guided Grad-CAM\n(|map|, channels summed)":
                A.GuidedGradCAM(model, modules[cam_last]).attribute(x_cam, y_cam).abs().sum(1, keepdim=True)}
    figures["p1_fig08_gradcam"] = P.method_columns(
        display(cam_idx), fig8, rows, overlay=[k for k in fig8 if k.startswith("Grad-CAM")],
        title="Original, backpropagation (saliency), Grad-CAM and Guided Grad-CAM for the true class")
    timings["gradcam_figures_s"] = time.perf_counter() - t0

    # --- beyond the papers: randomization test, class sensitivity, faithfulness on a test subset
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    ev = torch.randperm(len(test_y), generator=g)[: cfg.eval_images]
    x_ev, y_ev = images(ev), test_y[ev]
    methods = factories(model, cam_last)
    metrics: dict = {"eval_images": len(ev), "eval_indices_seed": cfg.seed}
    if cfg.randomization:
        steps = sanity.cascading_randomization(model, methods, x_ev, y_ev, seed=cfg.seed)
        metrics["randomization"] = {m: [vars(s) for s in ss] for m, ss in steps.items()}
        figures["beyond_randomization_test"] = P.randomization_curves(
            metrics["randomization"],
            title=f"Model-parameter randomization test (Adebayo et al. 2018), {len(ev)} test images:\n"
                  "does the map change when the weights are re-initialized, output layer first?")
    other = sanity.other_classes(y_ev, num_classes, seed=cfg.seed)
    metrics["class_sensitivity"] = sanity.class_sensitivity(model, methods, x_ev, y_ev, other)
    timings["sanity_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    maps = {"gradcam": methods["gradcam"](model).attribute(x_ev, y_ev),
            "guided_gradcam": methods["guided_gradcam"](model).attribute(x_ev, y_ev),
            "saliency": methods["saliency"](model).attribute(x_ev, y_ev),
            "random": torch.rand(x_ev.shape[0], 1, *x_ev.shape[2:], generator=g)}
    faith, curves = {}, {}
    for name in FAITHFULNESS_METHODS:
        c = F.deletion_insertion(model, x_ev, F.pixel_importance(maps[name]), y_ev, steps=cfg.faithfulness_steps,
                                 deletion_baseline=cfg.deletion_baseline, insertion_baseline=cfg.insertion_baseline,
                                 blur_sigma=cfg.blur_sigma, black=-torch.tensor(mean) / torch.tensor(std))
        curves[name] = {"deletion": c.deletion.numpy(), "insertion": c.insertion.numpy(),
                        "deletion_auc": float(c.deletion_auc.mean()), "insertion_auc": float(c.insertion_auc.mean())}
        faith[name] = {"deletion_auc_mean": curves[name]["deletion_auc"], "deletion_auc_std": float(c.deletion_auc.std()),
                       "insertion_auc_mean": curves[name]["insertion_auc"],
                       "insertion_auc_std": float(c.insertion_auc.std()), "n": len(ev)}
    metrics["faithfulness"] = {"steps": cfg.faithfulness_steps, "deletion_baseline": cfg.deletion_baseline,
                               "insertion_baseline": cfg.insertion_baseline, "methods": faith}
    figures["beyond_deletion_insertion"] = P.faithfulness_curves(
        curves, title=f"Deletion / insertion faithfulness on {len(ev)} test images (deletion → {cfg.deletion_baseline}, "
                      f"insertion from {cfg.insertion_baseline})")
    timings["faithfulness_s"] = time.perf_counter() - t0

    metrics.update({
        "conv_layers": [n for n, _ in convs], "gradcam_layers": [cam_first, cam_last], "figure_classes": [classes[c] for c in cfg.figure_classes],
        "figure_indices": fig_idx.tolist(), "gradcam_indices": cam_idx.tolist(),
        "reconstructions": {"probe_images": len(probe), "shapes": {n: list(recon[f"recon_{i}"].shape)
                                                                    for i, (n, _) in enumerate(convs)}},
        "timings": {k: round(v, 2) for k, v in timings.items()},
    })
    for name, fig in figures.items():
        save_figure(fig_dir / f"{name}.png", fig, dpi=110)
    return metrics, recon


@stage_main("visualize")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, type=Path, help="baseline checkpoint")
    p.add_argument("--data", required=True, type=Path, help="data/raw/<dataset> (its test split is used)")
    p.add_argument("--figures", required=True, type=Path, help="directory of this stage's figures")
    p.add_argument("--recon", required=True, type=Path, help="npz of the per-kernel reconstructions")
    p.add_argument("--metrics", required=True, type=Path)
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS, args.dataset)
    cfg = params.section("visualize", A.VisualizeConfig)
    params.apply_hardware()
    model, state = load_checkpoint(args.model)
    spec = state["spec"]
    raw = D.load_npz(args.data)
    test_u8, test_y = D.to_tensor(raw.test.images), torch.as_tensor(raw.test.labels)
    if list(raw.classes) != list(spec["classes"]):
        raise ConfigError(f"{args.model}: trained on classes {spec['classes'][:3]}…, but {args.data} has "
                          f"{list(raw.classes)[:3]}…; pass the checkpoint of this dataset")

    with atomic_path(args.figures, directory=True) as fig_dir:
        metrics, recon = run(model, spec, test_u8, test_y, cfg, fig_dir)
        if SYNTHESIS is not None:
            t0 = time.perf_counter()
            metrics["synthesis"] = SYNTHESIS.run(model, spec, test_u8, test_y, params, fig_dir)
            metrics["timings"]["synthesis_s"] = round(time.perf_counter() - t0, 2)
            missing = [f for f in getattr(SYNTHESIS, "OUTPUTS_EXTRA", ()) if not (fig_dir / f).exists()]
            if missing:  # its extra files (the volume) live in the figures directory, a DVC out of this stage
                raise RuntimeError(f"stages/_viz_synthesis.py did not write {', '.join(missing)}")
        else:
            log.warning("stages/_viz_synthesis.py not found: feature synthesis and activation figures skipped")
        with atomic_path(args.recon) as tmp, open(tmp, "wb") as f:
            np.savez(f, **recon)
    save_json(args.metrics, {"dataset": args.dataset, "checkpoint": str(args.model), "config": to_dict(cfg),
                             "test_top1_checkpoint": state.get("test_top1"), **metrics})
    log.info("%s: figures in %s, reconstructions %s", args.dataset, args.figures, args.recon)


if __name__ == "__main__":
    main()
