"""A DVC remote shares results: `dvc push` from one clone, `dvc pull` in a fresh clone, nothing recomputed there."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from pipeline import copy_repo, run

TARGET = "train-baseline@digits-0"  # download → train (the first seed): the smallest chain that trains
COMPOSE = ("python", "-m", "stages.compose", "experiment=ci", "dataset=[digits]", "train.epochs=1", "hardware.threads=1")
GIT = ("git", "-c", "user.name=cnnvis-test", "-c", "user.email=test@localhost")


def _ok(cmd: list[str] | tuple[str, ...], cwd: Path) -> str:
    r = run(list(cmd), cwd)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-3000:]}"
    return r.stdout + r.stderr


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_results_pushed_to_a_remote_are_pulled_by_another_clone_without_retraining(tmp_path):
    first, remote = copy_repo(tmp_path / "first"), tmp_path / "remote"
    _ok(COMPOSE, first)
    assert "Running stage 'train-baseline@digits-0'" in _ok(["dvc", "repro", TARGET], first)
    _ok(["dvc", "remote", "add", "-d", "storage", str(remote)], first)  # .dvc/config: committed with the results
    _ok([*GIT, "add", "-A"], first)
    _ok([*GIT, "commit", "-q", "-m", "results"], first)
    _ok(["dvc", "push"], first)
    assert any(p.is_file() for p in remote.rglob("*"))

    second = tmp_path / "second"
    subprocess.run(["git", "clone", "-q", str(first), str(second)], check=True)
    model = Path("data/models/digits/seeds/0/baseline.pt")
    assert not (second / model).exists()  # a clone has the pipeline and dvc.lock, not the data
    _ok(["dvc", "pull", "--with-deps", TARGET], second)  # the other stages never ran: nothing of theirs to pull
    assert _md5(second / model) == _md5(first / model)
    assert "Data and pipelines are up to date" in _ok(["dvc", "status", "--with-deps", TARGET], second)
    again = _ok(["dvc", "repro", TARGET], second)
    assert "Running stage" not in again and "Data and pipelines are up to date" in again
    assert _md5(second / model) == _md5(first / model)
