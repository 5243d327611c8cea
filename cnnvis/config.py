"""Typed, validated configuration: one frozen dataclass per params.yaml section.

``parse(Schema, mapping, "section")`` turns a plain mapping (a section of
params.yaml) into a frozen dataclass, or raises one ``ConfigError`` whose
message names the key, the value and what is allowed. Constraints live in the
field metadata (``ge``, ``gt``, ``le``, ``lt``, ``choices``) so the schema is
the single statement of what a value may be.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from cnnvis import ConfigError

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "tiny_imagenet", "digits", "synthetic")
MODELS = ("p1_cnn", "resnet18", "encdec")


def opt(default: Any = dataclasses.MISSING, **constraints: Any) -> Any:
    """A dataclass field with validation constraints in its metadata."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=constraints)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} = {value!r}: expected null")
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return parse(tp, value, key)
    else:  # pragma: no cover - schema author error
        raise TypeError(f"unsupported schema type {tp!r} for {key}")
    raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")


def _check_constraints(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if v is None:
            continue
        if "choices" in meta and v not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ConfigError(f"{key} = {v!r}: unknown; allowed: {allowed}")
        for name, test, word in (
            ("ge", lambda a, b: a >= b, ">="),
            ("gt", lambda a, b: a > b, ">"),
            ("le", lambda a, b: a <= b, "<="),
            ("lt", lambda a, b: a < b, "<"),
        ):
            if name in meta and isinstance(v, (int, float)) and not test(v, meta[name]):
                raise ConfigError(f"{key} = {v!r}: must be {word} {meta[name]}")
    if "min_length" in meta and isinstance(value, tuple) and len(value) < meta["min_length"]:
        raise ConfigError(f"{key} = {list(value)!r}: must have at least {meta['min_length']} entries")


def parse(schema: type, data: Any, section: str) -> Any:
    """Validate ``data`` (a mapping) against dataclass ``schema``.

    Raises ``ConfigError`` on the first unknown key, missing key, wrong type or
    out-of-range value, naming ``section.key``.
    """
    if data is None:
        data = {}
    if not isinstance(data, typing.Mapping):
        raise ConfigError(f"{section} = {data!r}: expected a mapping of keys")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"{section}.{unknown[0]}: unknown key; allowed keys: {allowed}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{section}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing required key")
            continue
        value = _coerce(data[name], hints[name], key)
        _check_constraints(value, f.metadata, key)
        kwargs[name] = value
    obj = schema(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(section)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (tuples as lists), for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


# --------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset of the multi-select ``dataset`` group."""

    name: str = opt(choices=DATASETS)
    source_dir: str | None = opt(None)  # tried first: files in the dataset's native format
    system_dir: str | None = opt(None)  # a system copy (Debian's dataset-fashion-mnist)
    verify: bool = opt(True)  # check md5 of the native files against the published values
    download: bool = opt(True)  # allow torchvision / official-archive download as last resort
    synthetic_size: int = opt(28, ge=8)  # synthetic only: image side in px
    synthetic_train: int = opt(512, ge=10)
    synthetic_test: int = opt(256, ge=10)


@dataclass(frozen=True)
class ModelConfig:
    name: str = opt("p1_cnn", choices=MODELS)
    widths: tuple[int, ...] = opt((32, 64), ge=1, min_length=1)  # p1_cnn: kernels per conv layer
    kernel_sizes: tuple[int, ...] = opt((3, 3), ge=1, min_length=1)
    batchnorm: bool = opt(False)
    hidden: int = opt(128, ge=0)  # p1_cnn: FC hidden units before the classifier (0 = none)
    head: str = opt("fc", choices=("fc", "gap"))  # p1_cnn: fc = flatten → FC layers; gap = global avg pool → linear
    dropout: float = opt(0.0, ge=0.0, lt=1.0)
    pretrained: bool = opt(False)  # resnet18/encdec: ImageNet weights (needs internet or cache)
    small_input_stem: bool = opt(True)  # resnet18: 3x3 stride-1 stem, no max-pool, for 28-32 px
    width_multiplier: float = opt(1.0, gt=0.0, le=4.0)  # resnet18/encdec trunk width

    def check(self, section: str) -> None:
        if self.name == "p1_cnn" and len(self.widths) != len(self.kernel_sizes):
            raise ConfigError(
                f"{section}.kernel_sizes = {list(self.kernel_sizes)}: needs one entry per width "
                f"({len(self.widths)} widths)"
            )
        if self.name == "p1_cnn" and self.head == "gap" and self.hidden > 0:
            raise ConfigError(f"{section}.hidden = {self.hidden}: head gap is one linear layer after the pooling; "
                              "set hidden: 0")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = opt(4, ge=1)
    batch_size: int = opt(128, ge=1)
    eval_batch_size: int = opt(1000, ge=1)
    optimizer: str = opt("sgd", choices=("sgd", "adamw"))
    lr: float = opt(0.05, gt=0.0)
    momentum: float = opt(0.9, ge=0.0, lt=1.0)
    nesterov: bool = opt(True)
    weight_decay: float = opt(5e-4, ge=0.0)
    schedule: str = opt("onecycle", choices=("onecycle", "cosine", "constant"))
    warmup_fraction: float = opt(0.2, ge=0.0, lt=1.0)  # onecycle: share of steps rising
    label_smoothing: float = opt(0.0, ge=0.0, lt=1.0)
    augment: str = opt("crop", choices=("none", "crop", "flip", "flip_crop"))
    crop_padding: int = opt(2, ge=0)
    val_size: int = opt(5000, ge=0)  # held out of the training split for validation
    max_train_images: int | None = opt(None, ge=1)  # cap (experiment=ci)
    max_test_images: int | None = opt(None, ge=1)
    seed: int = opt(0, ge=0)


@dataclass(frozen=True)
class HardwareConfig:
    """Execution settings. Read by stages but never part of a cmd: switching
    hardware does not invalidate results."""

    device: str = opt("cpu", choices=("cpu", "cuda", "auto"))
    threads: int = opt(0, ge=0)  # torch intra-op threads; 0 = all cores
    amp: bool = opt(False)  # bfloat16/float16 autocast (CUDA only)
    channels_last: bool = opt(False)
    cudnn_benchmark: bool = opt(False)
    compile: bool = opt(False)  # torch.compile the model for training
    progress: str = opt("auto", choices=("auto", "bar", "lines", "none"))
