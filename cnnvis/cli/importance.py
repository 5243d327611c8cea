"""``cnnvis importance``: gradient filter importance of a model's conv layers on a set of images."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from cnnvis.cli import _figures, _inputs
from cnnvis.cli._inputs import UsageError
from cnnvis.cli.explain import add_model_args, add_out_args
from cnnvis.io import atomic_path

MARKER = "importance.npz"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "importance", help="gradient importance of every conv filter on a set of images",
        description="For each image and each filter f of the chosen conv layers: the L2 norm of the gradient of the "
                    "target class score with respect to the filter's weights, ‖∂y_c/∂W_f‖₂ (W_f: the filter's "
                    "in_channels × kh × kw weights, bias excluded), computed per image in eval mode. A large value: "
                    "changing that filter changes the class score most.",
        epilog="\n".join([
            "output (--out DIR): importance.npz with layers (names), importance/<layer> [N, filters] float32 for",
            "every layer, files, targets, predicted and metadata (a JSON string: model, sha256 of the weights,",
            "target rule, versions); importance.png: per layer, each filter's mean ± std over the images.",
            "",
            "example:",
            "  cnnvis importance --model torchvision:resnet18 --weights resnet18.pt --images photos/ \\",
            "      --layers layer4.1.conv1,layer4.1.conv2 --out importance/",
        ]), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--layers", metavar="A,B,…",
                   help="comma-separated conv layers (names as in model.named_modules()); default: every nn.Conv2d")
    p.add_argument("--target", type=_inputs.parse_target, default=None, metavar="N|predicted",
                   help="class whose score is differentiated: a class index, or 'predicted' (default) per image")
    add_out_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> str:
    from cnnvis.importance import FilterImportance

    _inputs.check_out(args.out, MARKER, args.overwrite)
    model = _inputs.load_model(args.model, args.weights)
    size = args.image_size or model.image_size
    images = _inputs.read_images(args.images, model, size)
    layers = None
    if args.layers:
        layers = [name.strip() for name in args.layers.split(",") if name.strip()]
        for name in layers:
            if not isinstance(_inputs.find_layer(model, name, "--layers"), nn.Conv2d):
                raise UsageError(f"--layers {name}: not an nn.Conv2d; filter importance is defined for conv layers")
    elif not any(isinstance(m, nn.Conv2d) for m in model.module.modules()):
        raise UsageError(f"--model {model.name}: has no nn.Conv2d layer; filter importance needs conv layers")
    num_classes = _inputs.probe(model, images.x)
    _inputs.check_target(args.target, num_classes)
    fi = FilterImportance(model.module, layers)

    n = len(images.files)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in fi.layers}
    targets, predicted = [], []
    starts = range(0, n, args.batch_size)
    for s in _inputs.progress(starts, total=len(starts), desc="importance", unit="batch"):
        xb = images.x[s : s + args.batch_size]
        _, pred = _inputs.predict(model.module, xb)
        tb = pred if args.target is None else torch.full_like(pred, args.target)
        for name, v in fi.attribute(xb, tb).items():
            parts[name].append(v.detach())
        targets.append(tb)
        predicted.append(pred)
    imp = {name: torch.cat(v).numpy().astype(np.float32) for name, v in parts.items()}
    meta = {"command": "importance", "layers": list(fi.layers), "quantity": "L2 norm of d(target score)/d(filter weights)",
            "target": "predicted" if args.target is None else int(args.target), "model": model.name,
            "weights": str(model.weights), "weights_sha256": model.sha256, "num_classes": num_classes,
            "image_size": size, "input_normalization": {"mean": list(model.mean), "std": list(model.std)},
            "model_mode": "eval", "versions": _inputs.versions()}
    with atomic_path(args.out, directory=True) as tmp:
        np.savez(tmp / MARKER, layers=np.array(fi.layers), files=np.array(images.files),
                 targets=torch.cat(targets).numpy(), predicted=torch.cat(predicted).numpy(),
                 metadata=_inputs.metadata_array(meta), **{f"importance/{name}": v for name, v in imp.items()})
        fig = _figures.importance(list(fi.layers), [v.mean(0) for v in imp.values()], [v.std(0) for v in imp.values()],
                                  f"filter importance of {model.name} on {n} image(s)")
        fig.savefig(tmp / "importance.png", dpi=100)
    return f"importance of {sum(v.shape[1] for v in imp.values())} filters in {len(imp)} layer(s) on {n} image(s): {args.out / MARKER}"
