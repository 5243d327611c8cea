"""What the subcommands read: a model (torchvision or cnnvis checkpoint), a directory of images, a layer, targets."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnvis import CnnvisError

TORCHVISION = "torchvision:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalization (RGB, on [0, 1] pixels)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_SIZE = 224  # px, the ImageNet evaluation size of torchvision's classifiers
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class UsageError(CnnvisError):
    """Bad input from the command line; ``main`` prints it as one line and exits with 2."""


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module  # in eval mode
    name: str  # as given to --model
    weights: Path  # the file the weights came from (a checkpoint holds its own)
    sha256: str
    in_channels: int
    image_size: int  # px, the default side length of the inputs
    mean: tuple[float, ...]  # input normalization, per channel
    std: tuple[float, ...]
    classes: tuple[str, ...] | None  # class names when the file has them


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(spec: str, weights: Path | None) -> LoadedModel:
    """``torchvision:NAME`` with ``--weights FILE`` (a state_dict), or the path of a cnnvis checkpoint."""
    if spec.startswith(TORCHVISION):
        if weights is None:
            raise UsageError(f"--model {spec} needs --weights FILE (a state_dict saved with "
                             "torch.save(model.state_dict(), FILE)); models are never downloaded")
        return _torchvision_model(spec, spec[len(TORCHVISION):], weights)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--model {spec}: neither torchvision:NAME (e.g. torchvision:resnet18) nor an existing "
                         "cnnvis checkpoint file")
    if weights is not None:
        raise UsageError(f"--weights: {spec} is a cnnvis checkpoint and carries its own weights; drop --weights")
    return _checkpoint_model(path)


def _torchvision_model(spec: str, name: str, weights: Path) -> LoadedModel:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)  # image classifiers only
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"did you mean {', '.join(TORCHVISION + c for c in close)}?" if close else \
            "see torchvision.models.list_models(module=torchvision.models)"
        raise UsageError(f"--model {spec}: unknown torchvision classification model; {hint}")
    state = read_state_dict(weights)
    model = torchvision.models.get_model(name, weights=None)
    classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    key = f"{classifier[-1]}.weight" if classifier else None
    if key is not None and key in state and state[key].ndim == 2 and state[key].shape[0] != model.state_dict()[key].shape[0]:
        model = torchvision.models.get_model(name, weights=None, num_classes=int(state[key].shape[0]))  # a fine-tuned head
    fit_state_dict(model, state, f"--weights {weights}", spec)
    return LoadedModel(model.eval(), spec, weights, sha256(weights), 3, TORCHVISION_SIZE, IMAGENET_MEAN, IMAGENET_STD, None)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``torch.load`` (tensors only: no code runs); ``{"state_dict": ...}`` is unwrapped."""
    how = f"save one with torch.save(model.state_dict(), {str(path)!r})"
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file; {how}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, a file of another kind
        raise UsageError(f"--weights {path}: not a readable PyTorch weights file ({type(e).__name__}); {how}") from None
    if isinstance(obj, dict) and "format" in obj and "state_dict" in obj and "spec" in obj:
        raise UsageError(f"--weights {path}: this is a cnnvis checkpoint; pass it as --model {path} without --weights")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise UsageError(f"--weights {path}: holds a {type(obj).__name__}, not a state_dict of tensors; {how}")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str, spec: str) -> None:
    """``model.load_state_dict(state)``, with a mismatch reported in one line (which keys, which shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape file vs model", shapes)) if keys]
    if problems:
        raise UsageError(f"{what}: does not fit {spec} ({'; '.join(problems)}); were these weights saved from that model?")
    model.load_state_dict(state)


def _checkpoint_model(path: Path) -> LoadedModel:
    import cnnvis.encdec  # noqa: F401 - registers the encoder-decoder, so its checkpoints load too
    from cnnvis.models import load_checkpoint

    try:
        model, state = load_checkpoint(path)
    except CnnvisError as e:
        hint = "; for a plain state_dict use --model torchvision:NAME --weights FILE" if "not a cnnvis checkpoint" in str(e) else ""
        raise UsageError(f"--model {e}{hint}") from None
    spec = state["spec"]
    classes = tuple(str(c) for c in spec["classes"]) if spec.get("classes") else None
    return LoadedModel(model.eval(), str(path), path, sha256(path), int(spec["in_channels"]), int(spec["image_size"]),
                       tuple(float(v) for v in spec["mean"]), tuple(float(v) for v in spec["std"]), classes)


def find_layer(model: LoadedModel, name: str, flag: str = "--layer") -> nn.Module:
    modules = dict(model.module.named_modules())
    modules.pop("", None)
    if name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.7)
    hint = f"did you mean {', '.join(close)}?" if close else \
        f"its top-level modules are {', '.join(n for n in modules if '.' not in n)}"
    raise UsageError(f"{flag} {name}: {model.name} has no module of that name (names as in model.named_modules()); {hint}")


def module_name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Images:
    files: tuple[str, ...]  # file names, sorted
    x: torch.Tensor  # float32 [N, C, S, S], normalized for the model
    display: np.ndarray  # float32 [N, C, S, S] in [0, 1], the resized pixels


def image_files(directory: Path, flag: str = "--images") -> list[Path]:
    if not directory.is_dir():
        raise UsageError(f"{flag} {directory}: no such directory; give a directory of PNG or JPEG images")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{flag} {directory}: no PNG or JPEG images in it (*.png, *.jpg, *.jpeg; subdirectories are not read)")
    return files


def read_image(path: Path, mode: str | None = None, size: int | None = None) -> np.ndarray:
    """uint8 [C, H, W]: ``mode`` "RGB" or "L" (None: RGB), resized to size × size with PIL's bilinear filter."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode or "RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UsageError(f"--images: {path} is not a readable PNG/JPEG image ({type(e).__name__}); remove or replace it") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_images(directory: Path, model: LoadedModel, size: int) -> Images:
    """Every PNG/JPEG of ``directory`` resized to size × size (aspect ratio not kept), normalized with the model's statistics."""
    from cnnvis.data import normalize

    if model.in_channels not in (1, 3):
        raise UsageError(f"--model {model.name}: takes {model.in_channels}-channel inputs; only 1 (grayscale) or 3 (RGB) can be read from images")
    mode = "L" if model.in_channels == 1 else "RGB"
    files = image_files(directory)
    u8 = torch.from_numpy(np.stack([read_image(p, mode, size) for p in files]))
    x = normalize(u8, model.mean, model.std)
    return Images(tuple(p.name for p in files), x, u8.numpy().astype(np.float32) / 255.0)


