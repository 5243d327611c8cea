"""Helpers to run the DVC pipeline in a temporary copy of the repository, and to compare metrics."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = ROOT / "tests" / "expected"  # written by tests.calibrate, read by tests/test_pipeline.py
CI_EXPECTED, CI_RUNS, FULL_EXPECTED = EXPECTED / "ci_metrics.yaml", EXPECTED / "ci_runs.csv", EXPECTED / "full_metrics.yaml"
ACCURACY_KEYS = ("top1", "top5")
ID_FIELDS = ("perturbation", "model", "method", "class", "name", "fraction", "repeat", "phase", "layer", "width")


def copy_repo(dest: Path, source: Path = ROOT) -> Path:
    """The committed and untracked-but-not-ignored files of ``source`` (what a clean clone plus local edits has)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=source,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        src = source / f
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


# CPU instruction sets emulated on a wider CPU: PyTorch's own kernels, oneDNN's and MKL's each obey their variable.
# "native" clears them (whatever the CPU has); a name beyond the CPU's ISA runs as native.
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
ISA_ENV = {
    "native": {},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "sse4": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def env(isa: str | None = None) -> dict[str, str]:
    """The environment of a pipeline command; ``isa`` (a key of ISA_ENV) replaces the inherited ISA variables."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.pop("PYTHONPATH", None)  # `python -m` puts the copy's own code (cwd) first on the path
    e.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if isa is not None:
        for var in ISA_VARIABLES:
            e.pop(var, None)
        e.update(ISA_ENV[isa])
    return e


def run(cmd: list[str], cwd: Path, timeout: int = 900, isa: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env(isa), capture_output=True, text=True, timeout=timeout)


# the ci DAG as the test runs it: one torch thread (pytest runs two workers on two cores; oversubscribed
# OpenMP threads are 10x slower). The calibration adds seed overrides and an ISA to the same commands.
CI_COMPOSE = ("python", "-m", "stages.compose", "experiment=ci", "hardware.threads=1")


def ci_repro(repo: Path, overrides: tuple[str, ...] = (), isa: str | None = None,
             timeout: int = 3600) -> subprocess.CompletedProcess:
    """Compose the ci experiment (plus ``overrides``) into ``repo``'s params.yaml and `dvc repro` it."""
    composed = run([*CI_COMPOSE, *overrides], repo)
    if composed.returncode != 0:
        return composed
    return run(["dvc", "repro"], repo, timeout=timeout, isa=isa)


def code_id(repo: Path) -> str:
    """A hash of the committed files of ``repo`` that make results (not tests/, Markdown, reports or lock files)."""
    listing = subprocess.run(["git", "ls-tree", "-r", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout
    kept = [line for line in listing.splitlines()
            if not line.split("\t", 1)[1].startswith(("tests/", "reports/")) and not line.endswith((".md", "dvc.lock"))]
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:12]


def cpu_capability(isa: str | None = None) -> str:
    """What PyTorch's kernels run on under ``isa`` (``torch.backends.cpu.get_cpu_capability()``)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=env(isa), capture_output=True, text=True, check=True)
    return out.stdout.strip()


def is_error(key: str) -> bool:
    """Error rates in % (lower is better): ``error_*`` and ``*_error_*`` keys, not numerical check errors."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf.startswith("error") or "_error_" in leaf


def points_per_unit(key: str) -> float:
    """Percentage points per unit of a metric: 100 for a relative error (a fraction, ``rel_error*``), else 1 (%)."""
    return 100.0 if "rel_error" in key.rsplit(".", 1)[-1] else 1.0


def metric_leaves(obj, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf that is an accuracy (top1/top5, *_top1, *accuracy) or an error rate in % (see
    ``is_error``), skipping per-epoch history, the papers' own numbers and spreads (``*_std``). Rows of a list
    are named by their identifying fields (ID_FIELDS: a search step by phase, layer and width)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("history", "paper"):  # per-epoch curves; the papers' own numbers quoted in a metrics file
                continue
            path = f"{prefix}.{k}" if prefix else str(k)
            quality = (k in ACCURACY_KEYS or k.endswith(("_top1", "_top5", "accuracy")) or is_error(k)) and not k.endswith("_std")
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


def compare(current: dict, expected: dict, tolerance: float | None = None, *, worse_only: bool = False) -> list[str]:
    """Messages for every expected metric that is missing or off by more than its tolerance.

    ``expected``: {file: {key: value}} with one ``tolerance`` for all (``worse_only``: only a change for the
    worse counts, an accuracy falling or an error rate rising), or {file: {key: entry}} with entries of
    ``calibrate``: ``expected``, ``tolerance``, ``check`` (higher: may not fall; lower: may not rise; both), and
    the calibration's ``n`` and ``sd``, quoted in the message."""
    problems = []
    for file, leaves in expected.items():
        for key, spec in leaves.items():
            if isinstance(spec, dict):
                want, tol, check = spec["expected"], spec["tolerance"], spec["check"]
                spread = f"; calibration n={spec.get('n')}, sd={spec.get('sd')}"
            else:
                want, tol, spread = spec, tolerance, ""
                check = ("lower" if is_error(key) else "higher") if worse_only else "both"
            got = current.get(file, {}).get(key)
            if got is None:
                problems.append(f"{file}:{key} missing (expected {want})")
                continue
            worse = {"higher": want - got, "lower": got - want, "both": abs(got - want)}[check]
            if worse > tol:
                allowed = {"higher": f"may fall {tol:.3f}", "lower": f"may rise {tol:.3f}", "both": f"± {tol:.3f}"}[check]
                problems.append(f"{file}:{key} = {got:.3f}, expected {want:.3f} ({allowed}{spread})")
    return problems


def load_expected(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def write_expected(path: Path, doc: dict, header: str = "") -> None:
    """``doc`` as YAML (its keys in order) after ``header``'s lines as comments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    path.write_text(comments + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120))
