"""Attribution speed, as ratios measured in one run.

    python -m benchmarks.attribution [--model data/models/fashion_mnist/seeds/0/baseline.pt] [--images 256] [--threads 1]

1. Guided Grad-CAM on N test images (target = label): ours (its default
   batches of ``BATCH`` images) vs Captum's GuidedGradCam (bilinear, the same
   maps; all images in one pass, its default) and vs pytorch-grad-cam's route
   (GradCAM batched, then its GuidedBackpropReLUModel one image at a time).
2. Deconvnet projection of every kernel of a layer for the probe images: ours
   (``project_feature_maps``, all maps at once) vs a loop of one backward per kernel (one shared
   forward, ``retain_graph``) and vs Captum's NeuronDeconvolution per kernel. Where the layer
   is projected through the first block in closed form (conv2), also vs the same code with
   oneDNN's prepacked, ReLU-fused convolution replaced by its ``F.conv2d`` fallback.

The contenders of each comparison run interleaved, ``--repeats`` rounds of one
call each (after a warm-up round); a ratio is the median over rounds of the
peer's time divided by ours in the same round, so drifts of the machine's speed
cancel (its range is printed too). Without a checkpoint a randomly initialized
p1_cnn (32/64) on random 28×28 images is timed (speed does not depend on the
weights).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from cnnvis.attribution import BATCH, GuidedGradCAM, deconvnet, project_feature_maps
from cnnvis.hooks import model_state_guard, relu_rule
from cnnvis.models import conv_layers

warnings.filterwarnings("ignore")


def rounds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each function, called in turn, ``repeats`` rounds after one warm-up round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
    return times


def paired(times: dict[str, list[float]], peer: str, ours: str = "ours") -> tuple[float, float, float]:
    """Median, min and max over rounds of peer time / our time in the same round."""
    ratios = [p / o for p, o in zip(times[peer], times[ours], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def describe(times: dict[str, list[float]], peer: str, target: float) -> str:
    med, lo, hi = paired(times, peer)
    return f"{med:.2f}x (range {lo:.2f}-{hi:.2f}; issue target >= {target:g}x)"


def load(model_path: Path | None, data_dir: Path, n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    from cnnvis import data as D
    from cnnvis.config import ModelConfig
    from cnnvis.models import build_model, load_checkpoint

    if model_path is not None and model_path.exists():
        model, state = load_checkpoint(model_path)
        spec = state["spec"]
        raw = D.load_npz(data_dir)
        x = D.normalize(D.to_tensor(raw.test.images[:n]), spec["mean"], spec["std"])
        return model.eval(), x, torch.as_tensor(raw.test.labels[:n]), f"{model_path} on {data_dir} test images"
    torch.manual_seed(0)
    model = build_model(ModelConfig(widths=(32, 64), kernel_sizes=(5, 5)), in_channels=1, num_classes=10, image_size=28)
    return model.eval(), torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)), "random p1_cnn 32/64, random images"


def guided_gradcam(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    from captum.attr import GuidedGradCam
    from pytorch_grad_cam import GradCAM as PGradCAM
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name, layer = conv_layers(model)[-1]
    ours = GuidedGradCAM(model, layer)
    captum = GuidedGradCam(model, layer)
    ref = copy.deepcopy(model)  # pytorch-grad-cam swaps the ReLU modules and calls eval(): its own copy
    ref_layer = dict(ref.named_modules())[name]

    def pgc() -> np.ndarray:
        with PGradCAM(model=ref, target_layers=[ref_layer]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in y])
        gb = GuidedBackpropReLUModel(ref, device="cpu")
        return np.stack([gb(x[i : i + 1].clone(), int(y[i])) for i in range(len(x))]) * maps[..., None]

    a = ours.attribute(x, y)
    b = captum.attribute(x, y, interpolate_mode="bilinear")
    assert (a - b).abs().max() <= 1e-5 * b.abs().max(), "ours and Captum's Guided Grad-CAM differ"
    return rounds({"ours": lambda: ours.attribute(x, y),
                   "captum": lambda: captum.attribute(x, y, interpolate_mode="bilinear"),
                   "pytorch_grad_cam": pgc}, repeats)


def projection(model: torch.nn.Module, x: torch.Tensor, layer_name: str, repeats: int) -> dict[str, list[float]]:
    from captum.attr import NeuronDeconvolution

    layer = dict(model.named_modules())[layer_name]
    k = layer.out_channels

    def loop() -> torch.Tensor:  # one forward, then one backward per kernel
        with model_state_guard(model, eval_mode=True, frozen=True), relu_rule(model, "deconvnet"):
            xi = x.clone().requires_grad_(True)
            acts = {}
            h = layer.register_forward_hook(lambda _m, _i, o: acts.update(a=o))
            try:
                model(xi)
            finally:
                h.remove()
            a = acts["a"]
            out = []
            for c in range(k):
                sig = torch.zeros_like(a)
                sig[:, c] = a[:, c].detach()
                out.append(torch.autograd.grad(a, xi, sig, retain_graph=c < k - 1)[0])
        return torch.stack(out, 1)

    nd = NeuronDeconvolution(model, layer)

    def captum_loop() -> torch.Tensor:
        return torch.stack([nd.attribute(x, lambda o, c=c: 0.5 * o[:, c].pow(2).flatten(1).sum(1)) for c in range(k)], 1)

    def conv2d_fallback() -> torch.Tensor:  # the closed form without oneDNN's prepacked, ReLU-fused conv
        with mock.patch.object(deconvnet, "_onednn_ops", lambda: False):
            return project_feature_maps(model, layer, x)

    ours = project_feature_maps(model, layer, x)
    scale = ours.abs().max()
    assert ((ours - loop()).abs().max() <= 1e-5 * scale) and ((ours - captum_loop()).abs().max() <= 1e-5 * scale)
    fns = {"ours": lambda: project_feature_maps(model, layer, x), "loop": loop, "captum_loop": captum_loop}
    if deconvnet._image_block(model, layer) is not None and deconvnet._onednn_ops():
        assert (ours - conv2d_fallback()).abs().max() <= 1e-5 * scale
        fns["conv2d_fallback"] = conv2d_fallback
    return rounds(fns, repeats)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("data/models/fashion_mnist/seeds/0/baseline.pt"))
    p.add_argument("--data", type=Path, default=Path("data/raw/fashion_mnist"))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--probe", type=int, default=10, help="images for the deconvnet projection")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, x, y, what = load(args.model, args.data, args.images)
    print(f"model: {what}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} interleaved rounds (median seconds; ratios: median of per-round ratios)")

    t = guided_gradcam(model, x, y, args.repeats)
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"\nGuided Grad-CAM, {len(x)} images (bilinear, maps equal to Captum's within 1e-5):")
    print(f"  ours (batches of {BATCH}) {med['ours']:.3f} s | Captum GuidedGradCam {med['captum']:.3f} s | "
          f"pytorch-grad-cam per-image guided backprop {med['pytorch_grad_cam']:.3f} s")
    print(f"  speed-up vs Captum: {describe(t, 'captum', 1.0)}")
    print(f"  speed-up vs pytorch-grad-cam: {describe(t, 'pytorch_grad_cam', 5.0)}")

    for name, layer in conv_layers(model)[:2]:
        t = projection(model, x[: args.probe], name, args.repeats)
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"\nDeconvnet projection of all {layer.out_channels} kernels of {name}, {args.probe} images:")
        print(f"  ours {med['ours']:.4f} s | loop of one backward per kernel {med['loop']:.4f} s | "
              f"Captum NeuronDeconvolution per kernel {med['captum_loop']:.4f} s")
        print(f"  speed-up vs backward loop: {describe(t, 'loop', 10.0)}; "
              f"vs Captum loop: {paired(t, 'captum_loop')[0]:.1f}x")
        if "conv2d_fallback" in t:
            print("  closed form with oneDNN's prepacked conv + fused ReLU vs with F.conv2d + clamp: "
                  "{:.2f}x (range {:.2f}-{:.2f})".format(*paired(t, "conv2d_fallback")))


if __name__ == "__main__":
    main()
