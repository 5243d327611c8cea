"""``cnnvis explain``: attribution maps of a model on a directory of images, as data and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cnnvis.cli import _figures, _inputs
from cnnvis.cli._inputs import UsageError
from cnnvis.io import atomic_path

MARKER = "maps.npz"

# What each registry method computes, and the reference it equals in tests/test_attribution.py.
SUMMARY = {
    "saliency": "|∂y_c/∂x|, the magnitude of the input gradient (Simonyan et al. 2014)",
    "deconvnet": "the class score projected to the input with the deconvnet ReLU rule (Zeiler & Fergus 2014)",
    "guided_backprop": "the input gradient with the guided ReLU rule (Springenberg et al. 2015)",
    "gradcam": "ReLU(Σ_k α_k A^k) of --layer, upsampled bilinearly to the image (Selvaraju et al. 2017)",
    "guided_gradcam": "guided backprop × Grad-CAM of --layer (Selvaraju et al. 2017)",
}
EQUALS = {
    "saliency": "captum.attr.Saliency(model).attribute(x, target)",
    "deconvnet": "captum.attr.Deconvolution(model).attribute(x, target)",
    "guided_backprop": "captum.attr.GuidedBackprop(model).attribute(x, target)",
    "gradcam": "captum.attr.LayerGradCam(model, layer).attribute(x, target) upsampled by "
               "LayerAttribution.interpolate(..., interpolate_mode='bilinear'); pytorch_grad_cam.GradCAM after its "
               "per-image min-max normalization",
    "guided_gradcam": "captum.attr.GuidedGradCam(model, layer).attribute(x, target, interpolate_mode='bilinear')",
}


def methods() -> dict[str, type]:
    """The package's registry (``cnnvis.attribution.METHODS``), keyed by the command-line spelling (dashes)."""
    from cnnvis.attribution import METHODS

    return {name.replace("_", "-"): cls for name, cls in METHODS.items()}


def takes_layer(cls: type) -> bool:
    from cnnvis.attribution import InputGradient

    return not issubclass(cls, InputGradient)


def _describe(name: str, cls: type) -> str:
    key = name.replace("-", "_")
    doc = (cls.__doc__ or "").strip().splitlines()
    summary = SUMMARY.get(key, doc[0] if doc else cls.__name__)
    equals = EQUALS.get(key, "not compared with a reference implementation in the tests")
    layer = "needs a layer" if takes_layer(cls) else "no layer"
    return f"  {name:<15} {summary}; {layer}.\n  {'':<15} equals: {equals}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    registry = methods()
    epilog = "\n".join([
        "methods (--method):", *(_describe(n, c) for n, c in registry.items()), "",
        "conventions: Grad-CAM maps are rectified (ReLU on) and bilinearly upsampled to the image; maps are saved",
        "raw (no normalization), figures min-max scale them for display; the model runs in eval mode. ReLUs:",
        "nn.ReLU modules (in-place ones too) and functional F.relu / torch.relu / Tensor.relu all get the",
        "deconvnet or guided rule.",
        "",
        "output (--out DIR): maps.npz with maps [N, C, H, W] float32, files, targets, predicted,",
        "target_probability and metadata (a JSON string: method, layer, target rule, model, sha256 of the",
        "weights, conventions, versions); figures/<image>.png: image, map, overlay.",
        "",
        "examples:",
        "  cnnvis explain --model torchvision:resnet18 --weights resnet18.pt --images photos/ \\",
        "      --method guided-gradcam --layer layer4 --out explained/",
        "  cnnvis explain --model data/models/fashion_mnist/seeds/0/baseline.pt --images digits/ --method saliency --out sal/",
    ])
    p = sub.add_parser("explain", help="attribution maps (Grad-CAM, guided backprop, …) of a model on images",
                       description="Explain a classifier's decisions on a directory of images: one attribution map "
                                   "per image, saved as data (maps.npz) and as a figure per image.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--method", required=True, choices=sorted(registry), metavar="METHOD",
                   help=f"attribution method: {', '.join(sorted(registry))} (details below)")
    p.add_argument("--layer", metavar="NAME",
                   help="module whose feature maps Grad-CAM-type methods use, as in model.named_modules() "
                        "(e.g. layer4 or layer4.1.conv2 for a ResNet); default: the last nn.Conv2d. "
                        "Methods that attribute to the input take none")
    p.add_argument("--target", type=_inputs.parse_target, default=None, metavar="N|predicted",
                   help="class to explain: a class index, or 'predicted' (default) for each image's top class")
    add_out_args(p)
    p.set_defaults(run=run)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="torchvision:NAME (a torchvision classifier, e.g. torchvision:resnet18, built without "
                        "downloading; needs --weights) or the path of a cnnvis checkpoint (rebuilt from the file alone)")
    p.add_argument("--weights", type=Path, metavar="FILE",
                   help="state_dict of the torchvision model, as written by torch.save(model.state_dict(), FILE); "
                        "the number of classes is read from it")
    p.add_argument("--images", required=True, type=Path, metavar="DIR",
                   help="directory of PNG/JPEG images (not recursive), read in file-name order")
    p.add_argument("--image-size", type=_inputs.positive_int, metavar="PX",
                   help="side length the images are resized to (aspect ratio not kept; default: 224 for torchvision "
                        "models, the training size for a checkpoint). Normalization: ImageNet mean/std for "
                        "torchvision models, the checkpoint's own for a checkpoint")
    p.add_argument("--batch-size", type=_inputs.positive_int, default=16, metavar="N",
                   help="images per forward/backward pass (default 16; memory grows with it, results do not change)")


