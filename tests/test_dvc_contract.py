"""dvc.yaml is the map of the system: every stage's params, inputs and outputs match what its code reads and writes."""

from __future__ import annotations

import ast
import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

CHECKS = ("params-check",)  # stages that check the workspace and produce nothing (no Stage spec)


def dvc_stages():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in doc["stages"].items():
        if name not in CHECKS:
            yield name, stage.get("do", stage), "foreach" in stage or "matrix" in stage


def expand(value: str, key: str, seed: str = "0") -> str:
    """A foreach (``${key}``) or matrix (``${item.dataset}``, ``${item.seed}``) template for one dataset and seed;
    ``${seeds.list.0}``, the primary seed, is seed 0 of the default seed list."""
    return (value.replace("${key}", key).replace("${item.dataset}", key).replace("${item.seed}", seed)
            .replace("${seeds.list.0}", seed))


def paths(entries) -> set[str]:
    out = set()
    for e in entries or []:
        out.add(next(iter(e)) if isinstance(e, dict) else e)
    return out


def stage_module(cmd: str):
    tokens = shlex.split(cmd)
    assert tokens[:2] == ["python", "-m"], f"stage cmd must be `python -m stages.<name> ...`: {cmd}"
    return importlib.import_module(tokens[2]), tokens[3:]


def flag_values(args: list[str]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for i, tok in enumerate(args):
        if tok.startswith("--"):
            flag, _, inline = tok.partition("=")
            vals = [inline] if inline else []
            j = i + 1
            while not inline and j < len(args) and not args[j].startswith("--"):
                vals.append(args[j])
                j += 1
            values[flag] = vals
    return values


STAGES = list(dvc_stages())


@pytest.mark.parametrize(("name", "stage", "foreach"), STAGES, ids=[s[0] for s in STAGES])
def test_params_declared_match(name, stage, foreach):
    key = "fashion_mnist"
    module, _ = stage_module(expand(stage["cmd"], key))
    declared = {p.format(dataset=key) for p in module.STAGE.params}
    listed = {expand(p, key) if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])}
    assert declared == listed, f"{name}: code reads {sorted(declared)} but dvc.yaml lists {sorted(listed)}"
    assert "hardware" not in listed, "hardware is execution-only and must not invalidate results"


@pytest.mark.parametrize(("name", "stage", "foreach"), STAGES, ids=[s[0] for s in STAGES])
def test_paths_in_cmd_are_deps_or_outs(name, stage, foreach):
    key = "fashion_mnist"
    module, args = stage_module(expand(stage["cmd"], key))
    flags = flag_values(args)
    deps = {expand(d, key) for d in paths(stage.get("deps"))}
    outs = set()
    for section in ("outs", "metrics", "plots"):
        outs |= {expand(o, key) for o in paths(stage.get(section))}
    assert f"{module.__name__.replace('.', '/')}.py" in deps, f"{name}: its own code must be a dep"
    spec = module.STAGE
    for flag in map(spec.flag, spec.inputs):
        for value in flags.get(flag, []):
            assert value in deps, f"{name}: {flag} {value} is read but not a dep"
    for out_name, out in spec.all_outputs.items():
        flag = spec.flag(out_name)
        assert flag in flags or not out.required, f"{name}: output flag {flag} missing from cmd"
        for value in flags.get(flag, []):
            assert value in outs, f"{name}: {flag} {value} is written but not an out/metric/plot"
    known = {spec.flag(n) for n in (*spec.inputs, *spec.all_outputs, *spec.scratch)} | {"--dataset", "--params"}
    if spec.seeded:  # a stage that trains with the seed: run once per seed of the matrix, the seed in its cmd
        known.add("--seed")
        assert "--seed ${item.seed}" in stage["cmd"], f"{name}: a seeded stage's cmd passes --seed ${{item.seed}}"
    if "record" in spec.all_outputs:  # the run record is declared, but never as a metric
        assert flags.get("--record"), f"{name}: writes metrics, so its cmd must name a --record file"
        metrics = {expand(m, key) for m in paths(stage.get("metrics"))}
        assert not set(flags["--record"]) & metrics, f"{name}: the run record must be an out, not a metric"
    assert set(flags) <= known, f"{name}: cmd flags {sorted(set(flags) - known)} are not in the stage's spec"


PACKAGES = ("cnnvis", "stages")


def module_file(name: str) -> Path | None:
    """The project file of module ``name`` (a package's ``__init__.py``), or None if it is not one."""
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


DYNAMIC = ("import_module", "__import__", "spec_from_file_location", "run_module", "run_path")


def dynamic_imports(path: Path) -> list[str]:
    """Calls in ``path`` that import a module by a computed name (importlib, __import__, runpy): code DVC cannot see."""
    return [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and (getattr(node.func, "attr", None) in DYNAMIC
                                              or getattr(node.func, "id", None) in DYNAMIC)]


