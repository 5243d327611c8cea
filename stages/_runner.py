"""The one runner of every stage: a declared spec in; CLI, validated params, loaded inputs, atomic outputs out.

A stage module declares ``STAGE = Stage(...)``: the params sections it reads
(each with its schema dataclass), its inputs (flag → loader) and its outputs
(flag → writer), and a ``run(ctx)`` that calls the library and returns the
outputs' values by name. The runner

- builds the command line from the spec (``--dataset``, ``--params``, one flag
  per input, output and scratch path);
- validates every declared params section (``hardware`` too: it is read by
  every stage, but is not a DVC param, so switching it reruns nothing);
- checks before any work that every output location is writable;
- loads every input with its loader; a missing or unreadable file becomes one
  line naming the file and what to do;
- writes every output to a hidden temporary name next to its target and renames
  them all only when all are complete, so a failure at any point, a Ctrl-C, a
  direct call or a sweep job leave no partial output behind;
- turns every user-fixable failure into one line ``<stage>: error: …`` and exit 2.

``tests/test_dvc_contract.py`` checks the spec against dvc.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnvis import CnnvisError, ConfigError, DataError
from cnnvis.config import HardwareConfig, parse
from cnnvis.io import save_json, split_run_record

log = logging.getLogger("cnnvis")
ROOT = Path(__file__).resolve().parent.parent
EXECUTION_SECTIONS = {"hardware": HardwareConfig}  # read by every stage, never a DVC param


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Input:
    """A file or directory the stage reads (a DVC dep): ``load(path)`` returns what ``run`` gets."""

    load: Callable[[Path], Any]
    help: str = ""
    required: bool = True
    made_by: str | None = None  # the stage that writes it ("git": a committed file), named when it is missing
    skippable: bool = False  # with --skip-missing (runs outside DVC), a missing file is left out, not an error


@dataclass(frozen=True)
class Output:
    """A file or directory the stage writes (a DVC out): ``write(tmp_path, value)``.

    ``run`` returns the value under the output's name, or writes the temporary
    path ``ctx.out[name]`` itself while it works (then returns nothing for it)."""

    write: Callable[[Path, Any], None] | None = None
    directory: bool = False
    help: str = ""
    required: bool = True


@dataclass(frozen=True)
class Stage:
    """A stage: its name, docstring (the ``--help``), params sections, inputs, outputs and ``run``."""

    name: str
    doc: str
    run: Callable[[Context], Mapping[str, Any] | None]
    params: Mapping[str, type | None] = field(default_factory=dict)  # key ({dataset} allowed) → schema
    inputs: Mapping[str, Input] = field(default_factory=dict)
    outputs: Mapping[str, Output] = field(default_factory=dict)
    scratch: Mapping[str, Path] = field(default_factory=dict)  # paths DVC does not track (resume state, downloads)
    per_dataset: bool = True
    seeded: tuple[str, ...] = ()  # dotted params keys that ``--seed`` sets (one run of the pipeline's seed list)

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    @property
    def all_outputs(self) -> dict[str, Output]:
        """The declared outputs, plus ``record`` (how the run went) wherever there are ``metrics`` (what it found)."""
        if "metrics" not in self.outputs:
            return dict(self.outputs)
        return {**self.outputs, "record": Output(save_json, required=False, help=(
            "run record: wall times, threads, echoed config and the environment, kept out of the metrics so "
            "that equal results give an empty `dvc metrics diff`"))}

    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=f"python -m stages.{self.name.replace('-', '_')}", description=self.doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if self.per_dataset:
            p.add_argument("--dataset", required=True, help="the dataset of this run (a key of params.yaml's dataset)")
        for name, spec in {**self.inputs, **self.all_outputs}.items():
            p.add_argument(self.flag(name), dest=name, type=Path, required=spec.required, help=spec.help)
        for name, default in self.scratch.items():
            p.add_argument(self.flag(name), dest=name, type=Path, default=default,
                           help=f"scratch, not a DVC output (default: {default})")
        skippable = [self.flag(n) for n, spec in self.inputs.items() if spec.skippable]
        if skippable:
            p.add_argument("--skip-missing", action="store_true",
                           help=f"leave out {', '.join(skippable)} where the file does not exist (runs outside DVC)")
        if self.seeded:
            p.add_argument("--seed", type=int, default=None,
                           help=f"the run's seed: sets {', '.join(self.seeded)} (default: as in the params file)")
        p.add_argument("--params", type=Path, default=Path("params.yaml"),
                       help="params file composed from conf/ (default: params.yaml)")
        return p

    def main(self, argv: list[str] | None = None) -> None:
        """The stage's command line: ``python -m stages.<name> ...`` and ``stages.<name>.main(argv)``."""
        args = self.parser().parse_args(argv)
        guarded(self.name, execute, self, args)


