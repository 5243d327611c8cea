"""Hydra sweep entry point: dvc.yaml's stage commands, once per job, in the job's own directory.

    python -m stages.sweep -m 'dataset=[fashion_mnist],[digits]' hardware=cpu 'seeds.list=[0,1,2]'
    python -m stages.sweep -m 'dataset=[digits]' 'seeds.list=[0],[1]' +launcher=joblib
    python -m stages.sweep -m 'dataset=[digits]' 'seeds.list=[0],[1]' +launcher=submitit_local
    python -m stages.sweep -m 'dataset=[cifar10]' hardware=cuda 'seeds.list=[0],[1],[2]' +launcher=slurm
    python -m stages.collect multirun/<date>/<time>

`dataset` is a multi-select group, so one job's value is a list: sweep over lists
(`[fashion_mnist],[digits]`), not names. Each job composes conf/ with its
overrides, writes that composition as `params.yaml` into its own output directory
(`multirun/...`, ignored by git and DVC) and runs there the per-dataset stages of
dvc.yaml in dependency order, each command as `dvc repro` runs it: in a shell, in
that directory, with this interpreter first on PATH. The workspace, dvc.lock and
the DVC cache are never touched. `+sweep.stages=[train-baseline]` limits the chain
(the stages it needs are added); the default is every `foreach` and `matrix` stage (the
`report` stage is one page for the workspace and is not run per job). Each job
writes `sweep.json` (overrides, threads, pid, attempt, per stage: command,
status and seconds), rewritten after every stage, for `stages.collect`.

dvc.yaml is resolved here (`resolve_stages`), not by DVC: DVC has no public API
that returns resolved stages (`dvc.api` reads data, params and experiments; the
resolver `dvc.parsing.DataResolver` and `Repo.index` are internal), and pinning
DVC to the minor releases whose internals match would hold back every DVC fix
for one helper. The resolver covers the templating dvc.yaml uses — `foreach` over
a mapping with `${key}` / `${item...}`, `matrix` (axes of plain values, or a
mapping's keys, as `${item.<axis>}`), and `${<params.yaml key>}` (a list indexed
as `${seeds.list.0}`) — and refuses anything else (`vars`, `wdir`, a list
`foreach`, an expression) with one line. tests/test_sweep.py compares it with DVC's own resolution of dvc.yaml
(names, commands, deps, outs, params), so a divergence fails a test.

Commands run as subprocesses, not in-process: a stage's resume key hashes the
project modules loaded in its process, so in-process it depended on which stages
had run before it in the same job, and a crash of one stage would take the job
process with it.

Threads: when the launcher runs k jobs at once on this machine (`+launcher=joblib`:
min(n_jobs, jobs); `+launcher=submitit_local`: every job of the batch), its
`ShareCores` callback sets CNNVIS_PARALLEL_JOBS=k before the jobs start, and each
job whose `hardware.threads` is 0 (all cores) and not set on the command line
writes `max(1, cores // k)` into its params.yaml. Slurm jobs get their own
allocation (`cpus_per_task`), so nothing is divided there.

Requeue (submitit): a job that times out on Slurm gets USR2 `signal_delay_s`
before the limit; submitit's handler resubmits the job with the same overrides
(up to `max_num_timeout` times) and the job's process exits. This module lets that
exit through (it is not a stage failure), and a rerun in the same directory reuses
the stages an earlier attempt finished with the same command, params values and
deps content; an interrupted training resumes from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import graphlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnvis import CnnvisError, ConfigError
from cnnvis.threads import PARALLEL_JOBS_VAR, available_cores, parallel_jobs, threads_per_job

ROOT = Path(__file__).resolve().parent.parent
DVC_YAML = ROOT / "dvc.yaml"
SWEEP_KEY = "sweep"  # sweep-only settings (+sweep.stages=...), never written to the job's params.yaml
SWEEP_SETTINGS = ("stages",)
RECORD_FILE = "sweep.json"
THREADS_KEY = "hardware.threads"
PARALLEL_LAUNCHERS = ("JoblibLauncher", "submitit_launcher.LocalLauncher")  # jobs at once on this machine
STOP_GRACE_S = 10  # seconds an interrupted stage gets to clean up before SIGKILL (Slurm's USR2 comes 120 s early)

log = logging.getLogger("cnnvis.sweep")


# --------------------------------------------------------------------------- dvc.yaml resolution

_TEMPLATE = re.compile(r"(\\)?\$\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
_STAGE_KEYS_REFUSED = ("vars", "wdir")


def _lookup(expr: str, context: Mapping[str, Any], where: str) -> Any:
    name = expr.strip()
    if not _NAME.fullmatch(name):
        raise ConfigError(f"dvc.yaml {where}: ${{{expr}}} is not a plain dotted name; the sweep's resolver "
                          "supports ${key}, ${item...} and ${<params.yaml key>} only")
    node: Any = context
    for part in name.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]  # ${seeds.list.0}: DVC indexes a list by a dotted number
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            raise ConfigError(f"dvc.yaml {where}: ${{{name}}} is not defined in params.yaml")
    return node


def _as_text(value: Any, expr: str, where: str) -> str:
    if isinstance(value, bool):  # DVC writes booleans as YAML does
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"dvc.yaml {where}: ${{{expr}}} is a {type(value).__name__}; only a string or a number can be "
                      "part of a longer string")


def _interpolate(value: Any, context: Mapping[str, Any], where: str) -> Any:
    """``value`` with every ``${name}`` replaced: a string that is exactly one template becomes the value itself
    (a mapping for ``foreach``), a longer string gets its text; ``\\${`` stays a literal ``${``."""
    if isinstance(value, dict):
        return {_interpolate(k, context, where): _interpolate(v, context, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, context, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _TEMPLATE.fullmatch(value)
    if whole and not whole.group(1):
        return _lookup(whole.group(2), context, where)

    def text(m: re.Match) -> str:
        if m.group(1):
            return m.group(0)[1:]
        return _as_text(_lookup(m.group(2), context, where), m.group(2).strip(), where)

    return _TEMPLATE.sub(text, value)


def resolve_stages(dvc_yaml: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages with ``foreach`` expanded and templates filled from ``workdir/params.yaml``, named as
    DVC names them (``<stage>@<key>``), in dvc.yaml's order."""
    doc = yaml.safe_load(dvc_yaml.read_text()) or {}
    if "vars" in doc:
        raise ConfigError(f"{dvc_yaml}: top-level `vars` is not supported by the sweep's resolver; "
                          "put the values in conf/ (they reach params.yaml)")
    params_file = workdir / "params.yaml"
    context = (yaml.safe_load(params_file.read_text()) or {}) if params_file.exists() else {}
    stages: dict[str, dict[str, Any]] = {}
    for name, spec in (doc.get("stages") or {}).items():
        if "matrix" in spec:
            stages.update(_matrix(name, spec, context))
            continue
        body = spec.get("do", {}) if "foreach" in spec else spec
        refused = [k for k in _STAGE_KEYS_REFUSED if k in spec or k in body]
        if refused:
            raise ConfigError(f"dvc.yaml stage {name}: `{refused[0]}` is not supported by the sweep's resolver")
        if "foreach" not in spec:
            stages[name] = _interpolate(spec, context, f"stage {name}")
            continue
        items = _interpolate(spec["foreach"], context, f"stage {name} foreach")
        if not isinstance(items, dict):
            raise ConfigError(f"dvc.yaml stage {name}: foreach over a {type(items).__name__} is not supported by "
                              "the sweep's resolver; iterate over a mapping (such as ${dataset})")
        for key, item in items.items():
            local = {**context, "key": key, "item": item}
            stages[f"{name}@{key}"] = _interpolate(body, local, f"stage {name}@{key}")
    return stages


def _matrix(name: str, spec: dict[str, Any], context: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A ``matrix`` stage expanded as DVC does: one stage per combination, ``${item.<axis>}`` its values, named
    ``<stage>@<v1>-<v2>…`` (a mapping axis iterates over its keys, as ``${dataset}`` does)."""
    body = {k: v for k, v in spec.items() if k != "matrix"}
    axes = {}
    for axis, values in spec["matrix"].items():
        values = _interpolate(values, context, f"stage {name} matrix")
        if isinstance(values, Mapping):
            values = list(values)
        if not isinstance(values, list) or any(isinstance(v, (Mapping, list)) for v in values):
            raise ConfigError(f"dvc.yaml stage {name}: matrix axis {axis} must be a list of plain values or a "
                              "mapping (its keys) for the sweep's resolver")
        axes[axis] = values
    out = {}
    for combo in itertools.product(*axes.values()):
        item = dict(zip(axes, combo, strict=True))
        key = "-".join(_as_text(v, axis, name) for axis, v in item.items())
        out[f"{name}@{key}"] = _interpolate(body, {**context, "item": item}, f"stage {name}@{key}")
    return out


def _paths(entries: Sequence[Any]) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (entries are a path or {path: options})."""
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def outputs(stage: Mapping[str, Any]) -> list[str]:
    return [p.rstrip("/") for key in ("outs", "metrics", "plots") for p in _paths(stage.get(key, []))]


def plan(stages: dict[str, dict[str, Any]], wanted: Sequence[str] | None) -> list[str]:
    """Names of the stages to run, upstream first: ``wanted`` (base names, default every
    per-dataset stage) plus every stage whose outs they depend on."""
    outs = {name: outputs(s) for name, s in stages.items()}

    def upstream(name: str) -> set[str]:
        deps = [d.rstrip("/") for d in _paths(stages[name].get("deps", []))]
        # an out inside a dep directory or a dep inside an out directory: DVC's edge rule
        return {other for other, os_ in outs.items() if other != name
                for o in os_ for d in deps if d == o or d.startswith(o + "/") or o.startswith(d + "/")}

    base = {name: name.split("@", 1)[0] for name in stages}
    if wanted is None:
        selected = {n for n in stages if "@" in n}
    else:
        unknown = sorted(set(wanted) - set(base.values()))
        if unknown:
            raise ConfigError(f"sweep.stages: unknown stage {unknown[0]!r}; dvc.yaml has: {', '.join(sorted(set(base.values())))}")
        selected = {n for n in stages if base[n] in wanted}
    graph = {n: upstream(n) for n in stages}
    todo, closure = list(selected), set()
    while todo:
        n = todo.pop()
        if n not in closure:
            closure.add(n)
            todo.extend(graph[n])
    order = list(stages)  # ties broken by dvc.yaml order
    sorter = graphlib.TopologicalSorter({n: sorted(graph[n] & closure, key=order.index) for n in sorted(closure, key=order.index)})
    return list(sorter.static_order())


def commands(stage: Mapping[str, Any]) -> list[str]:
    cmd = stage.get("cmd") or []
    return [cmd] if isinstance(cmd, str) else [str(c) for c in cmd]


# --------------------------------------------------------------------------- sweep settings and threads


def check_settings(settings: Mapping[str, Any] | None) -> list[str] | None:
    """The stages a ``sweep:`` section asks for (None: all), its keys and stage names checked against dvc.yaml."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SWEEP_SETTINGS))
    if unknown:
        raise ConfigError(f"sweep.{unknown[0]}: unknown key; allowed: {', '.join(SWEEP_SETTINGS)}")
    wanted = settings.get("stages")
    if wanted is None:
        return None
    if isinstance(wanted, str) or not isinstance(wanted, Sequence) or not all(isinstance(s, str) for s in wanted):
        raise ConfigError(f"sweep.stages = {wanted!r}: must be a list of dvc.yaml stage names, e.g. [train-baseline]")
    names = set((yaml.safe_load(DVC_YAML.read_text()) or {}).get("stages") or {})
    missing = sorted(set(wanted) - names)
    if missing:
        raise ConfigError(f"sweep.stages: unknown stage {missing[0]!r}; dvc.yaml has: {', '.join(sorted(names))}")
    return list(wanted)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _sweep_size(override: Any) -> int | None:
    """How many values a parsed Hydra override takes (1 for a plain one; None when not countable here)."""
    if not override.is_sweep_override():
        return 1
    if not override.is_discrete_sweep():
        return None  # interval sweeps: the basic sweeper refuses them
    from hydra.core.override_parser.types import Glob

    value = override.value()
    if isinstance(value, Glob):  # glob(...) over a config group: its options are conf/<group>/*.yaml
        group = ROOT / "conf" / override.get_key_element().lstrip("+~").split("@", 1)[0]
        return len(value.filter(sorted(p.stem for p in group.glob("*.yaml"))))
    return len(list(override.sweep_string_iterator()))


def count_jobs(overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None) -> int | None:
    """Jobs of a Hydra basic-sweeper multirun: the product of every key's number of values (the command line's
    value of a key replaces that of ``hydra.sweeper.params``), None if one is not countable."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(overrides)
    sizes: dict[str, int | None] = {}
    for o in OverridesParser.create().parse_overrides(given):
        sizes[o.get_key_element()] = _sweep_size(o)
    if any(s is None for s in sizes.values()):
        return None
    return math.prod(s for s in sizes.values() if s is not None)


def concurrent_jobs(hydra_cfg: Any, cores: int | None = None) -> int | None:
    """How many jobs of this multirun run at once on this machine (1: one at a time, or each on its own
    allocation); None when it cannot be known (an uncountable sweep under a launcher without a limit)."""
    cores = available_cores() if cores is None else cores
    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default=""))
    total = count_jobs(list(OmegaConf.select(hydra_cfg, "overrides.task", default=[]) or []),
                       OmegaConf.select(hydra_cfg, "sweeper.params", default=None))
    batch = OmegaConf.select(hydra_cfg, "sweeper.max_batch_size", default=None)
    if total is not None and batch:
        total = min(total, int(batch))
    if target.endswith(PARALLEL_LAUNCHERS[0]):
        n_jobs = int(OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=1))
        limit = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = every core, -2 = all but one
        return limit if total is None else min(limit, total)
    if target.endswith(PARALLEL_LAUNCHERS[1]):  # every job of a batch starts at once
        tasks = int(OmegaConf.select(hydra_cfg, "launcher.tasks_per_node", default=1) or 1)
        return None if total is None else total * tasks
    return 1


