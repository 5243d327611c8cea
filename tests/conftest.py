"""Shared fixtures. Tests run on CPU, offline, one torch thread per pytest worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tiny_p1():
    """A small paper-1 CNN (8/16 kernels) on 1×28×28 inputs, 10 classes, fixed init."""
    from cnnvis.config import ModelConfig
    from cnnvis.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(widths=(8, 16), kernel_sizes=(3, 3), hidden=32)
    return build_model(cfg, in_channels=1, num_classes=10, image_size=28).eval()


@pytest.fixture
def synthetic_data():
    from cnnvis.data import RawDataset, make_synthetic, prepare

    train, test, classes = make_synthetic(28, 600, 200, seed=0)
    return prepare(RawDataset("synthetic", train, test, classes, "synthetic"), val_size=100, seed=0)
