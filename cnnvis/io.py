"""Files: atomic writes, JSON, checkpoints that carry their own config.

Every writer goes through ``atomic_path``: the content is written to a hidden
temporary name in the target's directory and renamed over the target only when
complete, so an interrupted or failed stage never leaves a partial output.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnvis import CheckpointError
from cnnvis.config import ModelConfig, to_dict

CHECKPOINT_FORMAT = "cnnvis-checkpoint/1"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``target`` (file or dir)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o777 if directory else 0o666) & ~umask)  # mkstemp/mkdtemp create private files
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; run the stage that writes it (dvc repro)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); delete it and rerun its stage") from None


def save_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(path: str | os.PathLike, fig: Any, **kwargs: Any) -> None:
    """Save a matplotlib Figure atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    plt.close(fig)


@dataclass(frozen=True)
class Saved:
    """A figure with its ``savefig`` options (``dpi``), or ``write(path)`` for a file that is not a figure."""

    figure: Any = None
    options: dict = field(default_factory=dict)
    write: Callable[[Path], None] | None = None


FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".pdf", ".gif", ".webp", ".nrrd")  # else a dot is part of the name


def save_figures(directory: str | os.PathLike, figures: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
    """Every ``(file name, Figure | Saved)`` into ``directory``, each saved and closed as soon as it comes (a
    generator keeps one figure in memory at a time); a name without a file suffix (``maps_features.conv1``) is
    saved as .png."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, item in figures.items() if isinstance(figures, Mapping) else figures:
        path = directory / (name if Path(name).suffix.lower() in FILE_SUFFIXES else f"{name}.png")
        item = item if isinstance(item, Saved) else Saved(item)
        if item.write is not None:
            with atomic_path(path) as tmp:
                item.write(tmp)
        else:
            save_figure(path, item.figure, **item.options)


def save_volume(path: str | os.PathLike, views: Any) -> None:
    """The activation volume of a ``cnnvis.studies.synthesis.ActivationViews`` as NRRD (3D Slicer, ParaView, napari
    open it), byte-reproducible: pynrrd's '# on <date>' header comment is dropped."""
    import nrrd

    from cnnvis.activations import nrrd_header

    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), views.volume, nrrd_header(views.volume, layer=views.layer), index_order="C")
        head, sep, body = tmp.read_bytes().partition(b"\n\n")  # the header ends at the first blank line
        tmp.write_bytes(re.sub(rb"(?m)^# on [^\n]*\n", b"", head) + sep + body)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any], *, compressed: bool = False) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)


def load_npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles); a truncated or corrupted file raises (zipfile.BadZipFile, ...)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass(frozen=True)
class Checkpoint:
    """What ``save_checkpoint`` writes: a model with the config and dataset spec that rebuild it."""

    model: nn.Module
    model_cfg: ModelConfig
    spec: dict
    extra: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        save_checkpoint(path, self.model, self.model_cfg, self.spec, **self.extra)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_cfg: ModelConfig, spec: dict, **extra: Any) -> None:
    """Write a checkpoint that rebuilds ``model`` alone.

    ``spec`` holds what the architecture needs beyond ``model_cfg``
    (``in_channels``, ``num_classes``, ``image_size``) plus the dataset's
    normalization (``mean``, ``std``) and ``classes``.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": to_dict(model_cfg),
        "spec": dict(spec),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    # through a file object: torch names the archive's records after a path's stem, which would put the
    # random temporary name into the bytes; a file object gets a fixed name, so equal weights give equal files
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, validated; ``CheckpointError`` with one clear line otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint missing; run `dvc repro` to train it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it and rerun its stage") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a cnnvis checkpoint (expected format {CHECKPOINT_FORMAT})")
    return state


def read_json_files(directory: str | os.PathLike) -> dict[str, Any]:
    """Every ``*.json`` of ``directory`` (not recursive) by file name; {} when it does not exist."""
    out = {}
    for f in sorted(Path(directory).glob("*.json")):
        try:
            out[f.name] = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{f}: not valid JSON ({e}); rerun the stage that writes it") from None
    return out


def files_below(root: str | os.PathLike, suffixes: Iterable[str]) -> list[Path]:
    """Files under ``root`` with one of ``suffixes`` (case-insensitive), none inside a hidden folder or hidden."""
    root, suffixes = Path(root), {s.lower() for s in suffixes}
    return [f for f in sorted(root.rglob("*")) if root.is_dir() and f.is_file() and f.suffix.lower() in suffixes
            and not any(part.startswith(".") for part in f.relative_to(root).parts)]


# --------------------------------------------------------------------------- results vs run record

# keys that say how a run went, not what it found: wall times, rates, thread counts, echoed config
RUN_KEY = re.compile(r"(^|_)(seconds|ms)$|_s$|per_s$|^timings$|^threads$|^latency_(before|after)$|^speedup"
                     r"|(^|_)config$|^recipe$")


def split_run_record(doc: Any) -> tuple[Any, Any]:
    """A metrics document → (measured results, run record): every ``RUN_KEY`` at any depth moves to the record,
    which keeps the document's shape (lists position by position, ``None`` where an item has nothing), so two
    runs with equal results have equal results files (an empty ``dvc metrics diff``)."""
    if isinstance(doc, dict):
        results, record = {}, {}
        for k, v in doc.items():
            if RUN_KEY.search(str(k)):
                record[k] = v
                continue
            results[k], sub = split_run_record(v)
            if sub is not None:
                record[k] = sub
        return results, record or None
    if isinstance(doc, list):
        pairs = [split_run_record(v) for v in doc]
        subs = [sub for _, sub in pairs]
        return [r for r, _ in pairs], subs if any(sub is not None for sub in subs) else None
    return doc, None


def merge_run_record(results: Any, record: Any) -> Any:
    """Inverse of ``split_run_record``: the whole document for readers that want both (the report)."""
    if isinstance(results, dict) and isinstance(record, dict):
        return {**{k: merge_run_record(v, record.get(k)) for k, v in results.items()},
                **{k: v for k, v in record.items() if k not in results}}
    if isinstance(results, list) and isinstance(record, list) and len(results) == len(record):
        return [merge_run_record(r, s) for r, s in zip(results, record, strict=True)]
    return results if record is None else record if results is None else results
