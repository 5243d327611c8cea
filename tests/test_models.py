"""Model registry: shapes, the one-ReLU-per-use rule, torchvision parity, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnvis import CheckpointError, ConfigError
from cnnvis.config import ModelConfig
from cnnvis.io import read_checkpoint, save_checkpoint
from cnnvis.models import ResNet18, build_model, conv_layers, count_parameters, load_checkpoint


def relu_calls(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    calls: dict[str, int] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize(
    ("cfg", "channels", "size"),
    [
        (ModelConfig(), 1, 28),
        (ModelConfig(widths=(32, 128), kernel_sizes=(5, 3), batchnorm=True, dropout=0.2), 3, 32),
        (ModelConfig(widths=(4, 8, 16), kernel_sizes=(3, 3, 3), hidden=0), 1, 8),
        (ModelConfig(name="resnet18", width_multiplier=0.125), 3, 32),
        (ModelConfig(name="resnet18", width_multiplier=0.125, small_input_stem=False), 3, 64),
        (ModelConfig(name="resnet18", width_multiplier=0.125), 1, 28),
    ],
)
def test_shapes_and_relus_used_once(cfg, channels, size):
    torch.manual_seed(0)
    model = build_model(cfg, in_channels=channels, num_classes=7, image_size=size).eval()
    x = torch.randn(2, channels, size, size)
    assert model(x).shape == (2, 7)
    calls = relu_calls(model, x)
    assert calls and set(calls.values()) == {1}, calls  # every ReLU module runs exactly once
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_p1_cnn_matches_paper_layout():
    model = build_model(ModelConfig(kernel_sizes=(5, 5)), in_channels=1, num_classes=10, image_size=28)
    convs = conv_layers(model)
    assert [n for n, _ in convs] == ["features.conv1", "features.conv2"]
    assert [m.out_channels for _, m in convs] == [32, 64]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2 and all(p.kernel_size == 2 for p in pools)


def test_resnet18_equals_torchvision():
    """Hand-written because torchvision's has no width multiplier and reuses one ReLU; same function."""
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=10).eval()
    ours = ResNet18(3, 10, ModelConfig(name="resnet18"), small_input_stem=False).eval()
    missing = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    assert count_parameters(ours) == count_parameters(ref)


def test_pretrained_offline_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision.models as tvm

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvm.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", no_network)
    with pytest.raises(CheckpointError, match="resnet18 ImageNet weights unavailable .*model.pretrained=false"):
        build_model(ModelConfig(name="resnet18", pretrained=True), in_channels=3, num_classes=10, image_size=32)


def test_pretrained_from_cache_file_offline(monkeypatch, tmp_path):
    """Offline with the weights file in the hub cache: the real loading path runs and every fitting tensor loads."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.manual_seed(1)
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), ckpt_dir / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    model = build_model(ModelConfig(name="resnet18", pretrained=True, small_input_stem=False),
                        in_channels=3, num_classes=10, image_size=64)
    torch.testing.assert_close(model.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    torch.testing.assert_close(model.conv1.weight, ref.conv1.weight)  # same stem shape: loaded too
    assert model.fc.out_features == 10  # the ImageNet classifier is not loaded


def test_unknown_model_name():
    cfg = ModelConfig.__new__(ModelConfig)
    object.__setattr__(cfg, "name", "vgg16")
    with pytest.raises(ConfigError, match="model.name = 'vgg16': unknown"):
        build_model(cfg, in_channels=1, num_classes=10, image_size=28)


def test_checkpoint_rebuilds_from_file_alone(tmp_path, tiny_p1):
    cfg = ModelConfig(widths=(8, 16), kernel_sizes=(3, 3), hidden=32)
    spec = {"in_channels": 1, "num_classes": 10, "image_size": 28, "mean": [0.5], "std": [0.25], "classes": list("abcdefghij")}
    save_checkpoint(tmp_path / "m.pt", tiny_p1, cfg, spec, note="x")
    model, state = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(model(x), tiny_p1(x))
    assert state["spec"]["classes"][0] == "a" and state["note"] == "x" and not model.training


def test_checkpoint_errors(tmp_path, tiny_p1):
    with pytest.raises(CheckpointError, match="checkpoint missing; run `dvc repro`"):
        read_checkpoint(tmp_path / "none.pt")
    cfg = ModelConfig(widths=(8, 16), kernel_sizes=(3, 3), hidden=32)
    spec = {"in_channels": 1, "num_classes": 10, "image_size": 28, "mean": [0.5], "std": [0.25], "classes": list("abcdefghij")}
    save_checkpoint(tmp_path / "m.pt", tiny_p1, cfg, spec)
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        read_checkpoint(tmp_path / "m.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cnnvis checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
