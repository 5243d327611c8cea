"""Shared fixtures. Tests run on CPU, offline, one torch thread per pytest worker."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


def rebind_dvc_log_streams() -> None:
    """Point DVC's console log handlers at the current ``sys.stdout``/``sys.stderr``.

    ``import dvc`` installs them once per process, on the streams of that moment: when the first import happens
    inside a test that captures output, they keep that test's capture, which pytest closes afterwards, and the next
    test of the same worker that makes DVC log (``Repo.init``) fails with "I/O operation on closed file"."""
    if "dvc" not in sys.modules:
        return
    for handler in logging.getLogger("dvc").handlers:
        if isinstance(handler, logging.StreamHandler):
            # assigned, not setStream(): that flushes the old stream, which may be the closed one
            handler.stream = sys.stderr if handler.level >= logging.WARNING else sys.stdout


@pytest.fixture(autouse=True)
def _dvc_logs_to_this_tests_streams():
    rebind_dvc_log_streams()


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
