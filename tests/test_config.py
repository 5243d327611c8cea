"""Config validation: every bad value stops with one line naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from cnnvis import ConfigError
from cnnvis.config import DatasetConfig, HardwareConfig, ModelConfig, TrainConfig, parse, to_dict


def test_defaults_round_trip():
    cfg = parse(TrainConfig, {}, "train")
    assert parse(TrainConfig, to_dict(cfg), "train") == cfg


@pytest.mark.parametrize(
    ("schema", "section", "data", "message"),
    [
        (TrainConfig, "train", {"epochs": 0}, "train.epochs = 0: must be >= 1"),
        (TrainConfig, "train", {"lr": 0.0}, "train.lr = 0.0: must be > 0.0"),
        (TrainConfig, "train", {"lr": -1}, "train.lr = -1.0: must be > 0.0"),
        (TrainConfig, "train", {"epochs": "ten"}, "train.epochs = 'ten': expected int"),
        (TrainConfig, "train", {"epochs": True}, "train.epochs = True: expected int"),
        (TrainConfig, "train", {"epohcs": 3}, "train.epohcs: unknown key; allowed keys:"),
        (TrainConfig, "train", {"optimizer": "lbfgs"}, "train.optimizer = 'lbfgs': unknown; allowed: sgd, adamw"),
        (ModelConfig, "model", {"widths": [32, 0]}, "model.widths = 0: must be >= 1"),
        (ModelConfig, "model", {"name": "vgg"}, "model.name = 'vgg': unknown; allowed: p1_cnn, resnet18, encdec"),
        (ModelConfig, "model", {"widths": [8, 8, 8]}, "model.kernel_sizes = [3, 3]: needs one entry per width (3 widths)"),
        (ModelConfig, "model", {"widths": 32}, "model.widths = 32: expected list of int"),
        (DatasetConfig, "dataset.foo", {"name": "imagenet21k"}, "dataset.foo.name = 'imagenet21k': unknown; allowed: fashion_mnist"),
        (DatasetConfig, "dataset.x", {}, "dataset.x.name: missing required key"),
        (HardwareConfig, "hardware", {"device": "tpu"}, "hardware.device = 'tpu': unknown; allowed: cpu, cuda, auto"),
        (TrainConfig, "train", ["epochs"], "train = ['epochs']: expected a mapping"),
    ],
)
def test_bad_values_name_key_value_and_allowed(schema, section, data, message):
    with pytest.raises(ConfigError) as err:
        parse(schema, data, section)
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_int_accepted_for_float_and_tuple_normalized():
    cfg = parse(TrainConfig, {"lr": 1}, "train")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    m = parse(ModelConfig, {"widths": [4, 8], "kernel_sizes": [3, 3]}, "model")
    assert m.widths == (4, 8)


def test_optional_none_and_int():
    assert parse(TrainConfig, {"max_train_images": None}, "train").max_train_images is None
    assert parse(TrainConfig, {"max_train_images": 10}, "train").max_train_images == 10
    with pytest.raises(ConfigError, match="max_train_images = 0: must be >= 1"):
        parse(TrainConfig, {"max_train_images": 0}, "train")
