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
    base.pop("_compose")  # hand-made params: no composition record to re-check
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
    assert result.stderr.count("\n") == 1 and "train-baseline: error:" in result.stderr
    assert "nothing: missing; run `dvc repro download` first" in result.stderr


def test_train_stage_end_to_end(tmp_path):
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
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2 and metrics["test"]["top1"] > 100 / 12
    assert (tmp_path / "live" / "plots" / "metrics" / "val_top1.tsv").exists()
    assert not list((tmp_path / "resume").glob("*.pt"))  # scratch removed after success
    np.testing.assert_equal(metrics["test"]["n"], 60)


def synthetic_run(tmp_path, epochs: int = 3):
    """A raw synthetic dataset and params for a tiny model; returns argv for train_baseline.main minus outputs."""
    tr, te, classes = D.make_synthetic(12, 200, 60)
    (tmp_path / "raw").mkdir()
    D.save_npz(tmp_path / "raw", D.RawDataset("synthetic", tr, te, classes, "s"))
    train = dict(yaml.safe_load((ROOT / "params.yaml").read_text())["train"], epochs=epochs, val_size=20, batch_size=32)
    params = params_file(tmp_path, train=train, model={"name": "p1_cnn", "widths": [4, 8], "kernel_sizes": [3, 3],
                                                       "hidden": 16}, hardware={"threads": 1})
    return ["--dataset", "synthetic", "--data", str(tmp_path / "raw"), "--params", str(params)]


def test_train_stage_resumes_a_killed_run_to_the_same_result(tmp_path, monkeypatch):
    """The stage killed after epoch 1 writes no output but leaves its state in the resume dir; the next run
    continues from it and ends with the same checkpoint, byte for byte, as a run that was never interrupted."""
    from cnnvis import training
    from stages.train_baseline import main

    base = synthetic_run(tmp_path)
    resume = tmp_path / "resume"

    def outputs(name):
        return ["--out", str(tmp_path / name / "b.pt"), "--metrics", str(tmp_path / name / "b.json")]

    class Killed(Exception):
        pass

    real_train = training.train

    def killed_after_epoch_1(*args, on_epoch_end, **kw):
        def save_then_die(state):
            on_epoch_end(state)
            raise Killed

        return real_train(*args, on_epoch_end=save_then_die, **kw)

    monkeypatch.setattr(training, "train", killed_after_epoch_1)
    with pytest.raises(Killed):
        main([*base, *outputs("resumed"), "--resume-dir", str(resume)])
    assert len(list(resume.glob("*.pt"))) == 1  # epoch 1's state
    assert not (tmp_path / "resumed").exists() or not any((tmp_path / "resumed").iterdir())  # no partial output
    epochs_run = []

    def counting(*args, on_epoch_end, **kw):
        return real_train(*args, on_epoch_end=lambda st: epochs_run.append(st["epoch"]) or on_epoch_end(st), **kw)

    monkeypatch.setattr(training, "train", counting)
    main([*base, *outputs("resumed"), "--resume-dir", str(resume)])
    assert epochs_run == [2, 3]  # epoch 1 came from the resume file
    assert not list(resume.glob("*.pt"))  # scratch removed after success
    main([*base, *outputs("straight"), "--resume-dir", str(tmp_path / "other")])
    assert (tmp_path / "resumed" / "b.pt").read_bytes() == (tmp_path / "straight" / "b.pt").read_bytes()


def test_resume_state_of_other_data_is_not_used(tmp_path, monkeypatch):
    """The resume key covers the inputs' content: after the training data change, a killed run's state is ignored
    and training starts again from epoch 1 (the old key, config only, resumed on the new data)."""
    from cnnvis import training
    from stages.train_baseline import main

    base = synthetic_run(tmp_path)
    resume = tmp_path / "resume"
    real_train = training.train

    def killed_after_epoch_1(*args, on_epoch_end, **kw):
        def save_then_die(state):
            on_epoch_end(state)
            raise KeyboardInterrupt

        return real_train(*args, on_epoch_end=save_then_die, **kw)

    monkeypatch.setattr(training, "train", killed_after_epoch_1)
    with pytest.raises(SystemExit) as e:
        main([*base, "--out", str(tmp_path / "b.pt"), "--metrics", str(tmp_path / "b.json"), "--resume-dir", str(resume)])
    assert e.value.code == 130 and len(list(resume.glob("*.pt"))) == 1 and not (tmp_path / "b.pt").exists()
    tr, te, classes = D.make_synthetic(12, 200, 60, seed=1)  # new training data, same config
    D.save_npz(tmp_path / "raw", D.RawDataset("synthetic", tr, te, classes, "s"))
    epochs_run = []
    monkeypatch.setattr(training, "train", lambda *a, on_epoch_end, **kw: real_train(
        *a, on_epoch_end=lambda st: epochs_run.append(st["epoch"]) or on_epoch_end(st), **kw))
    main([*base, "--out", str(tmp_path / "b.pt"), "--metrics", str(tmp_path / "b.json"), "--resume-dir", str(resume)])
    assert epochs_run == [1, 2, 3]