class ShareCores(Callback):
    """Before a multirun starts (in the launching process): the sweep settings checked (one line, exit 2), and
    CNNVIS_PARALLEL_JOBS set to the jobs that will share this machine's cores (times any value it already had),
    which the jobs' processes inherit."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_settings(OmegaConf.to_container(config[SWEEP_KEY], resolve=True) if SWEEP_KEY in config else None)
            outer = parallel_jobs()
            k = concurrent_jobs(config.hydra)
        except CnnvisError as e:
            _fail(str(e))
        if k is None:
            log.warning("sweep: cannot count the jobs that run at once; each takes every core unless "
                        "hardware.threads is set")
            return
        os.environ[PARALLEL_JOBS_VAR] = str(outer * k)
        log.info("sweep: %d job(s) at once share %d core(s): %d torch thread(s) each unless hardware.threads is set",
                 outer * k, available_cores(), threads_per_job(outer * k))


def job_threads(params: Mapping[str, Any], overrides: Sequence[str], jobs: int) -> int | None:
    """The torch threads to write into a job's params.yaml: this job's share of the cores when ``jobs`` share
    them and ``hardware.threads`` is 0 (all cores) without being set on the command line; None: leave it."""
    hardware = params.get("hardware") or {}
    explicit = any(_override_key(o) == THREADS_KEY for o in overrides)
    if jobs > 1 and not explicit and hardware.get("threads", 0) == 0:
        return threads_per_job(jobs)
    return None


# --------------------------------------------------------------------------- running a job


class StageFailed(RuntimeError):
    """A stage command exited non-zero; its own error is in the job's output."""


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    else:
        h.update(b"missing")
    return h.hexdigest()


