"""Where and how stages compute: the device and the torch thread count (``hardware`` config).

Execution only: nothing here changes a result, which is why ``hardware`` is not
a DVC param.
"""

from __future__ import annotations

import torch

from cnnvis import ConfigError
from cnnvis.config import HardwareConfig
from cnnvis.threads import parallel_jobs, threads_per_job


def resolve_device(hw: HardwareConfig) -> torch.device:
    if hw.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if hw.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("hardware.device = 'cuda': no CUDA device visible; use hardware=cpu")
    return torch.device(hw.device)


def apply_hardware(hw: HardwareConfig) -> torch.device:
    """Set threads and backend flags; return the device."""
    device = resolve_device(hw)
    jobs = parallel_jobs()  # CNNVIS_PARALLEL_JOBS: jobs sharing this machine's cores (sweeps, `dvc queue -j`)
    threads = hw.threads or (threads_per_job(jobs) if jobs > 1 else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = hw.cudnn_benchmark
    return device