# --------------------------------------------------------------------------- targets, probing, progress


def parse_target(value: str) -> int | None:
    """``predicted`` → None, else a class index ≥ 0 (argparse type)."""
    if value == "predicted":
        return None
    try:
        t = int(value)
    except ValueError:
        t = -1
    if t < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a class index (0, 1, …) or 'predicted'")
    return t


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer")
    return n


def probe(model: LoadedModel, x: torch.Tensor, layer: nn.Module | None = None, layer_name: str | None = None) -> int:
    """One forward pass on one image: the model runs at this size and gives [1, classes] logits; ``layer`` (if
    given) is reached and outputs N×K×h×w maps. Returns the number of classes."""
    from cnnvis.hooks import capture, model_state_guard

    with model_state_guard(model.module, eval_mode=True), torch.no_grad(), \
            (capture(layer) if layer is not None else contextlib.nullcontext()) as box:
        try:
            logits = model.module(x[:1])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = f"; try --image-size {model.image_size}" if x.shape[-1] != model.image_size else ""
            raise UsageError(f"{model.name} cannot run on {x.shape[1]}×{x.shape[2]}×{x.shape[3]} images ({first}){hint}") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UsageError(f"--model {model.name}: its output is {shape}, not [N, classes] logits")
    if box is not None:
        out = box.output
        if out is None:
            raise UsageError(f"--layer {layer_name}: the model's forward pass never calls it; pick a module it uses")
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(f"--layer {layer_name}: outputs {shape}, not N×K×h×w feature maps; pick a conv layer or block")
    return int(logits.shape[1])


def check_target(target: int | None, num_classes: int) -> None:
    if target is not None and target >= num_classes:
        raise UsageError(f"--target {target}: the model has {num_classes} classes (0 … {num_classes - 1})")


def progress(iterable: Iterable, *, total: int, desc: str, unit: str) -> Iterator:
    """A tqdm bar on stderr when stderr is a terminal; the bare iterable otherwise."""
    from tqdm import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                     disable=not sys.stderr.isatty()))


def predict(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, classes], predicted classes [N]) without a graph; the model's mode is restored."""
    from cnnvis.hooks import model_state_guard

    with model_state_guard(model, eval_mode=True), torch.no_grad():
        logits = model(x)
    return logits, logits.argmax(1)


# --------------------------------------------------------------------------- outputs


def check_out(out: Path, marker: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that would clobber something that is not this command's own earlier output."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory; choose a new directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UsageError(f"--out {out}: exists and is not empty; choose a new directory or pass --overwrite")
    if not (out / marker).is_file():
        raise UsageError(f"--out {out}: holds files but no {marker}, so it is not an earlier output of this command; "
                         "refusing to replace it")


def metadata_array(meta: dict) -> np.ndarray:
    """A JSON document as a 0-d unicode array (readable with ``np.load(allow_pickle=False)``)."""
    import json

    return np.array(json.dumps(meta, indent=1, sort_keys=True))


def versions() -> dict[str, str]:
    import torchvision

    import cnnvis

    return {"cnnvis": cnnvis.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__}