def project_imports(path: Path) -> set[Path]:
    """Project files ``path`` imports anywhere in its body (function-local imports too) and their packages."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    files = set()
    for name in names:
        parts = name.split(".")
        if parts[0] in PACKAGES:
            files |= {f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i]))) is not None}
    return files


def code_closure(module: str) -> set[str]:
    """Every project file the stage module can execute: its transitive imports, as paths relative to ROOT."""
    seen: set[Path] = set()
    todo = [module_file(module)]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(project_imports(f) - seen)
    return {f.relative_to(ROOT).as_posix() for f in seen}


def loaded_on_import(module: str) -> set[str]:
    """The project files Python actually loads when it imports ``module`` (a fresh interpreter): catches what an
    import hook, a plugin entry point or a computed import name would add beyond the static closure."""
    code = (f"import json, sys; import {module}; print(json.dumps(sorted(getattr(m, '__file__', None) or '' "
            "for m in list(sys.modules.values()))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = {Path(f).resolve() for f in json.loads(out) if f}
    return {f.relative_to(ROOT).as_posix() for f in files if f.is_relative_to(ROOT) and f.relative_to(ROOT).parts[0]
            in PACKAGES}


def covered(file: str, deps: set[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize(("name", "stage", "foreach"), STAGES, ids=[s[0] for s in STAGES])
def test_code_deps_are_exactly_the_code_a_stage_runs(name, stage, foreach):
    """A change to any project file a stage imports (transitively) must rerun it, and only those files are deps."""
    module = stage["cmd"].split()[2]
    closure = code_closure(module)
    dynamic = [d for f in sorted(closure) for d in dynamic_imports(ROOT / f)]
    assert not dynamic, f"{name}: imports by computed name at {dynamic}; import modules by name so DVC sees them"
    hidden = sorted(loaded_on_import(module) - closure)
    assert not hidden, f"{name}: importing it loads {hidden}, which no import statement names"
    deps = {d for d in paths(stage.get("deps")) if d.split("/")[0] in PACKAGES}
    missing = sorted(f for f in closure if not covered(f, deps))
    assert not missing, f"{name}: runs {missing} but dvc.yaml does not list them as deps"
    stale = sorted(d for d in deps if not any(covered(f, {d}) for f in closure))
    assert not stale, f"{name}: dvc.yaml lists {stale} as deps but the stage never imports them"


def test_code_closure_follows_local_and_relative_imports(tmp_path):
    closure = code_closure("stages.report")
    assert {"stages/report.py", "stages/_runner.py", "cnnvis/report.py", "cnnvis/__init__.py"} <= closure
    assert "cnnvis/pruning.py" not in closure  # the report reads metrics files, never the pruning code


def test_params_yaml_matches_conf():
    """params.yaml is generated: it must equal the composition of conf/ (no hand edits, no drift)."""
    result = subprocess.run([sys.executable, "-m", "stages.compose", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_check_detects_drift(tmp_path):
    out = tmp_path / "params.yaml"
    subprocess.run([sys.executable, "-m", "stages.compose", "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    out.write_text(out.read_text().replace("epochs:", "epochs: 99 #", 1))
    result = subprocess.run([sys.executable, "-m", "stages.compose", "--check", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "differs from the composition of conf/" in result.stderr


def test_compose_bad_override_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stages.compose", "--out", str(tmp_path / "p.yaml"), "model=vgg"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("compose: error:") and "vgg" in result.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_every_experiment_composes(tmp_path):
    for exp in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        subprocess.run([sys.executable, "-m", "stages.compose", "--out", str(tmp_path / f"{exp}.yaml"), f"experiment={exp}"],
                       cwd=ROOT, check=True, capture_output=True)
        assert yaml.safe_load((tmp_path / f"{exp}.yaml").read_text())["dataset"]


def test_dynamic_import_detection_finds_importlib(tmp_path):
    probe = ROOT / "stages" / "_probe_dynamic_tmp.py"
    probe.write_text("import importlib\nm = importlib.import_module('stages.' + 'report')\n")
    try:
        assert dynamic_imports(probe) == ["stages/_probe_dynamic_tmp.py:2"]
    finally:
        probe.unlink()


def test_no_stage_imports_another_stage():
    """What two stages share lives in the library (or the runner), never in another stage's module."""
    stage_modules = {f"stages/{stage['cmd'].split()[2].split('.')[1]}.py" for _, stage, _ in STAGES}
    for _, stage, _ in STAGES:
        own = f"stages/{stage['cmd'].split()[2].split('.')[1]}.py"
        others = sorted(f.relative_to(ROOT).as_posix() for f in project_imports(ROOT / own))
        assert not set(others) & (stage_modules - {own}), f"{own} imports {sorted(set(others) & stage_modules)}"


def test_params_check_stage_runs_the_recorded_composition_check(tmp_path):
    """`dvc repro` starts with params-check: it fails on a hand-edited params.yaml, passes on the composition it
    records (here with an override) and on a file `dvc exp run` composed (no record: DVC's own composition)."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["params-check"]
    assert {"conf", "params.yaml"} <= set(doc["deps"])
    out = tmp_path / "params.yaml"
    subprocess.run([sys.executable, "-m", "stages.compose", "--out", str(out), "experiment=ci"], cwd=ROOT, check=True,
                   capture_output=True)
    cmd = [sys.executable, *shlex.split(doc["cmd"])[1:], "--params", str(out)]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    edited = out.read_text().replace("epochs: 2", "epochs: 3", 1)
    out.write_text(edited)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "differs from the composition of conf/" in result.stderr
    out.write_text(edited.split("_compose:")[0])  # as `dvc exp run -S train.epochs=3 ...` writes it
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "no composition record" in result.stdout
