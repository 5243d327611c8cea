"""Cores shared among jobs that run at the same time: each gets ``max(1, cores // jobs)`` torch threads.

``CNNVIS_PARALLEL_JOBS`` is how many jobs share this machine's cores: the sweep sets it for its jobs from the
launcher; set it yourself for `dvc queue start -j N`. Unset means 1 (a job alone takes every core).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cnnvis import ConfigError

PARALLEL_JOBS_VAR = "CNNVIS_PARALLEL_JOBS"


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (what a container, taskset or Slurm grants), not the
    machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def parallel_jobs(environ: Mapping[str, str] = os.environ) -> int:
    """``CNNVIS_PARALLEL_JOBS`` as a count (1 when unset); anything but a positive integer is one line."""
    raw = environ.get(PARALLEL_JOBS_VAR, "").strip()
    if not raw:
        return 1
    try:
        jobs = int(raw)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ConfigError(f"{PARALLEL_JOBS_VAR} = {raw!r}: must be a positive integer (the jobs sharing this "
                          "machine's cores), or unset")
    return jobs


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads for each of ``jobs`` jobs running at once on ``cores`` cores (default: this process's)."""
    return max(1, (available_cores() if cores is None else cores) // max(1, jobs))
