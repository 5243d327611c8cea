"""The model registry: networks chosen by name from ``ModelConfig.name``.

Every network uses non-inplace ``nn.ReLU`` modules, one module per use, so that
hook-based attribution rules (deconvnet, guided backprop) see every ReLU.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from cnnvis import CheckpointError, ConfigError
from cnnvis.config import ModelConfig, parse
from cnnvis.io import read_checkpoint

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- paper 1's CNN


class P1CNN(nn.Module):
    """Paper 1's network: [conv → (BN) → ReLU → 2×2 max-pool] per width, then FC
    (``head="gap"``: global average pooling of the last block's output, then one linear layer).

    Input N×C×S×S → logits N×num_classes. Conv layers are ``features.conv{i}``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, cfg: ModelConfig):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, size = in_channels, image_size
        for i, (width, k) in enumerate(zip(cfg.widths, cfg.kernel_sizes, strict=True), start=1):
            layers[f"conv{i}"] = nn.Conv2d(channels, width, k, padding=k // 2)  # 'same' for odd k
            if cfg.batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm2d(width)
            layers[f"relu{i}"] = nn.ReLU()
            if size >= 2:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                size //= 2
            channels = width
        self.features = nn.Sequential(layers)
        if cfg.head == "gap":  # CAM's head (Zhou et al. 2016): ∂y^c/∂features = w_ck / (h·w) at every position
            self.classifier = nn.Sequential(OrderedDict(gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                                        fc=nn.Linear(channels, num_classes)))
            return
        head: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        flat = channels * size * size
        if cfg.hidden > 0:
            head["fc1"] = nn.Linear(flat, cfg.hidden)
            head["relu_fc"] = nn.ReLU()
            if cfg.dropout > 0:
                head["dropout"] = nn.Dropout(cfg.dropout)
            flat = cfg.hidden
        head["fc"] = nn.Linear(flat, num_classes)
        self.classifier = nn.Sequential(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """torchvision's BasicBlock with one ReLU module per use (same parameter names)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's parameter names (ImageNet weights load as-is),
    a width multiplier (torchvision has none) and a small-input stem option.

    ``forward_features`` stops before avgpool/fc (the encoder of paper 4).
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: ModelConfig, *, small_input_stem: bool | None = None):
        super().__init__()
        small = cfg.small_input_stem if small_input_stem is None else small_input_stem
        w = [max(1, round(c * cfg.width_multiplier)) for c in (64, 128, 256, 512)]
        if small:
            self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, w[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU()
        planes = w[0]
        for i, (width, stride) in enumerate(zip(w, (1, 2, 2, 2), strict=True), start=1):
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(planes, width, stride), BasicBlock(width, width, 1)))
            planes = width
        self.out_channels = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block (torchvision's zero_init_residual)
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def load_imagenet_weights(model: nn.Module, *, skip_prefixes: tuple[str, ...] = ("fc.",)) -> None:
    """Load torchvision's ResNet-18 ImageNet weights into a width-1 ``ResNet18`` (or its trunk).

    Keys starting with ``skip_prefixes`` and keys whose shape differs (an
    input-channel or stem change) are left at their initialization, and logged.
    """
    from torchvision.models import ResNet18_Weights

    try:
        state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as e:
        raise CheckpointError(
            f"resnet18 ImageNet weights unavailable ({type(e).__name__}); offline: copy resnet18-f37072fd.pth into "
            f"$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints) or set model.pretrained=false"
        ) from None
    own = model.state_dict()
    take, skipped = {}, []
    for k, v in state.items():
        if k.startswith(skip_prefixes) or k not in own or own[k].shape != v.shape:
            skipped.append(k)
        else:
            take[k] = v
    if not take:
        raise ConfigError("model.pretrained = true: no ImageNet weight fits this model (width_multiplier must be 1.0)")
    model.load_state_dict(take, strict=False)
    log.info("loaded %d ImageNet tensors; kept init for %d: %s", len(take), len(skipped), ", ".join(skipped[:6]))


# --------------------------------------------------------------------------- registry

Builder = Callable[[ModelConfig, int, int, int], nn.Module]


def _p1_cnn(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return P1CNN(in_channels, num_classes, image_size, cfg)


def _resnet18(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    model = ResNet18(in_channels, num_classes, cfg)
    if cfg.pretrained:
        load_imagenet_weights(model)
    return model


MODELS: dict[str, Builder] = {"p1_cnn": _p1_cnn, "resnet18": _resnet18}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to the registry (the encoder-decoder registers itself)."""

    def deco(fn: Builder) -> Builder:
        MODELS[name] = fn
        return fn

    return deco


def build_model(cfg: ModelConfig, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The architecture ``cfg.name`` from the registry (``cnnvis.encdec`` adds "encdec" when imported)."""
    try:
        builder = MODELS[cfg.name]
    except KeyError:
        hint = "; import cnnvis.encdec first" if cfg.name == "encdec" else ""
        raise ConfigError(f"model.name = {cfg.name!r}: unknown; allowed: {', '.join(sorted(MODELS))}{hint}") from None
    return builder(cfg, in_channels, num_classes, image_size)


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model from the file alone; returns (model in eval mode, checkpoint dict)."""
    state = read_checkpoint(path)
    cfg = parse(ModelConfig, {**state["model"], "pretrained": False}, "checkpoint.model")
    spec = state["spec"]
    model = build_model(cfg, in_channels=spec["in_channels"], num_classes=spec["num_classes"], image_size=spec["image_size"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its own config ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, state


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of ``model`` in definition order, with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_parameters_of(cfg: ModelConfig, spec: dict) -> int:
    """Parameters of the model ``cfg`` builds for a dataset ``spec`` (in_channels, num_classes, image_size)."""
    return count_parameters(build_model(cfg, in_channels=spec["in_channels"], num_classes=spec["num_classes"],
                                        image_size=spec["image_size"]))
