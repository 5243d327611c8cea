"""Stages as a user meets them: one clear line and exit 2 on bad input, no partial output."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from cnnvis import data as D

from conftest import ROOT
from test_data import write_idx_set


def params_file(tmp_path, **sections):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in sections.items():
        base[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def run(module: str, *args: str, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True)


def test_download_from_source_dir_writes_shards(tmp_path):
    write_idx_set(tmp_path / "src", n_train=30, n_test=10)
    params = params_file(tmp_path, dataset={"mnist": {"name": "mnist", "source_dir": str(tmp_path / "src"),
                                                       "verify": False, "download": False}})
    result = run("stages.download", "--dataset", "mnist", "--out", str(tmp_path / "raw"), "--params", str(params))
    assert result.returncode == 0, result.stderr
    ds = D.load_npz(tmp_path / "raw")
    assert ds.train.images.shape == (30, 28, 28, 1)
    meta = yaml.safe_load((tmp_path / "raw" / "meta.json").read_text())
    assert meta["classes"][0] == "0" and meta["test"] == 10


def test_download_offline_missing_is_one_line_and_leaves_nothing(tmp_path):
    params = params_file(tmp_path, dataset={"mnist": {"name": "mnist", "source_dir": str(tmp_path / "none"), "download": False}})
    result = run("stages.download", "--dataset", "mnist", "--out", str(tmp_path / "raw"), "--params", str(params))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("download: error: mnist: dataset not found; tried source_dir")
    assert not (tmp_path / "raw").exists()
    assert not list(tmp_path.glob(".raw*"))


def test_unselected_dataset(tmp_path):
    params = params_file(tmp_path)
    result = run("stages.download", "--dataset", "cifar10", "--out", str(tmp_path / "raw"), "--params", str(params))
    assert result.returncode == 2 and "dataset = 'cifar10': not selected" in result.stderr


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("train", {"epochs": 0}, "train.epochs = 0: must be >= 1"),
        ("train", {"lr": -0.1}, "train.lr = -0.1: must be > 0.0"),
        ("model", {"name": "vgg"}, "model.name = 'vgg': unknown"),
        ("model", {"widths": [32, 0], "kernel_sizes": [3, 3]}, "model.widths = 0: must be >= 1"),
        ("hardware", {"device": "tpu"}, "hardware.device = 'tpu': unknown"),
    ],
)
def test_train_bad_config_is_one_line(tmp_path, section, value, message):
    tr, te, classes = D.make_synthetic(12, 40, 20)
    (tmp_path / "raw").mkdir()
    D.save_npz(tmp_path / "raw", D.RawDataset("synthetic", tr, te, classes, "s"))
    params = params_file(tmp_path, **{section: value})
    out = tmp_path / "m" / "baseline.pt"
    result = run("stages.train_baseline", "--dataset", "fashion_mnist", "--data", str(tmp_path / "raw"), "--out", str(out),
                 "--metrics", str(tmp_path / "m.json"), "--params", str(params), "--resume-dir", str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train-baseline: error: ") and message in last, last
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_train_missing_data_is_one_line(tmp_path):
    params = params_file(tmp_path)
    result = run("stages.train_baseline", "--dataset", "fashion_mnist", "--data", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "b.pt"), "--metrics", str(tmp_path / "b.json"), "--params", str(params))
    assert result.returncode == 2
    assert "train-baseline: error:" in result.stderr and "run `dvc repro download` first" in result.stderr


def test_train_stage_end_to_end_and_resume(tmp_path):
    tr, te, classes = D.make_synthetic(12, 200, 60)
    (tmp_path / "raw").mkdir()
    D.save_npz(tmp_path / "raw", D.RawDataset("synthetic", tr, te, classes, "s"))
    train = dict(yaml.safe_load((ROOT / "params.yaml").read_text())["train"], epochs=2, val_size=20, batch_size=32)
    params = params_file(tmp_path, train=train, model={"name": "p1_cnn", "widths": [4, 8], "kernel_sizes": [3, 3], "hidden": 16},
                         hardware={"threads": 1})
    args = ["--dataset", "synthetic", "--data", str(tmp_path / "raw"), "--out", str(tmp_path / "b.pt"),
            "--metrics", str(tmp_path / "b.json"), "--live", str(tmp_path / "live"), "--params", str(params),
            "--resume-dir", str(tmp_path / "resume")]
    result = run("stages.train_baseline", *args)
    assert result.returncode == 0, result.stderr
    metrics = yaml.safe_load((tmp_path / "b.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2 and 0 <= metrics["test"]["top1"] <= 100
    assert (tmp_path / "live" / "plots" / "metrics" / "val_top1.tsv").exists()
    assert not list((tmp_path / "resume").glob("*.pt"))  # scratch removed after success
    np.testing.assert_equal(metrics["test"]["n"], 60)


def test_stage_wall_time_recorded_in_metrics(tmp_path):
    from stages._common import _record_stage_seconds

    (tmp_path / "m.json").write_text('{"test": {"top1": 90.0}}')
    _record_stage_seconds(["--dataset", "x", "--metrics", str(tmp_path / "m.json")], 12.34)
    doc = yaml.safe_load((tmp_path / "m.json").read_text())
    assert doc == {"test": {"top1": 90.0}, "stage_seconds": 12.3}
