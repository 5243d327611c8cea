"""Sweeps: the launchers compose, the stage plan follows dvc.yaml, a real 2-seed sweep runs and is collected."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnvis import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_joblib_launcher_composes():
    cfg = _compose(["+launcher=joblib"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2
    assert "launcher" not in cfg  # it configures Hydra only, never a stage's params


def test_slurm_launcher_composes_with_cluster_overrides():
    cfg = _compose(["+launcher=slurm", "hardware=cuda", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"])
    lc = cfg.hydra.launcher
    assert lc._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (lc.partition, lc.gpus_per_node, lc.timeout_min, lc.cpus_per_task) == ("gpu", 2, 240, 8)
    assert cfg.hardware.device == "cuda"


def test_dvc_composition_never_contains_a_launcher(tmp_path):
    from stages.compose import compose

    compose([], tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert "hydra" not in params and "launcher" not in params and "sweep" not in params


@pytest.fixture(scope="module")
def digits_stages(tmp_path_factory):
    """dvc.yaml resolved by DVC's resolver for a params.yaml that selects digits."""
    from stages.compose import compose
    from stages.sweep import DVC_YAML, resolve_stages

    tmp = tmp_path_factory.mktemp("resolve")
    compose(["dataset=[digits]"], tmp / "params.yaml")
    return resolve_stages(DVC_YAML, tmp)


def test_plan_adds_upstream_stages_in_dependency_order(digits_stages):
    from stages.sweep import plan

    assert plan(digits_stages, ["train-baseline"]) == ["download@digits", "train-baseline@digits"]
    everything = plan(digits_stages, None)
    assert "report" not in everything  # one page per workspace, not per job
    assert everything.index("download@digits") < everything.index("train-baseline@digits")
    assert all(name.endswith("@digits") for name in everything)
    with pytest.raises(ConfigError, match="unknown stage 'trian-baseline'"):
        plan(digits_stages, ["trian-baseline"])


def test_stage_calls_are_dvc_yaml_commands_run_in_process():
    from stages.sweep import stage_calls

    assert stage_calls("python -m stages.download --dataset digits --out 'data/raw/digits'") == [
        ("stages.download", ["--dataset", "digits", "--out", "data/raw/digits"])]
    with pytest.raises(ConfigError, match="python -m stages"):
        stage_calls("bash -c 'rm -rf /'")


def _fake_job(root: Path, num: int, status: str, seed: int, top1: float | None) -> None:
    job = root / str(num)
    job.mkdir(parents=True)
    (job / "params.yaml").write_text(yaml.safe_dump({"hardware": {"device": "cpu"}, "train": {"seed": seed}}))
    (job / "sweep.json").write_text(json.dumps({"overrides": ["dataset=[digits]", f"train.seed={seed}", "train.lr=0.1"],
                                                "status": status, "error": None if status == "ok" else "RuntimeError: boom"}))
    if top1 is not None:
        (job / "reports/metrics/digits").mkdir(parents=True)
        (job / "reports/metrics/digits/baseline.json").write_text(json.dumps({"test": {"top1": top1}, "seed": seed}))


def test_collect_averages_over_seeds_and_lists_failed_jobs(tmp_path):
    from stages.collect import collect

    _fake_job(tmp_path, 0, "ok", 0, 90.0)
    _fake_job(tmp_path, 1, "ok", 1, 94.0)
    _fake_job(tmp_path, 2, "failed", 2, 10.0)  # a partial metrics file of a failed job is not averaged in
    files = collect(tmp_path, ["test.top1"])
    summary = list(csv.DictReader(files["summary.csv"].splitlines()))
    assert summary == [{"dataset": "digits", "device": "cpu", "stage": "baseline", "setting": "—", "metric": "test.top1",
                        "mean": "92.0", "std": str(statistics.stdev([90.0, 94.0])), "n": "2", "runs": "2"}]
    assert "92.00 ± 2.83 (n=2)" in files["summary.md"]
    assert "RuntimeError: boom" in files["summary.md"] and "train.lr=0.1" in files["summary.md"]
    assert len(files["jobs.csv"].strip().splitlines()) == 3  # header + the two good jobs


@pytest.mark.slow
def test_sweep_two_seeds_on_digits_then_collect(tmp_path):
    """The real entry point, basic launcher, two jobs of download → train-baseline, then collect."""
    sweep_dir = tmp_path / "multirun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "stages.sweep", "-m", "dataset=[digits]", "hardware=cpu", "train.seed=0,1",
           "train.epochs=1", "train.max_train_images=256", "train.max_test_images=128", "train.val_size=64",
           "hardware.threads=1", "hardware.progress=none", "+sweep.stages=[train-baseline]", f"hydra.sweep.dir={sweep_dir}"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    top1 = []
    for job, seed in (("0", 0), ("1", 1)):
        d = sweep_dir / job
        record = json.loads((d / "sweep.json").read_text())
        assert record["status"] == "ok"
        assert [s["stage"] for s in record["stages"]] == ["download@digits", "train-baseline@digits"]
        assert yaml.safe_load((d / "params.yaml").read_text())["train"]["seed"] == seed
        assert (d / "data/models/digits/baseline.pt").is_file()
        m = json.loads((d / "reports/metrics/digits/baseline.json").read_text())
        assert (m["seed"], m["epochs"], m["test_images"]) == (seed, 1, 128)
        top1.append(m["test"]["top1"])

    from stages.collect import main as collect_main

    collect_main([str(sweep_dir), "--metric", "test.top1"])
    rows = list(csv.DictReader((sweep_dir / "summary.csv").read_text().splitlines()))
    assert len(rows) == 1 and rows[0]["n"] == "2" and rows[0]["dataset"] == "digits"
    assert float(rows[0]["mean"]) == pytest.approx(statistics.fmean(top1))
    assert float(rows[0]["std"]) == pytest.approx(statistics.stdev(top1))
    assert (sweep_dir / "summary.md").read_text().count("| digits |") == 1
