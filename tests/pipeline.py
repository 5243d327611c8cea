"""Helpers to run the DVC pipeline in a temporary copy of the repository, and to compare metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ACCURACY_KEYS = ("top1", "top5")
ID_FIELDS = ("perturbation", "model", "method", "class", "name", "fraction", "repeat")


def copy_repo(dest: Path) -> Path:
    """The committed and untracked-but-not-ignored files (what a clean clone plus local edits has)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if not src.is_file() or f.startswith("data/") or f == "dvc.lock":
            continue
        if f.startswith("reports/") and not f.endswith((".gitkeep", "paper_reference.yaml")):
            continue  # outputs of the full run: the ci run makes its own
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / f)
    git = ["git", "-c", "user.name=cnnvis-test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "copy"], cwd=dest, check=True)  # a clean clone has a commit
    return dest


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.pop("PYTHONPATH", None)  # `python -m` puts the copy's own code (cwd) first on the path
    e.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return e


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def is_error(key: str) -> bool:
    """Error rates in % (lower is better): ``error_*`` and ``*_error_*`` keys, not numerical check errors."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf.startswith("error") or "_error_" in leaf


def metric_leaves(obj, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf that is an accuracy (top1/top5, *_top1, *accuracy) or an error rate in % (see
    ``is_error``), skipping per-epoch history and the papers' own numbers."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("history", "paper"):  # per-epoch curves; the papers' own numbers quoted in a metrics file
                continue
            path = f"{prefix}.{k}" if prefix else str(k)
            quality = k in ACCURACY_KEYS or k.endswith(("_top1", "_top5", "accuracy")) or is_error(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and quality:
                out[path] = float(v)
            elif isinstance(v, dict):
                out.update(metric_leaves(v, path))
            elif isinstance(v, list):  # table rows: keyed by their identifying fields, not their position
                for i, row in enumerate(v):
                    if isinstance(row, dict):
                        ident = ",".join(f"{f}={row[f]}" for f in ID_FIELDS if isinstance(row.get(f), (str, int, float)))
                        out.update(metric_leaves(row, f"{path}[{ident or i}]"))
    return out


def collect_metrics(reports_dir: Path) -> dict[str, dict[str, float]]:
    result = {}
    for f in sorted((reports_dir / "metrics").rglob("*.json")):
        leaves = metric_leaves(json.loads(f.read_text()))
        if leaves:
            result[str(f.relative_to(reports_dir.parent))] = leaves
    return result


def compare(current: dict, expected: dict, tolerance: float, *, worse_only: bool = False) -> list[str]:
    """Messages for every expected metric that is missing or off by more than ``tolerance`` points.

    ``worse_only``: only a change for the worse counts (an accuracy falling, an error rate rising)."""
    problems = []
    for file, leaves in expected.items():
        for key, want in leaves.items():
            got = current.get(file, {}).get(key)
            if got is None:
                problems.append(f"{file}:{key} missing (expected {want})")
                continue
            worse = (got - want) if is_error(key) else (want - got)
            if (worse > tolerance) if worse_only else (abs(got - want) > tolerance):
                problems.append(f"{file}:{key} = {got:.3f}, expected {want:.3f} ± {tolerance} points")
    return problems


def load_expected(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def write_expected(path: Path, metrics: dict, tolerance: float, note: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"note": note, "tolerance_points": tolerance, "metrics": metrics}, sort_keys=True))