def stage_key(stage: Mapping[str, Any], params: Mapping[str, Any], job_dir: Path) -> str:
    """What decides a stage's result, as DVC sees it: its definition, the values of its declared params and the
    content of its deps (an out of an earlier stage in the job directory, code in the repository)."""
    h = hashlib.sha256(json.dumps(stage, sort_keys=True, default=str).encode())
    for entry in stage.get("params") or []:
        value = OmegaConf.select(OmegaConf.create(dict(params)), entry) if isinstance(entry, str) else params
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        h.update(json.dumps([entry, value], sort_keys=True, default=str).encode())
    for dep in _paths(stage.get("deps", [])):
        where = job_dir / dep if (job_dir / dep).exists() else ROOT / dep
        h.update(dep.encode() + b"\0" + _tree_digest(where).encode())
    return h.hexdigest()[:16]


def _save_record(job_dir: Path, record: dict[str, Any]) -> None:
    tmp = job_dir / f".{RECORD_FILE}.tmp"  # renamed over: a kill mid-write never leaves half a record
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, job_dir / RECORD_FILE)


def _earlier_attempt(job_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((job_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _stage_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` = this interpreter
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)  # this checkout's code
    return env


def run_command(cmd: str, cwd: Path, env: Mapping[str, str]) -> int:
    """``cmd`` in a shell, as DVC runs it; its exit code. Interrupted (Ctrl-C, submitit's requeue exit), the
    command's whole process group gets SIGINT (a stage then removes its temporary outputs) and, if it is still
    there after STOP_GRACE_S, SIGKILL: killing the shell alone would leave the stage running beside the rerun."""
    proc = subprocess.Popen(cmd, shell=True, cwd=cwd, env=dict(env), start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        for sig in (signal.SIGINT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=STOP_GRACE_S)
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def run_job(params: dict[str, Any], job_dir: Path, wanted: Sequence[str] | None, overrides: Sequence[str] = (),
            parallel: int = 1) -> dict:
    """Write ``params`` as the job's params.yaml and run the planned stages' commands in ``job_dir``; stages an
    earlier attempt in the same directory finished with the same key are reused."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    stages = resolve_stages(DVC_YAML, job_dir)
    names = plan(stages, wanted)
    earlier = _earlier_attempt(job_dir)
    done = {s["stage"]: s["key"] for s in earlier.get("stages", []) if s.get("status") == "ok" and s.get("key")}
    record: dict[str, Any] = {
        "overrides": list(overrides), "datasets": list(params.get("dataset") or {}),
        "threads": (params.get("hardware") or {}).get("threads"), "parallel_jobs": parallel,
        "pid": os.getpid(), "attempt": int(earlier.get("attempt", 0)) + 1, "started": round(time.time(), 3),
        "stages": [], "status": "running"}
    env = _stage_env()
    try:
        for name in names:
            stage = stages[name]
            entry: dict[str, Any] = {"stage": name, "status": "running", "key": stage_key(stage, params, job_dir),
                                     "cmd": commands(stage)}
            record["stages"].append(entry)
            if done.get(name) == entry["key"] and all((job_dir / o).exists() for o in outputs(stage)):
                entry.update(status="ok", reused=True, seconds=0.0)
                continue
            _save_record(job_dir, record)
            t0 = time.perf_counter()
            try:
                for cmd in commands(stage):
                    code = run_command(cmd, job_dir, env)
                    if code:
                        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
                        raise StageFailed(f"stage {name} {how} (its error is printed above): {cmd}")
            except Exception:
                entry["status"] = "failed"
                raise
            except BaseException:  # Ctrl-C, or submitit's exit after it requeued the job: not a failure of the stage
                entry["status"] = "interrupted"
                raise
            finally:
                entry["seconds"] = round(time.perf_counter() - t0, 2)
            entry["status"] = "ok"
            _save_record(job_dir, record)
        record["status"] = "ok"
    except Exception as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    except BaseException as e:
        record.update(status="interrupted", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        record["finished"] = round(time.time(), 3)
        _save_record(job_dir, record)
    return record


def _fail(message: str) -> None:
    print(f"sweep: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    params = OmegaConf.to_container(cfg, resolve=True)
    overrides = list(hc.overrides.task)
    try:
        wanted = check_settings(params.pop(SWEEP_KEY, None))
        jobs = parallel_jobs()
    except CnnvisError as e:
        _fail(str(e))
    target = str(OmegaConf.select(hc.launcher, "_target_", default=""))
    if jobs == 1 and PARALLEL_JOBS_VAR not in os.environ and target.endswith(PARALLEL_LAUNCHERS):
        log.warning("sweep: %s without its conf/launcher file: the jobs run at once and each takes every core; "
                    "use +launcher=joblib or +launcher=submitit_local, or set hardware.threads", target.rsplit(".", 1)[-1])
    threads = job_threads(params, overrides, jobs)
    if threads is not None:
        params["hardware"]["threads"] = threads
    record = run_job(params, Path(hc.runtime.output_dir), wanted, overrides=overrides, parallel=jobs)
    log.info("job %s (%s thread(s)): %s", hc.job.get("num", 0), record["threads"] or "all",
             ", ".join(f"{s['stage']} {s.get('seconds', '?')} s{' (reused)' if s.get('reused') else ''}"
                       for s in record["stages"]))


if __name__ == "__main__":
    main()
