"""Study of stage `visualize`: seeing inside a trained classifier (paper 1 §II–III), then papers 2–3
(``cnnvis.studies.synthesis``).

Paper 1: deconvnet projections of every kernel of the first two conv layers
(Fig 2–4, 5b), one feature map across many images (Fig 5a, 6), Grad-CAM at the
first vs the last conv layer (Fig 7), backpropagation / Grad-CAM / Guided
Grad-CAM (Fig 8), and the per-kernel reconstructions of every conv layer for the
probe images (the similarity stage's input). Beyond the papers: the cascading
model-parameter randomization test, class sensitivity and deletion/insertion
faithfulness on a seeded test subset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cnnvis import ConfigError
from cnnvis import data as D
from cnnvis.activations import ActivationsConfig
from cnnvis.attribution import METHODS, VisualizeConfig, project_feature_maps, sanity
from cnnvis.attribution import faithfulness as F
from cnnvis.attribution.gradient import InputGradient
from cnnvis.config import to_dict
from cnnvis.models import conv_layers
from cnnvis.studies.similarity import Reconstructions
from cnnvis.studies.synthesis import SynthesisStudy, synthesis_study
from cnnvis.synthesis import SynthesisConfig

# the methods of the randomization test and class sensitivity, in their order in the metrics
SANITY_METHODS = ("saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam")
# the methods of the faithfulness study (its random-map control is built in); HiResCAM beside Grad-CAM at the
# same layer: with p1_cnn's fully connected head the gradients change sign across positions, so Grad-CAM's spatial
# average of them cancels where HiResCAM's element-wise product does not
FAITHFULNESS_METHODS = ("gradcam", "hirescam", "guided_gradcam", "saliency")


def round_robin(labels: Tensor, n: int, num_classes: int) -> Tensor:
    """Test indices of n images taken class by class (class 0, 1, …, C−1, 0, …), each class in split order."""
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(num_classes)]
    out, depth = [], 0
    while len(out) < n and depth < max(map(len, per_class), default=0):
        for c in range(num_classes):
            if len(out) < n and depth < len(per_class[c]):
                out.append(per_class[c][depth])
        depth += 1
    return torch.tensor(out, dtype=torch.long)


def gradcam_layer(model: nn.Module, conv_name: str, on: str) -> str:
    """The module Grad-CAM reads for a conv layer: the conv itself, or ("relu") its rectified maps, i.e. the
    first ``nn.ReLU`` after it in definition order (P1CNN: features.relu<i>; ResNet: the block's output ReLU)."""
    if on == "conv":
        return conv_name
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    after = names[names.index(conv_name) + 1 :]
    return next((n for n in after if isinstance(modules[n], nn.ReLU)), conv_name)


def method_factories(names: tuple[str, ...], layer: str) -> dict[str, sanity.MethodFactory]:
    """``cnnvis.attribution.METHODS[name]`` for each name, rebuilt for any copy of a model; the methods that read
    a layer (all but the input-gradient ones) read the module named ``layer``."""
    def factory(cls: type) -> sanity.MethodFactory:
        if issubclass(cls, InputGradient):
            return lambda m: cls(m)
        return lambda m: cls(m, dict(m.named_modules())[layer])

    return {name: factory(METHODS[name]) for name in names}


@dataclass(frozen=True)
class KernelProjections:
    """Every feature map of one conv layer projected to pixel space for one test image (paper 1 Fig 2–4, 5b)."""

    layer: str
    index: int  # into the test split
    label: str
    image: Tensor  # [C, H, W] in [0, 1]
    recon: Tensor  # [K, C, H, W]


@dataclass(frozen=True)
class MapAcrossImages:
    """One feature map of a conv layer projected to pixel space for many test images (paper 1 Fig 5a, 6)."""

    layer: str
    channel: int
    indices: tuple[int, ...]  # into the test split
    labels: tuple[str, ...]
    images: Tensor  # [M, C, H, W] in [0, 1]
    recon: Tensor  # [M, C, H, W]


@dataclass(frozen=True)
class CamMaps:
    """Maps for the true class of the same test images (paper 1 Fig 7, 8)."""

    layers: tuple[str, str]  # the modules Grad-CAM reads: of the first and of the last conv layer
    indices: tuple[int, ...]  # into the test split
    labels: tuple[str, ...]
    predicted: tuple[str, ...]
    images: Tensor  # [N, C, H, W] in [0, 1]
    gradcam_first: Tensor  # [N, 1, H, W]
    gradcam_last: Tensor  # [N, 1, H, W]
    saliency: Tensor  # [N, C, H, W]
    guided_gradcam: Tensor  # [N, 1, H, W]: |map| summed over channels


def faithfulness(model: nn.Module, methods: dict[str, sanity.MethodFactory], x: Tensor, y: Tensor,
                 cfg: VisualizeConfig, *, black: Tensor) -> F.FaithfulnessStudy:
    """Deletion / insertion faithfulness (``cnnvis.attribution.faithfulness.faithfulness_study``: one sign rule
    for every map, each baseline, a paired test of each method against independent random maps) of each method's
    map for normalized images ``x`` [N, C, H, W] and their classes ``y``; ``black``: intensity 0 in normalized
    units, [C]."""
    maps = {name: methods[name](model).attribute(x, y) for name in FAITHFULNESS_METHODS}
    return F.faithfulness_study(model, x, y, maps, black=black, **F.study_options(cfg))


@dataclass(frozen=True)
class AttributionStudy:
    """Paper 1 §II–III and the sanity checks of one trained classifier."""

    config: VisualizeConfig
    classes: tuple[str, ...]
    conv_layers: tuple[str, ...]
    recon: Reconstructions  # every conv layer's per-kernel reconstructions of the probe images
    first_layer: tuple[KernelProjections, ...]  # one per figure class
    second_layer: KernelProjections  # the first figure class's image
    map_across: tuple[MapAcrossImages, MapAcrossImages]  # first and second conv layer
    cams: CamMaps
    eval_indices: Tensor  # [E] into the test split, seeded
    randomization: dict[str, list[dict]] | None  # method → one step per re-initialized layer; None = not run
    class_sensitivity: dict[str, dict]
    faithfulness: F.FaithfulnessStudy  # on ``faithfulness_indices``
    faithfulness_indices: Tensor  # [F] into the test split, seeded
    timings: dict[str, float]  # seconds

    def metrics(self) -> dict:
        out: dict = {"eval_images": len(self.eval_indices), "eval_indices_seed": self.config.seed}
        if self.randomization is not None:
            out["randomization"] = self.randomization
        return {**out, "class_sensitivity": self.class_sensitivity, "faithfulness": {**self.faithfulness.as_dict(), "images_seed": self.config.seed},
                "conv_layers": list(self.conv_layers), "gradcam_layers": list(self.cams.layers),
                "figure_classes": [self.classes[c] for c in self.config.figure_classes],
                "figure_indices": [p.index for p in self.first_layer], "gradcam_indices": list(self.cams.indices),
                "reconstructions": {"probe_images": len(self.recon.indices),
                                    "shapes": {n: list(r.shape) for n, r in zip(self.recon.layers, self.recon.recons,
                                                                                strict=True)}},
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}


def attribution_study(model: nn.Module, spec: dict, images_u8: Tensor, labels: Tensor,
                      cfg: VisualizeConfig) -> AttributionStudy:
    """Paper 1 for a trained ``model`` on uint8 test images [N, C, H, W] with their labels [N]; ``spec`` gives the
    normalization (mean, std) and the class names."""
    classes = tuple(spec["classes"])
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
    if cfg.feature_map >= min(conv1.out_channels, conv2.out_channels):
        raise ConfigError(f"visualize.feature_map = {cfg.feature_map}: layers have only "
                          f"{min(conv1.out_channels, conv2.out_channels)} maps")

    def images(idx: Tensor) -> Tensor:
        return D.normalize(images_u8[idx], mean, std)

    def display(idx: Tensor) -> Tensor:
        return images_u8[idx].float() / 255.0

    def project(conv: nn.Module, x: Tensor, **kw) -> Tensor:
        return project_feature_maps(model, conv, x, mode=cfg.projection, rectify=cfg.rectify, max_batch=cfg.max_batch,
                                    **kw)

    timings: dict[str, float] = {}

    # reconstructions of every conv layer for the probe images (the similarity stage's input)
    t0 = time.perf_counter()
    probe = round_robin(labels, cfg.probe_images, num_classes)
    x_probe = images(probe)
    recon = Reconstructions(tuple(n for n, _ in convs),
                            tuple(project(conv, x_probe).numpy().astype(np.float16) for _, conv in convs),
                            labels[probe].numpy().astype(np.int64), probe.numpy().astype(np.int64))
    timings["reconstructions_s"] = time.perf_counter() - t0

    # Fig 2–4 every first-layer kernel for one image of each figure class; Fig 5b the second layer's
    t0 = time.perf_counter()
    fig_idx = torch.tensor([int(torch.nonzero(labels == c)[0]) for c in cfg.figure_classes])
    rec1 = project(conv1, images(fig_idx))
    first = tuple(KernelProjections(n1, i, classes[c], display(fig_idx[j : j + 1])[0], rec1[j])
                  for j, (i, c) in enumerate(zip(fig_idx.tolist(), cfg.figure_classes, strict=True)))
    rec2 = project(conv2, images(fig_idx[:1]))
    second = KernelProjections(n2, int(fig_idx[0]), classes[cfg.figure_classes[0]], display(fig_idx[:1])[0], rec2[0])

    # Fig 5a / 6: one map of layers 1 and 2 across many images
    many = torch.arange(min(cfg.feature_map_images, len(labels)))
    across = tuple(MapAcrossImages(name, cfg.feature_map, tuple(many.tolist()),
                                   tuple(classes[int(labels[i])] for i in many.tolist()), display(many),
                                   project(conv, images(many), channels=[cfg.feature_map])[:, 0])
                   for name, conv in ((n1, conv1), (n2, conv2)))
    timings["deconvnet_figures_s"] = time.perf_counter() - t0

    # Fig 7 / 8: Grad-CAM first vs last conv layer; input / backpropagation / Grad-CAM / Guided Grad-CAM
    t0 = time.perf_counter()
    modules = dict(model.named_modules())
    cam_idx = round_robin(labels, cfg.gradcam_images, num_classes)
    x_cam, y_cam = images(cam_idx), labels[cam_idx]
    with torch.no_grad():
        pred = model.eval()(x_cam).argmax(1)
    last = METHODS["gradcam"](model, modules[cam_last]).attribute(x_cam, y_cam)
    cams = CamMaps((cam_first, cam_last), tuple(cam_idx.tolist()), tuple(classes[int(v)] for v in y_cam),
                   tuple(classes[int(p)] for p in pred), display(cam_idx),
                   METHODS["gradcam"](model, modules[cam_first]).attribute(x_cam, y_cam), last,
                   METHODS["saliency"](model).attribute(x_cam, y_cam),
                   METHODS["guided_gradcam"](model, modules[cam_last]).attribute(x_cam, y_cam).abs().sum(1, keepdim=True))
    timings["gradcam_figures_s"] = time.perf_counter() - t0

    # beyond the papers: randomization test, class sensitivity, faithfulness on a seeded test subset
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    ev = torch.randperm(len(labels), generator=g)[: cfg.eval_images]
    x_ev, y_ev = images(ev), labels[ev]
    methods = method_factories(SANITY_METHODS, cam_last)
    randomization = None
    if cfg.randomization:
        steps = sanity.cascading_randomization(model, methods, x_ev, y_ev, seed=cfg.seed)
        randomization = {m: [vars(s) for s in ss] for m, ss in steps.items()}
    other = sanity.other_classes(y_ev, num_classes, seed=cfg.seed)
    sensitivity = sanity.class_sensitivity(model, methods, x_ev, y_ev, other)
    timings["sanity_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fi = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed + 1))[: cfg.faithfulness_images]
    faith = faithfulness(model, method_factories(FAITHFULNESS_METHODS, cam_last), images(fi), labels[fi], cfg,
                         black=-torch.tensor(mean) / torch.tensor(std))
    timings["faithfulness_s"] = time.perf_counter() - t0
    return AttributionStudy(cfg, classes, tuple(n for n, _ in convs), recon, first, second, across, cams, ev,
                            randomization, sensitivity, faith, fi, timings)


@dataclass(frozen=True)
class VisualizeStudy:
    attribution: AttributionStudy
    synthesis: SynthesisStudy
    synthesis_seconds: float

    def metrics(self, *, dataset: str, checkpoint: str, test_top1: float | None) -> dict:
        m = self.attribution.metrics()
        m["timings"]["synthesis_s"] = round(self.synthesis_seconds, 2)
        return {"dataset": dataset, "checkpoint": checkpoint, "config": to_dict(self.attribution.config),
                "test_top1_checkpoint": test_top1, **m, "synthesis": self.synthesis.metrics()}


def visualize_study(model: nn.Module, spec: dict, test: D.Split, cfg: VisualizeConfig, synthesis_cfg: SynthesisConfig,
                    activations_cfg: ActivationsConfig) -> VisualizeStudy:
    """Papers 1–3 for a trained ``model`` (its checkpoint's ``spec``: mean, std, classes) on the test split."""
    images_u8, labels = D.to_tensor(test.images), torch.as_tensor(test.labels)
    attribution = attribution_study(model, spec, images_u8, labels, cfg)
    t0 = time.perf_counter()
    synthesis = synthesis_study(model, spec, images_u8, labels, synthesis_cfg, activations_cfg)
    return VisualizeStudy(attribution, synthesis, time.perf_counter() - t0)

