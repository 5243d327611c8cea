"""Where a result was computed: git revision, the machine's CPU and GPU, library versions, the device used."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from cnnvis.config import HardwareConfig

PACKAGES = ("torch", "torchvision", "captum", "dvc")


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest vector instruction set PyTorch dispatches to here (results differ in the last bits between them)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def gpu_names() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(params_digest: str, hw: HardwareConfig) -> dict[str, str]:
    """The report's provenance table: one line per fact."""
    rev = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    gpus = gpu_names()
    return {
        "git revision": "unknown (not a git checkout)" if rev is None else rev + (" (uncommitted changes)" if dirty else ""),
        "date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "params digest": params_digest,
        "hardware": f"{cpu_name()} ({cpu_isa()}), {os.cpu_count()} logical CPUs; GPU: {', '.join(gpus) or 'none'}; "
                    f"device {hw.device}, threads {hw.threads or 'all'} (per stage: see the times below)",
        "software": f"Python {platform.python_version()}, " + ", ".join(f"{p} {version(p)}" for p in PACKAGES)
                    + f", {platform.system()} {platform.release()}",
    }