def guarded(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with logging set up and every user-fixable failure as one line ``<name>: error: …``, exit 2
    (Ctrl-C: exit 130); a bug still shows its traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    try:
        result = fn(*args)
    except CnnvisError as e:
        _fail(name, str(e))
    except OSError as e:  # unwritable output, full disk, a file where a directory should be, …
        where = f"{e.filename}: " if e.filename else ""
        _fail(name, f"{where}{e.strerror or e}; check the path and its permissions, then rerun")
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no output was written", file=sys.stderr)
        raise SystemExit(130) from None
    log.info("%s done in %.1f s", name, time.perf_counter() - t0)
    return result


def command(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``guarded`` as a decorator, for the project's commands that are not DVC stages (collect, sweep)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(argv: list[str] | None = None) -> Any:
            return guarded(name, fn, argv)

        wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
        return wrapper

    return deco


def _fail(name: str, message: str) -> None:
    print(f"{name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------- what run() gets


@dataclass
class Context:
    """What a stage's ``run`` works with: validated params, loaded inputs, temporary output paths."""

    stage: Stage
    args: argparse.Namespace
    dataset: str | None
    params: dict[str, Any]  # section key (formatted) → validated dataclass (or raw value without schema)
    inputs: dict[str, Any]  # input name → what its loader returned
    out: dict[str, Path]  # output name → the temporary path it is written to
    hardware: HardwareConfig

    def path(self, name: str) -> Path | None:
        """The path given on the command line for an input, output or scratch name."""
        return getattr(self.args, name)

    def section(self, key: str) -> Any:
        return self.params[key.format(dataset=self.dataset)]

    def progress(self, iterable: Iterable, **kw: Any) -> Iterable:
        """A tqdm bar on a terminal (``hardware.progress``); the plain iterable otherwise."""
        mode = self.hardware.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        if mode != "bar":
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, **kw)

    def digest(self, *parts: Any) -> str:
        """sha256 (16 hex) of the code that runs, the content of every input and the params sections (plus
        ``parts``): the key of resumable scratch state, so state from other data, code or config is never used."""
        h = hashlib.sha256()
        for f in sorted(_project_files_loaded()):
            h.update(f.encode() + b"\0" + _file_digest(ROOT / f).encode())
        for name in sorted(self.stage.inputs):
            p = self.path(name)
            h.update(name.encode() + b"\0" + (_tree_digest(p) if p is not None else "-").encode())
        results = [_plain(v) for k, v in sorted(self.params.items()) if k not in EXECUTION_SECTIONS]  # not hardware
        h.update(json.dumps(results, sort_keys=True, default=str).encode())
        h.update(json.dumps(parts, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]


def _plain(value: Any) -> Any:
    from cnnvis.config import to_dict

    try:
        return to_dict(value)
    except TypeError:
        return value


def _project_files_loaded() -> set[str]:
    files = set()
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if f and Path(f).resolve().is_relative_to(ROOT) and Path(f).suffix == ".py":
            rel = Path(f).resolve().relative_to(ROOT)
            if rel.parts[0] in ("cnnvis", "stages"):
                files.add(rel.as_posix())
    return files


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_digest(path: Path) -> str:
    if path.is_file():
        return _file_digest(path)
    if not path.is_dir():
        return "missing"
    return hashlib.sha256("".join(f"{f.relative_to(path).as_posix()}:{_file_digest(f)};"
                                  for f in sorted(path.rglob("*")) if f.is_file()).encode()).hexdigest()


# --------------------------------------------------------------------------- the run


def execute(stage: Stage, args: argparse.Namespace) -> None:
    """Params, writability, hardware, inputs, ``run``, then every output committed at once."""
    from cnnvis.hardware import apply_hardware

    t0 = time.perf_counter()
    dataset = getattr(args, "dataset", None)
    params = load_params(args.params, {**stage.params, **EXECUTION_SECTIONS}, dataset)
    if getattr(args, "seed", None) is not None:
        params = with_seed(params, stage.seeded, args.seed)
    outputs = stage.all_outputs
    targets = {name: getattr(args, name) for name in outputs if getattr(args, name) is not None}
    created: list[Path] = []
    try:
        for name, target in targets.items():
            created += check_writable(target, directory=outputs[name].directory)
        hw = params["hardware"]
        apply_hardware(hw)
        inputs = {}
        for name, spec in stage.inputs.items():
            path = getattr(args, name)
            if path is not None and spec.skippable and getattr(args, "skip_missing", False) and not path.exists():
                log.info("%s: %s missing, left out (--skip-missing)", stage.flag(name), path)
            elif path is not None:
                inputs[name] = load_input(path, spec)
        with staged_outputs(targets, outputs) as out:
            ctx = Context(stage, args, dataset, params, inputs, out, hw)
            values = dict(stage.run(ctx) or {})
            write_outputs(stage, values, out, {"stage_seconds": round(time.perf_counter() - t0, 1),
                                               "environment": environment(hw)})
    except BaseException:
        _remove_empty(created)
        raise


def write_outputs(stage: Stage, values: dict[str, Any], out: Mapping[str, Path], run: dict[str, Any]) -> None:
    """Each value with its output's writer into its temporary path; the others ``run`` wrote itself. The metrics
    are split: measured results stay, how the run went (times, threads, echoed config, ``run``) goes to ``record``."""
    unknown = sorted(set(values) - set(stage.outputs))
    if unknown:
        raise RuntimeError(f"stage {stage.name} returned undeclared outputs {unknown}")
    if isinstance(values.get("metrics"), dict):
        values["metrics"], record = split_run_record(values["metrics"])
        values["record"] = {**(record or {}), **run}
    for name, tmp in out.items():
        write = stage.all_outputs[name].write
        if name in values:
            if write is None:
                raise RuntimeError(f"stage {stage.name}: output {name} has no writer; write to ctx.out[{name!r}]")
            write(tmp, values[name])
        elif not tmp.exists():
            raise RuntimeError(f"stage {stage.name} did not write its output {name}")


def environment(hw: HardwareConfig) -> dict[str, Any]:
    """Where the stage ran: device, threads, CPU and its vector ISA (results differ in the last bits between
    AVX2 and AVX-512), GPUs, library versions."""
    import torch

    from cnnvis import provenance as P
    from cnnvis.hardware import resolve_device

    return {"device": str(resolve_device(hw)), "threads": torch.get_num_threads(), "cpu": P.cpu_name(),
            "cpu_isa": P.cpu_isa(), "gpus": P.gpu_names(), "versions": {p: P.version(p) for p in P.PACKAGES}}


def load_params(path: Path, sections: Mapping[str, type | None], dataset: str | None) -> dict[str, Any]:
    """The declared sections of params.yaml, each validated against its schema (one line per problem)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; run `python -m stages.compose` to generate it from conf/") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    check_composition(Path(path), data)
    out = {}
    for key, schema in sections.items():
        key = key.format(dataset=dataset)
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if key.startswith("dataset.") and part == dataset:
                    selected = ", ".join(sorted(data.get("dataset") or {})) or "none"
                    raise ConfigError(f"dataset = {dataset!r}: not selected in {path} (selected: {selected})")
                raise ConfigError(f"{key}: missing from {path}; regenerate it with `python -m stages.compose`")
            node = node[part]
        out[key] = parse(schema, node, key) if schema is not None else node
    return out


def with_seed(params: dict[str, Any], keys: tuple[str, ...], seed: int) -> dict[str, Any]:
    """``params`` with every dotted ``key`` (``train.seed``, ``encdec.train.seed``) set to ``seed``, re-validated."""
    from cnnvis.config import to_dict

    out = dict(params)
    for key in keys:
        section, *path = key.split(".")
        schema = type(out[section])
        doc = node = to_dict(out[section])
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = seed
        out[section] = parse(schema, doc, section)
    return out


NOT_COMPOSED = ("experiment", "launcher", "local")  # conf/ groups that set other sections, never one of their own


def check_composition(path: Path, data: dict) -> None:
    """Unknown top-level sections (a typo such as ``trian:``) and a params.yaml that no longer equals the
    composition of conf/ it records (hand-edited, or conf/ changed since) stop the stage with one line."""
    from stages.compose import RECORD, compose

    conf = ROOT / "conf"
    known = {p.name for p in conf.iterdir() if p.is_dir() and p.name not in NOT_COMPOSED} | {RECORD}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown section {unknown[0]!r} (sections: {', '.join(sorted(known - {RECORD}))}); "
                          "a typo? edit conf/ and regenerate it with `python -m stages.compose`")
    record = data.get(RECORD)
    if not isinstance(record, dict):
        log.debug("%s carries no composition record (composed by `dvc exp run`?); its drift from conf/ is not "
                    "checked", path)
        return
    overrides = [str(o) for o in record.get("overrides") or []]
    with tempfile.TemporaryDirectory(prefix="cnnvis-compose-") as tmp:
        compose(overrides, Path(tmp) / "params.yaml", conf)
        composed = yaml.safe_load((Path(tmp) / "params.yaml").read_text())
    drift = _differences(composed, data)
    if drift:
        again = " ".join(["python -m stages.compose", *overrides])
        raise ConfigError(f"{path}: differs from conf/ composed with {overrides or 'no overrides'} at "
                          f"{', '.join(drift[:3])}{' …' if len(drift) > 3 else ''}; params.yaml is generated: edit "
                          f"conf/ (or pass overrides) and run `{again}`")


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def check_writable(target: Path, *, directory: bool) -> list[Path]:
    """Fail now, before any work, if ``target`` cannot be written (one line, ``ConfigError``); returns the
    directories it had to create (removed again if the stage fails)."""
    existing = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{target}: cannot write there, {existing} is a file, not a directory; choose another path")
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()][::-1]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        _remove_empty(created)
        raise ConfigError(f"{target}: cannot write there ({e.strerror or e}); fix the permissions of "
                          f"{existing} or choose another path") from None
    if target.exists() and target.is_dir() != directory:
        _remove_empty(created)
        kind = "a directory" if target.is_dir() else "a file"
        raise ConfigError(f"{target}: is {kind}, but the stage writes {'a directory' if directory else 'a file'} "
                          "there; remove it or choose another path")
    return created


def _remove_empty(directories: list[Path]) -> None:
    for d in reversed(directories):  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()


def load_input(path: Path, spec: Input) -> Any:
    """``spec.load(path)``; a missing or unreadable file is one line naming it and what to do."""
    if not path.exists():
        if spec.made_by == "git":
            raise DataError(f"{path}: missing; it is committed with the project: restore it with `git checkout -- {path}`")
        how = f"`dvc repro {spec.made_by}`" if spec.made_by else "the stage that writes it (`dvc repro`)"
        raise DataError(f"{path}: missing; run {how} first")
    try:
        return spec.load(path)
    except CnnvisError:
        raise
    except Exception as e:  # zipfile.BadZipFile of a truncated npz, EOFError, pickle and decode errors, …
        detail = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{path}: unreadable ({type(e).__name__}{': ' + detail if detail else ''}); delete it and "
                        "rerun the stage that writes it (`dvc repro`)") from None


@contextlib.contextmanager
def staged_outputs(targets: Mapping[str, Path], specs: Mapping[str, Output]) -> Iterator[dict[str, Path]]:
    """Temporary paths next to every target; renamed over the targets together only when the block succeeds."""
    tmps: dict[str, Path] = {}
    try:
        for name, target in targets.items():
            stem = f".{target.name}.{os.getpid()}"
            if specs[name].directory:
                tmps[name] = Path(tempfile.mkdtemp(prefix=stem + ".", suffix=".tmp", dir=target.parent))
            else:
                fd, tmp = tempfile.mkstemp(prefix=stem + ".", suffix=".tmp" + target.suffix, dir=target.parent)
                os.close(fd)
                os.unlink(tmp)  # writers create it; a leftover empty file would look like a result
                tmps[name] = Path(tmp)
        yield tmps
        umask = os.umask(0)
        os.umask(umask)
        for name, tmp in tmps.items():
            target = targets[name]
            os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~umask)  # mkstemp/mkdtemp make private files
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(tmp, target)
    finally:
        for tmp in tmps.values():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
