"""What every stage shares: params.yaml sections, error handling, progress.

A stage module declares ``PARAMS`` (the params.yaml keys it reads, with
``{dataset}`` for the dataset of the run), ``INPUTS`` and ``OUTPUTS`` (the
command-line flags naming its deps and outs). ``tests/test_dvc_contract.py``
checks those against dvc.yaml, and ``Params`` refuses to hand out a section the
stage did not declare, so the declaration cannot drift from the code.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from cnnvis import CnnvisError, ConfigError
from cnnvis.config import HardwareConfig, parse

log = logging.getLogger("cnnvis")

# hardware is read by every stage but deliberately not a DVC param: it changes how
# fast results come, not which results (DESIGN.md), so switching it reruns nothing.
EXECUTION_SECTIONS = ("hardware",)


class Params:
    """The params.yaml of a run, limited to the keys a stage declared."""

    def __init__(self, data: dict, declared: Iterable[str], dataset: str | None = None, source: str = "params.yaml"):
        self.data = data
        self.dataset = dataset
        self.source = source
        self.declared = {k.format(dataset=dataset) for k in declared} | set(EXECUTION_SECTIONS)

    @classmethod
    def load(cls, path: str | Path, declared: Iterable[str], dataset: str | None = None) -> Params:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: missing; run `python -m stages.compose` to generate it from conf/") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
        return cls(data, declared, dataset, str(path))

    def raw(self, key: str) -> Any:
        if key not in self.declared:
            raise RuntimeError(f"stage reads params key {key!r} it did not declare in PARAMS (and dvc.yaml)")
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if key.startswith("dataset.") and part == self.dataset:
                    selected = ", ".join(sorted(self.data.get("dataset", {}))) or "none"
                    raise ConfigError(f"dataset = {self.dataset!r}: not selected in {self.source} (selected: {selected})")
                raise ConfigError(f"{key}: missing from {self.source}; regenerate it with `python -m stages.compose`")
            node = node[part]
        return node

    def section(self, key: str, schema: type) -> Any:
        """The validated dataclass for ``key``."""
        return parse(schema, self.raw(key), key)

    @property
    def hardware(self) -> HardwareConfig:
        return self.section("hardware", HardwareConfig)

    def apply_hardware(self) -> HardwareConfig:
        """Validate the hardware section and apply it (threads, backend flags) for the whole stage."""
        from cnnvis.hardware import apply_hardware

        hw = self.hardware
        apply_hardware(hw)
        return hw


def progress_factory(hw: HardwareConfig) -> Callable[..., Iterable]:
    """A tqdm bar on a terminal; nothing (the library logs a line per epoch) otherwise."""
    mode = hw.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "bar":
        from tqdm.auto import tqdm

        return lambda it, **kw: tqdm(it, dynamic_ncols=True, **kw)
    return lambda it, **kw: it


def stage_main(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Wrap a stage's ``main``: logging set up, user errors as one line and exit 2."""

    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(argv: list[str] | None = None) -> None:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
            t0 = time.perf_counter()
            try:
                fn(argv)
            except CnnvisError as e:
                print(f"{name}: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            except KeyboardInterrupt:
                print(f"{name}: interrupted; outputs left untouched", file=sys.stderr)
                raise SystemExit(130) from None
            seconds = time.perf_counter() - t0
            _record_stage_seconds(sys.argv[1:] if argv is None else argv, seconds)
            log.info("%s done in %.1f s", name, seconds)

        return wrapper

    return deco


def _record_stage_seconds(argv: list[str], seconds: float) -> None:
    """Add the stage's wall time to its ``--metrics`` JSON (the report's provenance shows time per stage)."""
    import json

    from cnnvis.io import save_json

    path = None
    for i, tok in enumerate(argv):
        if tok == "--metrics" and i + 1 < len(argv):
            path = Path(argv[i + 1])
        elif tok.startswith("--metrics="):
            path = Path(tok.split("=", 1)[1])
    if path is None or not path.is_file():
        return
    doc = json.loads(path.read_text())
    if isinstance(doc, dict):
        doc["stage_seconds"] = round(seconds, 1)
        save_json(path, doc)


def add_common_args(parser: Any) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file composed from conf/ (default: params.yaml)")
