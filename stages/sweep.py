"""Hydra sweep entry point: the DVC stages' own functions, once per job, in the job's directory.

    python -m stages.sweep -m 'dataset=[fashion_mnist],[digits]' hardware=cpu train.seed=0,1,2
    python -m stages.sweep -m 'dataset=[digits]' train.seed=0,1 +launcher=joblib hardware.threads=1
    python -m stages.sweep -m 'dataset=[cifar10]' hardware=cuda train.seed=0,1,2 +launcher=slurm
    python -m stages.collect multirun/<date>/<time>

`dataset` is a multi-select group, so one job's value is a list: sweep over lists
(`[fashion_mnist],[digits]`), not names. Each job composes conf/ with its
overrides, writes that composition as `params.yaml` into its own output directory
(`multirun/...`, ignored by git and DVC) and runs, there, the per-dataset stages
of dvc.yaml in dependency order: the commands are dvc.yaml's own, resolved by
DVC's resolver against the job's params.yaml, and each `python -m stages.X args`
is called in-process as `stages.X.main(args)`. So a sweep runs exactly what
`dvc repro` runs, without touching the workspace, dvc.lock or the DVC cache.

`+sweep.stages=[train-baseline]` limits the chain (the stages it needs are added);
the default is every `foreach`/`matrix` stage of dvc.yaml (the `report` stage is a
single page for the workspace and is not run per job). Each job writes
`sweep.json` (its overrides, and per stage: status and seconds) for
`stages.collect`.
"""

from __future__ import annotations

import contextlib
import graphlib
import importlib
import json
import logging
import shlex
import time
import traceback
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf

from cnnvis import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DVC_YAML = ROOT / "dvc.yaml"
SWEEP_KEY = "sweep"  # sweep-only settings (+sweep.stages=...), never written to the job's params.yaml

log = logging.getLogger("cnnvis.sweep")


def resolve_stages(dvc_yaml: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages with foreach/matrix expanded against ``workdir/params.yaml`` (DVC's own resolver)."""
    from dvc.fs import LocalFileSystem
    from dvc.parsing import DataResolver

    repo = types.SimpleNamespace(fs=LocalFileSystem(), config={})  # all DataResolver reads of a Repo
    with contextlib.chdir(workdir):
        return DataResolver(repo, ".", yaml.safe_load(dvc_yaml.read_text())).resolve()["stages"]


def _paths(entries: Sequence[Any]) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (entries are a path or {path: options})."""
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def plan(stages: dict[str, dict[str, Any]], wanted: Sequence[str] | None) -> list[str]:
    """Names of the stages to run, upstream first: ``wanted`` (base names, default every
    per-dataset stage) plus every stage whose outs they depend on."""
    outs = {name: [p.rstrip("/") for key in ("outs", "metrics", "plots") for p in _paths(s.get(key, []))]
            for name, s in stages.items()}

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


def stage_calls(cmd: str | list[str]) -> list[tuple[str, list[str]]]:
    """``python -m stages.X args`` → [("stages.X", args)]; anything else is refused with the reason."""
    calls = []
    for line in [cmd] if isinstance(cmd, str) else cmd:
        argv = shlex.split(line)
        if len(argv) < 3 or argv[0] not in ("python", "python3") or argv[1] != "-m" or not argv[2].startswith("stages."):
            raise ConfigError(f"sweep: cannot run {line!r} in-process; stage commands must be `python -m stages.<name> ...`")
        calls.append((argv[2], argv[3:]))
    return calls


def run_job(params: dict[str, Any], job_dir: Path, wanted: Sequence[str] | None, overrides: Sequence[str] = ()) -> dict:
    """Write ``params`` as the job's params.yaml and run the planned stages in ``job_dir``."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    stages = resolve_stages(DVC_YAML, job_dir)
    record: dict[str, Any] = {"overrides": list(overrides), "datasets": list(params.get("dataset") or {}),
                              "stages": [], "status": "ok"}
    try:
        with contextlib.chdir(job_dir):
            for name in plan(stages, wanted):
                t0 = time.perf_counter()
                entry = {"stage": name, "status": "ok"}
                record["stages"].append(entry)
                try:
                    for module, args in stage_calls(stages[name]["cmd"]):
                        if "--params" not in args:
                            args = [*args, "--params", "params.yaml"]
                        try:
                            importlib.import_module(module).main(args)
                        except SystemExit as e:  # stage_main turns a user error into exit 2 after printing it
                            if e.code not in (0, None):
                                raise RuntimeError(f"stage {name} exited with {e.code} (its error is printed above)") from None
                except Exception:
                    entry["status"] = "failed"
                    raise
                finally:
                    entry["seconds"] = round(time.perf_counter() - t0, 2)
    except Exception as e:
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()
        raise
    finally:
        (job_dir / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    params = OmegaConf.to_container(cfg, resolve=True)
    sweep = params.pop(SWEEP_KEY, None) or {}
    unknown = sorted(set(sweep) - {"stages"})
    if unknown:
        raise ConfigError(f"sweep.{unknown[0]}: unknown key; allowed: stages")
    wanted = sweep.get("stages")
    record = run_job(params, Path(hc.runtime.output_dir), list(wanted) if wanted is not None else None,
                     overrides=list(hc.overrides.task))
    log.info("job %s: %s", hc.job.get("num", 0), ", ".join(f"{s['stage']} {s.get('seconds', '?')} s" for s in record["stages"]))


if __name__ == "__main__":
    main()