def add_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output directory (created; written completely or not at all)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds an earlier output of this command")


def run(args: argparse.Namespace) -> str:
    registry = methods()
    cls = registry[args.method]
    if not takes_layer(cls) and args.layer is not None:
        raise UsageError(f"--layer: {args.method} attributes to the input and takes no layer; drop --layer")
    _inputs.check_out(args.out, MARKER, args.overwrite)
    model = _inputs.load_model(args.model, args.weights)
    size = args.image_size or model.image_size
    images = _inputs.read_images(args.images, model, size)
    layer = _inputs.find_layer(model, args.layer) if args.layer is not None else None
    if takes_layer(cls) and layer is None:
        from cnnvis.attribution._common import last_conv

        try:
            layer = last_conv(model.module)
        except ValueError:
            raise UsageError(f"--layer: {model.name} has no nn.Conv2d to default to; name a layer") from None
    layer_name = None if layer is None else _inputs.module_name(model.module, layer)
    num_classes = _inputs.probe(model, images.x, layer, layer_name)
    _inputs.check_target(args.target, num_classes)
    method = cls(model.module, layer) if takes_layer(cls) else cls(model.module)

    n = len(images.files)
    maps, targets, predicted, prob = [], [], [], []
    starts = range(0, n, args.batch_size)
    for s in _inputs.progress(starts, total=len(starts), desc="explain", unit="batch"):
        xb = images.x[s : s + args.batch_size]
        logits, pred = _inputs.predict(model.module, xb)
        tb = pred if args.target is None else torch.full_like(pred, args.target)
        try:
            maps.append(method.attribute(xb, tb, batch_size=None).detach())
        except ValueError as e:
            raise UsageError(f"{args.method}: {e}") from None
        targets.append(tb)
        predicted.append(pred)
        prob.append(logits.softmax(1).gather(1, tb[:, None])[:, 0])
    maps_a = torch.cat(maps).numpy().astype(np.float32)
    targets_a, predicted_a = torch.cat(targets).numpy(), torch.cat(predicted).numpy()
    prob_a = torch.cat(prob).numpy().astype(np.float32)

    key = args.method.replace("-", "_")
    meta = {
        "command": "explain", "method": key, "layer": layer_name,
        "target": "predicted" if args.target is None else int(args.target),
        "model": model.name, "weights": str(model.weights), "weights_sha256": model.sha256,
        "num_classes": num_classes, "classes": list(model.classes) if model.classes else None,
        "image_size": size, "resize": "PIL bilinear to image_size × image_size (aspect ratio not kept)",
        "input_normalization": {"mean": list(model.mean), "std": list(model.std)},
        "conventions": conventions(key, method), "equals": EQUALS.get(key),
        "maps_shape": list(maps_a.shape), "versions": _inputs.versions(),
    }
    with atomic_path(args.out, directory=True) as tmp:
        np.savez(tmp / MARKER, maps=maps_a, files=np.array(images.files), targets=targets_a, predicted=predicted_a,
                 target_probability=prob_a, metadata=_inputs.metadata_array(meta))
        figures = tmp / "figures"
        figures.mkdir()
        for i in _inputs.progress(range(n), total=n, desc="figures", unit="fig"):
            title = (f"{images.files[i]} — {key}{f' @ {layer_name}' if layer_name else ''} — target "
                     f"{_class(model, targets_a[i])} (p = {prob_a[i]:.2f}), predicted {_class(model, predicted_a[i])}")
            fig = _figures.explanation(images.display[i], maps_a[i], title)
            fig.savefig(figures / f"{figure_stem(images.files[i])}.png", dpi=100)
    return f"{n} maps of {key} in {args.out / MARKER}, {n} figures in {args.out / 'figures'}"


def figure_stem(file_name: str) -> str:
    """cat.jpg → cat_jpg (unique per file name in a directory)."""
    p = Path(file_name)
    return p.stem + p.suffix.replace(".", "_")


def _class(model: _inputs.LoadedModel, c: int) -> str:
    c = int(c)
    return f"{c} ({model.classes[c]})" if model.classes and c < len(model.classes) else str(c)


def conventions(key: str, method: object) -> dict:
    """How the maps were made, read off the method object (so a changed default shows up here)."""
    out: dict = {"maps": "raw values, not normalized (figures min-max scale for display only)", "model_mode": "eval"}
    cam = getattr(method, "gradcam", method)
    if hasattr(cam, "interpolate"):
        out["cam_relu"] = bool(getattr(cam, "relu", True))
        out["upsampling"] = cam.interpolate
    if hasattr(method, "rule"):
        out["relu_backward_rule"] = method.rule or "plain gradient"
    if key == "guided_gradcam":
        out["relu_backward_rule"] = "guided (for the input gradient); plain (for Grad-CAM's ∂y/∂A)"
    if key == "saliency":
        out["absolute_value"] = True
    return out
