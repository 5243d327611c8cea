"""Resumable training for the stages that train: state after every epoch in ``--resume-dir``, DVCLive curves.

Its own module so that only the stages that train depend on the training code (DVC deps are import closures).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages._runner import Context

log = logging.getLogger("cnnvis")

LIVE_KEYS = ("train_loss", "train_top1", "val_loss", "val_top1", "lr_start", "images_per_s")


@contextlib.contextmanager
def epochs(ctx: Context, tag: str, *config: Any, live: Path | None = None) -> Iterator[Any]:
    """``cnnvis.studies.training.Epochs`` for one training run of the stage: the state after every epoch goes
    to ``--resume-dir`` under a key of the code, inputs, params and ``config`` (a killed run continues from its
    last epoch; state of other data, code or config is never picked up), and learning curves go to the
    DVCLive directory ``live`` (a temporary output path). The state file is removed when the block succeeds."""
    import torch

    from cnnvis.io import atomic_path
    from cnnvis.studies.training import Epochs

    resume_dir = ctx.path("resume_dir")
    state_file = resume_dir / f"{ctx.dataset}-{tag}-{ctx.digest(tag, *config)}.pt" if resume_dir else None
    resume = None
    if state_file is not None and state_file.exists():
        try:
            resume = torch.load(state_file, map_location="cpu", weights_only=True)
            log.info("resuming %s from %s (epoch %d)", tag, state_file, resume["epoch"])
        except Exception:  # a state file cut short by the kill itself
            log.warning("ignoring unreadable resume file %s", state_file)
    logger = None
    if live is not None:
        from dvclive import Live

        logger = Live(dir=str(live), dvcyaml=False, save_dvc_exp=False, report=None)
        for row in (resume or {}).get("history", []):
            _log_live(logger, row)

    def on_epoch_end(state: dict) -> None:
        if logger is not None:
            _log_live(logger, state["history"][-1])
        if state_file is not None:
            with atomic_path(state_file) as tmp:
                torch.save(state, tmp)

    session = Epochs(resume=resume, on_epoch_end=on_epoch_end, progress=ctx.progress)
    yield session
    if logger is not None:
        logger.summary = session.summary
        logger.end()
    if state_file is not None:
        state_file.unlink(missing_ok=True)


def _log_live(live: Any, row: dict) -> None:
    for key in LIVE_KEYS:
        if key in row:
            live.log_metric(key, row[key])
    live.next_step()
