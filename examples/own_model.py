"""Explain your own model with cnnvis: a torchvision ResNet-18, through the Python API and the ``cnnvis`` command.

    .venv/bin/python examples/own_model.py --out /tmp/cnnvis-example

1. builds ``torchvision.models.resnet18(weights=None, num_classes=10)`` and saves
   its weights with ``torch.save(model.state_dict(), ...)`` (use your trained ones);
2. writes a few PNG images;
3. Guided Grad-CAM at ``layer4`` through the Python API;
4. the same through the command line, ``cnnvis explain ...`` (run here in-process
   through ``cnnvis.cli.main``, which is what the console script calls), and checks
   that both give the same maps.

This is a script: it prints and writes files under ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw

from cnnvis.attribution import GuidedGradCAM
from cnnvis.cli import main as cnnvis_main

SIZE = 64  # px; small so the example takes seconds on a CPU (torchvision's ImageNet size is 224)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_images(directory: Path) -> list[Path]:
    """Three 80 × 80 RGB images: a square, a disc, a bar, on noise."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name, draw in (("square", lambda d: d.rectangle((20, 20, 60, 60), fill=(230, 40, 40))),
                       ("disc", lambda d: d.ellipse((15, 25, 55, 65), fill=(40, 200, 60))),
                       ("bar", lambda d: d.rectangle((10, 35, 70, 45), fill=(40, 60, 230)))):
        img = Image.fromarray(rng.integers(0, 90, (80, 80, 3), dtype=np.uint8))
        draw(ImageDraw.Draw(img))
        paths.append(directory / f"{name}.png")
        img.save(paths[-1])
    return paths


def load_images(paths: list[Path]) -> torch.Tensor:
    """What ``cnnvis explain`` does to torchvision inputs: RGB, bilinear resize to SIZE × SIZE, ImageNet normalization."""
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)) for p in paths]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def run(out: Path) -> float:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    weights = out / "resnet18.pt"
    torch.save(model.state_dict(), weights)
    paths = write_images(out / "images")

    # Python API: any nn.Module classifier; layer = a module of it
    x = load_images(sorted(paths))
    api = GuidedGradCAM(model, model.layer4).attribute(x)  # target None: each image's predicted class
    print(f"Python API: GuidedGradCAM(model, model.layer4).attribute(x) -> {tuple(api.shape)}")

    # command line: the same maps, as data (maps.npz) and one figure per image
    argv = ["explain", "--model", "torchvision:resnet18", "--weights", str(weights), "--images", str(out / "images"),
            "--method", "guided-gradcam", "--layer", "layer4", "--image-size", str(SIZE), "--out", str(out / "explained")]
    print("command line: cnnvis " + shlex.join(argv))
    if cnnvis_main(argv) != 0:
        raise SystemExit("cnnvis explain failed")
    with np.load(out / "explained" / "maps.npz") as z:
        cli = torch.from_numpy(z["maps"])
    diff = float((cli - api).abs().max())
    print(f"max |CLI - API| = {diff:.3g} (peak |map| {float(api.abs().max()):.3g})")
    if diff > 1e-5 * max(float(api.abs().max()), 1e-12):
        raise SystemExit("the command line and the Python API disagree")
    return diff


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="directory for the weights, images and outputs (default: a new temporary one)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="cnnvis-example-"))
    out.mkdir(parents=True, exist_ok=True)
    run(out)
    print(f"outputs in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
