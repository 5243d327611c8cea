"""Calibrate the ci regression: run the ci DAG for several seeds under several CPU instruction sets, measure
every regression metric's spread and write the expected values with per-metric tolerances.

    .venv/bin/python -m tests.calibrate                        # seeds 0-4 × ISAs native, avx2; 2 runs at a time
    .venv/bin/python -m tests.calibrate --seeds 0 1 2 3 --isa native avx2 sse4 --jobs 1
    .venv/bin/python -m tests.calibrate --full-only            # only full_metrics.yaml, from the committed results

Each run is `dvc repro` of experiment=ci (as the test runs it) in its own copy of one snapshot of the working
tree (every run sees the same code), with every ``seed`` of the composed params set to the run's seed, the
pipeline's ``seeds.list`` shifted to start at it (its per-seed files named by position: ``by_position``) and
the ISA variables of ``tests.pipeline.ISA_ENV`` set. Every metric of ``tests.pipeline.collect_metrics`` becomes one
row per run (pandas); per metric: the expected value (the seed-0 native run: what the test's own run
reproduces), n, mean, sample sd, the largest deviation from the expected value (over all runs, and between
ISAs at the same seed), and the tolerance max(floor, k·sd). tests/expected/ci_runs.csv keeps the rows.

Then tests/expected/full_metrics.yaml: the committed full-run metrics (reports/metrics, from `make repro`)
with tolerances derived from the same measurement (see ``full_tolerances``).

Runs are cached under --workdir by code (tests.pipeline.code_id), seed and ISA: a rerun on unchanged code
only runs what is missing. The calibration is not part of the test suite; its output is committed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from tests.pipeline import (
    CI_EXPECTED,
    CI_RUNS,
    FULL_EXPECTED,
    ISA_ENV,
    ROOT,
    ci_repro,
    code_id,
    collect_metrics,
    copy_repo,
    cpu_capability,
    is_error,
    metric_leaves,
    points_per_unit,
    run,
    write_expected,
)

REFERENCE = (0, "native")  # the run the test reproduces: default seeds, whatever the CPU has

# k·sd with k = 4: for n ≤ 9 runs no run can lie more than sqrt(2(n-1)) ≤ 4 sample sds from another, so the
# tolerance covers every measured deviation whatever the sample; a floor because a metric that did not move
# in n runs (sd 0) can still move by one test image on another CPU. DROP: the drop a guard must catch.
K = 4.0
FLOOR_POINTS = 1.0
DROP_POINTS = 3.0
FULL_FLOOR_POINTS = 0.5


# ----------------------------------------------------------------------------------------------- runs
def snapshot_of(dest: Path, commit: str | None) -> Path:
    """The working tree as the test copies it (``commit`` None), or the files of ``commit``, into ``dest``."""
    if commit is None:
        return copy_repo(dest)
    export = Path(tempfile.mkdtemp(prefix="export-", dir=dest.parent))
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(export)], input=archive, check=True)
    git = ["git", "-c", "user.name=cnnvis-calibrate", "-c", "user.email=calibrate@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=export, check=True)
    subprocess.run(git + ["add", "-A"], cwd=export, check=True)
    subprocess.run(git + ["commit", "-q", "-m", commit], cwd=export, check=True)
    copy_repo(dest, export)
    shutil.rmtree(export, ignore_errors=True)
    return dest


def seed_keys(params: dict, prefix: str = "") -> list[str]:
    """Dotted paths of every ``seed`` in the composed params (not ``seeds``, a count)."""
    keys = []
    for k, v in params.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            keys += seed_keys(v, path)
        elif k == "seed" and isinstance(v, int) and not isinstance(v, bool):
            keys.append(path)
    return keys


def by_position(path: str, seed_list: list[int]) -> str:
    """``…/seeds/<seed>/…`` named by the seed's position in the run's seed list (``…/seeds/0/…``: its first), so
    that runs with shifted seed lists compare file by file with the test's own run (seeds 0, 1, …)."""
    parts = path.split("/")
    if "seeds" in parts[:-1] and parts[parts.index("seeds") + 1].isdigit():
        i = parts.index("seeds") + 1
        parts[i] = str(seed_list.index(int(parts[i])))
    return "/".join(parts)


def run_one(snapshot: Path, cache: Path, seed: int, isa: str, keys: list[str], keep: bool) -> dict:
    """One ci run (cached): {seed, isa, capability, seconds, metrics: {file: json}}."""
    done = cache / f"{isa}-seed{seed}.json"
    if done.exists():
        record = json.loads(done.read_text())
        print(f"  {isa:>6} seed {seed}: cached ({record['seconds']:.0f} s when run)", flush=True)
        return record
    repo = copy_repo(Path(tempfile.mkdtemp(prefix=f"ci-{isa}-seed{seed}-", dir=cache)), snapshot)
    n = len(yaml.safe_load((snapshot / "conf" / "experiment" / "ci.yaml").read_text())["seeds"]["list"])
    seed_list = [seed + i for i in range(n)]  # the pipeline's seeds, shifted with the run's seed
    overrides = (*(f"{k}={seed}" for k in keys), f"seeds.list=[{','.join(map(str, seed_list))}]")
    t0 = time.perf_counter()
    out = ci_repro(repo, overrides, isa=isa)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"ci run {isa} seed {seed} failed in {repo}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    metrics = {by_position(str(f.relative_to(repo)), seed_list): json.loads(f.read_text())
               for f in sorted((repo / "reports" / "metrics").rglob("*.json"))}
    record = {"seed": seed, "isa": isa, "capability": cpu_capability(isa), "seconds": round(seconds, 1),
              "overrides": list(overrides), "metrics": metrics}
    done.write_text(json.dumps(record))
    if not keep:
        shutil.rmtree(repo, ignore_errors=True)
    print(f"  {isa:>6} seed {seed}: {seconds:.0f} s", flush=True)
    return record


def seed_targets(repo: Path, seeds: list[int]) -> list[str]:
    """The stages of ``repo``'s DAG that need no training seed outside ``seeds``: the per-seed stages of those
    seeds and every other stage whose inputs, transitively, come from none of the left-out ones (e.g. visualize,
    on the primary seed; not the seeds stage or Table I, which read every seed)."""
    from stages.sweep import _paths, outputs, resolve_stages

    stages = resolve_stages(repo / "dvc.yaml", repo)
    keys = {str(s) for s in seeds}
    excluded = {name for name in stages if (m := re.search(r"-(\d+)$", name)) and m.group(1) not in keys}

    def within(a: str, b: str) -> bool:  # one path is the other or inside it (a dep may be a directory of outs)
        return a == b or a.startswith(b + "/") or b.startswith(a + "/")

    for name, st in stages.items():  # dvc.yaml order is upstream first
        deps = [d.rstrip("/") for d in _paths(st.get("deps", []))]
        if any(within(d, out) for other in list(excluded) for out in outputs(stages[other]) for d in deps):
            excluded.add(name)
    return [name for name in stages if name not in excluded]


def run_full(snapshot: Path, cache: Path, isa: str, keep: bool, seeds: list[int] | None = None) -> dict:
    """One full `dvc repro` (the committed params, as `make repro`) under ``isa`` (cached): {isa, capability,
    seconds, targets, metrics: {file: json}}. ``seeds``: only the stages of those training seeds (``seed_targets``;
    the record names them), for a machine on which the whole DAG takes too long."""
    done = cache / f"full-{isa}.json"
    if done.exists():
        return json.loads(done.read_text())
    unfinished = sorted(cache.glob(f"full-{isa}-*/dvc.lock"))  # a killed run: `dvc repro` continues it
    repo = unfinished[0].parent if unfinished else copy_repo(Path(tempfile.mkdtemp(prefix=f"full-{isa}-", dir=cache)), snapshot)
    targets = seed_targets(repo, seeds) if seeds is not None else []
    print(f"  full run {isa} in {repo}{' (continued)' if unfinished else ''}"
          + (f", seeds {seeds}: {len(targets)} stages" if seeds is not None else ""), flush=True)
    t0 = time.perf_counter()
    out = run(["dvc", "repro", *targets], repo, timeout=6 * 3600, isa=isa)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"full run {isa} failed in {repo}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    metrics = {str(f.relative_to(repo)): json.loads(f.read_text())
               for f in sorted((repo / "reports" / "metrics").rglob("*.json"))}
    record = {"isa": isa, "capability": cpu_capability(isa), "seconds": round(seconds, 1), "continued": bool(unfinished),
              "targets": targets or "all", "metrics": metrics}
    done.write_text(json.dumps(record))
    if not keep:
        shutil.rmtree(repo, ignore_errors=True)
    print(f"  full run {isa}: {seconds / 60:.1f} min", flush=True)
    return record


def rows(records: list[dict]) -> pd.DataFrame:
    """One row per run × metric (the leaves ``collect_metrics`` takes)."""
    out = []
    for r in records:
        for file, doc in r["metrics"].items():
            for key, value in metric_leaves(doc).items():
                out.append({"seed": r["seed"], "isa": r["isa"], "capability": r["capability"], "file": file,
                            "key": key, "value": value})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------- analysis
def spread(df: pd.DataFrame, k: float = K, floor_points: float = FLOOR_POINTS, drop_points: float = DROP_POINTS) -> pd.DataFrame:
    """Per metric (file, key): expected (the REFERENCE run), n, mean, sd, max_dev, the seed and ISA spreads,
    the tolerance and whether it guards against a ``drop_points`` drop."""
    seed0, isa0 = REFERENCE
    ref = df[(df.seed == seed0) & (df.isa == isa0)].set_index(["file", "key"])["value"].rename("expected")
    g = df.groupby(["file", "key"])["value"]
    stats = pd.DataFrame({"n": g.count(), "mean": g.mean(), "sd": g.std(ddof=1)}).join(ref, how="inner")
    dev = df.join(ref, on=["file", "key"], how="inner")
    dev["dev"] = (dev["value"] - dev["expected"]).abs()
    stats["max_dev"] = dev.groupby(["file", "key"])["dev"].max()
    native = df[df.isa == isa0].groupby(["file", "key"])["value"]
    stats["n_seeds"], stats["seed_sd"] = native.count(), native.std(ddof=1)
    wide = df.pivot_table(index=["file", "key", "seed"], columns="isa", values="value")
    others = [c for c in wide.columns if c != isa0]
    if others and isa0 in wide.columns:
        isa_dev = wide[others].sub(wide[isa0], axis=0).abs().max(axis=1).groupby(["file", "key"])
        stats["isa_pairs"], stats["isa_max_dev"] = isa_dev.count(), isa_dev.max()
    else:
        stats["isa_pairs"], stats["isa_max_dev"] = 0, float("nan")
    unit = pd.Series([points_per_unit(key) for _, key in stats.index], index=stats.index)
    stats["sd"] = stats["sd"].fillna(0.0)
    stats["tolerance"] = (k * stats["sd"]).clip(lower=floor_points / unit)
    stats["check"] = ["lower" if is_error(key) else "higher" for _, key in stats.index]
    stats["guard"] = stats["tolerance"] < drop_points / unit
    return stats


def expected_doc(stats: pd.DataFrame) -> dict:
    metrics: dict = {}
    for (file, key), s in stats.iterrows():
        entry = {"expected": float(s.expected), "tolerance": _r(s.tolerance), "check": s.check, "guard": bool(s.guard),
                 "n": int(s.n), "mean": _r(s["mean"]), "sd": _r(s.sd), "max_dev": _r(s.max_dev),
                 "seed_sd": _r(s.seed_sd), "isa_max_dev": _r(s.isa_max_dev)}
        metrics.setdefault(file, {})[key] = entry
    return metrics


def _r(x) -> float | None:
    return None if x is None or pd.isna(x) else round(float(x), 4)


def _name(file: str, key: str) -> str:
    seed = re.search(r"/seeds/(\d+)/", file)
    return f"{Path(file).stem}{f' (seed {seed.group(1)})' if seed else ''}:{key}"


HEADLINE = (  # the results a reader quotes; the summary lists them whatever their status
    ("baseline.json", "test.top1"), ("adjusted.json", "test.top1"), ("adjusted.json", "control.top1"),
    ("encdec.json", "test.top1"), ("encdec.json", "resnet18.test.top1"), ("prune.json", "pruned.error_masked"),
    ("prune.json", "pruned.error_unpruned"), ("perturbation.json", "rows[perturbation=clean,model=baseline].top1"),
    ("perturbation.json", "rows[perturbation=blur3,model=baseline].top1"),
    ("perturbation.json", "rows[perturbation=blur3,model=pruned].top1"),
)


def headline(stats: pd.DataFrame) -> pd.DataFrame:
    keep = [(f, k) for f, k in stats.index if (Path(f).name, k) in HEADLINE]
    return stats.loc[keep]


def ci_header(stats: pd.DataFrame, runs: pd.DataFrame, command: str, code: str, k: float, floor: float, drop: float) -> str:
    worst = (stats.max_dev / stats.tolerance).idxmax()
    n = int(stats.n.max())
    moved = stats[stats.sd > 0]
    ratio = moved.max_dev / moved.sd
    unit = pd.Series([points_per_unit(key) for _, key in stats.index], index=stats.index)
    floored = stats[k * stats.sd < floor / unit]
    changed = stats[stats.isa_max_dev > 0]
    isa_worst = (stats.isa_max_dev / stats.tolerance).idxmax() if len(changed) else None
    guards = stats[stats.guard]
    lines = [
        f"Expected ci metrics and their tolerances, measured by `{command}`:",
        f"{len(runs)} runs of `dvc repro` with experiment=ci (seeds {', '.join(map(str, sorted(runs.seed.unique())))}: every seed",
        "of the params set to it; ISAs " + ", ".join(f"{i} ({c} kernels)" for i, c in runs.groupby("isa", sort=False).capability.first().items())
        + f"), code {code}.",
        "Do not edit: rerun the command after an intended change of results.",
        "",
        "Per metric: expected = the seed-0 native run (the run the test repeats); n, mean and sd (sample, n-1) over all",
        "runs; max_dev = the largest |run - expected|; seed_sd = sd over the seeds of the native runs; isa_max_dev = the",
        "largest |emulated ISA - native| at the same seed (the difference another CPU makes).",
        f"tolerance = max(floor, k*sd), k = {k:g}, floor = {floor:g} point ({floor / 100:g} for a relative error, a fraction).",
        "check: higher = may not fall by more than the tolerance (accuracies, deltas), lower = may not rise (error rates);",
        "a rise of an accuracy is not a regression (it calls for a new calibration, not a failure).",
        f"guard: tolerance < {drop:g} points, so a {drop:g}-point drop fails (test_ci_check_catches_a_3_point_drop). guard false:",
        f"the metric's own seed/ISA spread is wider than {drop:g} points (small subsets: 300 perturbed images, 200 pruned,",
        "20 per class; random pruning); it is still checked, but only a collapse fails it: not a regression guard.",
        "",
        f"Why k = {k:g} and the floor: the seed spread is the upper end of another CPU's (a different ISA reorders",
        "float sums and, through training, changes the trajectory; a different seed also changes the data subsets and",
        f"the initialization). No run lies more than sqrt(2(n-1)) = {math.sqrt(2 * (n - 1)):.2f} sds from another at n = {n};",
        f"measured, the farthest lies {ratio.max():.2f} sds from the expected run ({_name(*ratio.idxmax())}), so k = {k:g} covers",
        f"every run with a margin of {k / ratio.max():.2f}. The floor ({floor:g} point: 20 of 2,000 test images, 3 of 300) sets",
        f"{len(floored)} tolerances, where k*sd is smaller (top-5 accuracies near 100 %, deltas that never moved): a",
        "metric that did not move in n runs can still move by an image or two on another CPU.",
        f"Measured: every max_dev within its tolerance, the largest at {stats.max_dev[worst] / stats.tolerance[worst]:.2f} of it"
        f" ({_name(*worst)}: {stats.max_dev[worst]:.3f} of {stats.tolerance[worst]:.3f});",
    ]
    if isa_worst is not None:
        lines.append(f"the ISA changed {len(changed)} of {len(stats)} metrics at the same seed, the largest relative to its"
                     f" tolerance {_name(*isa_worst)} by {stats.isa_max_dev[isa_worst]:.3f} ({stats.isa_max_dev[isa_worst] / stats.tolerance[isa_worst]:.2f} of it);")
    else:
        lines.append("the ISA changed no metric at the same seed;")
    lines.append(f"{len(guards)} of {len(stats)} metrics are guards (tolerance < {drop:g}), the widest {guards.tolerance.max():.3f}."
                 if len(guards) else f"no metric is a guard (every tolerance >= {drop:g}).")
    lines += ["", "Headline metrics (n, mean, sd, max_dev, isa_max_dev, tolerance, guard):"]
    for (file, key), s in headline(stats).iterrows():
        lines.append(f"  {_name(file, key)}: n={s.n:.0f} mean={s['mean']:.2f} sd={s.sd:.2f} max_dev={s.max_dev:.2f}"
                     f" isa_max_dev={s.isa_max_dev:.2f} tolerance={s.tolerance:.2f} guard={bool(s.guard)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- full run
# Images each metric is measured on: (metrics file, key pattern, params path; null = the whole test split).
EVAL_IMAGES = (
    ("adjust.json", r"proxy_top1$", "adjust.search_val_images"),
    (None, r"(^|\.)final_val_top1$", "train.val_size"),
    ("baseline.json", r"", "train.max_test_images"),
    ("adjusted.json", r"", "train.max_test_images"),
    ("encdec.json", r"", "encdec.train.max_test_images"),
    ("perturbation.json", r"", "perturb.max_test_images"),
    ("prune.json", r"^sweep\.", "prune.sweep_images"),
    ("prune.json", r"^per_class_table\.", "prune.max_images"),  # divided by the number of classes
    ("prune.json", r"^pruned\.", "prune.max_images"),
)


def _param(params: dict, path: str):
    for part in path.split("."):
        params = params[part]
    return params


def eval_images(file: str, key: str, params: dict, test_images: int, classes: int) -> int | None:
    """Images behind a metric under ``params`` (None: not known, or not a proportion)."""
    if points_per_unit(key) != 1.0:
        return None
    for name, pattern, path in EVAL_IMAGES:
        if (name is None or Path(file).name == name) and re.search(pattern, key):
            n = _param(params, path)
            n = test_images if n is None else min(int(n), test_images) if "test" in path else int(n)
            return max(1, n // classes) if key.startswith("per_class_table.") else n
    return None


def binomial_se(value: float, n: int) -> float:
    """Standard error in points of a percentage measured on n images (clipped half an image from 0 and 100)."""
    p = min(max(value / 100.0, 0.5 / n), 1 - 0.5 / n)
    return 100.0 * math.sqrt(p * (1 - p) / n)


def metric_se(key: str, values: dict[str, float], n: int) -> float:
    """SE of a metric among ``values`` ({key: value} of its file): a ``delta_top1`` (perturbed - clean, the same
    images) gets sqrt(2) times the SE of its row's ``top1``, the SE of a difference of two independent ones."""
    if key.endswith("delta_top1"):
        return math.sqrt(2) * binomial_se(values[key[:-len("delta_top1")] + "top1"], n)
    return binomial_se(values[key], n)


def family(key: str) -> str:
    """A metric's kind: its key with the sweep fraction, repeat, class and perturbation wildcarded."""
    return re.sub(r"(fraction|repeat|class|perturbation)=[^,\]]+", r"\1=*", key)


SEED_BASIS = r"over \d+ seeds$"  # the basis of a tolerance the full run's seed spread set


def _seed_pattern(file: str) -> str:
    """``file`` with its ``/seeds/<seed>/`` part wildcarded: the same metric of every training seed."""
    return re.sub(r"/seeds/\d+/", "/seeds/*/", file)


def seed_spread(full: dict, others: list[dict] = ()) -> dict[tuple[str, str], tuple[float, int]]:
    """(sample sd, n) of every metric over the full-scale runs of it: the training seeds of a per-seed metric (a
    file under ``…/seeds/<seed>/``, the same key in each seed's file) and, with ``others`` ({file: leaves} of
    runs under another ISA), their values too, for every metric. Keyed by (file, key) of the committed files."""
    groups: dict = {}
    for runs in [full, *others]:
        for file, leaves in runs.items():
            for key, value in leaves.items():
                groups.setdefault((_seed_pattern(file), key), []).append(value)
    return {(file, key): (statistics.stdev(groups[(_seed_pattern(file), key)]), len(groups[(_seed_pattern(file), key)]))
            for file, leaves in full.items() for key in leaves if len(groups[(_seed_pattern(file), key)]) > 1}


def widen_by_runs(stats: pd.DataFrame, full: dict, full_runs: list[dict], k: float = K, drop: float = DROP_POINTS) -> pd.DataFrame:
    """The tolerances with the other-ISA full runs as further samples of the spread: a metric whose sd over its
    seeds and those runs (``seed_spread`` with ``others``) gives k·sd above its derived tolerance gets that
    (derived_tolerance keeps the one before). The runs themselves are the measurement that widened it."""
    others = [{f: metric_leaves(d) for f, d in r["metrics"].items()} for r in full_runs]
    if not others:
        return stats
    pooled = seed_spread(full, others)
    out = stats.copy()
    for (file, key), s in stats.iterrows():
        sd, n = pooled.get((file, key), (0.0, 1))
        if k * sd > s.tolerance:
            out.loc[(file, key), ["derived_tolerance", "tolerance", "basis"]] = [
                s.tolerance, k * sd, f"sd over {n} full runs ({'seeds and ' if '/seeds/' in file else ''}other ISAs)"]
            out.loc[(file, key), "guard"] = k * sd < drop / points_per_unit(key)
    return out


def full_tolerances(ci: pd.DataFrame, ci_params: dict, full: dict, full_params: dict, test_images: int, classes: int,
                    k: float = K, floor: float = FULL_FLOOR_POINTS, drop: float = DROP_POINTS) -> pd.DataFrame:
    """Per committed full-run metric: sd = r * SE, SE the binomial standard error of the full run's value on its
    images, r the largest, over the metric's family (``family``), of a ci metric's measured sd over its own SE
    (sd_ci / SE(mean_ci, n_ci): how much wider than sampling noise the seed/ISA spread is; the file's largest
    when the family has no ci metric), and never below sqrt(2) (the sd of the difference of two equally accurate
    models with independent errors on the same images, in SE). A per-seed metric takes the larger of that and its
    measured sd over the full run's seeds (``seed_spread``: another CPU's run of a seed diverges from it as another
    seed does). tolerance = max(floor, k*sd). A metric that is not a proportion (relative errors) keeps its ci
    tolerance, widened to k times its seed sd where that is larger."""
    seeds = seed_spread(full)
    ci_means: dict = {}
    for (file, key), s in ci.iterrows():
        ci_means.setdefault(file, {})[key] = s["mean"]
    ratio = {}
    for (file, key), s in ci.iterrows():
        n_ci = eval_images(file, key, ci_params, test_images, classes)
        if n_ci:
            ratio[(file, key)] = (s.sd / metric_se(key, ci_means[file], n_ci), n_ci, key)
    out = []
    for file, leaves in full.items():
        for key, value in leaves.items():
            row = {"file": file, "key": key, "expected": value, "check": "lower" if is_error(key) else "higher"}
            n_full = eval_images(file, key, full_params, test_images, classes)
            if n_full is None:
                same = ci.tolerance.get((file, key))
                row.update(basis="ci tolerance (not a proportion)" if same is not None else "floor (no ci metric)",
                           tolerance=same if same is not None else floor / points_per_unit(key))
                if (file, key) in seeds and k * seeds[(file, key)][0] > row["tolerance"]:
                    row.update(basis=f"k * sd over {seeds[(file, key)][1]} seeds", tolerance=k * seeds[(file, key)][0])
            else:
                se = metric_se(key, leaves, n_full)
                fam = [v for (f, kk), v in ratio.items() if f == file and family(kk) == family(key)]
                same_file = [v for (f, _), v in ratio.items() if f == file]
                pool, basis = (fam, "family") if fam else (same_file, "file") if same_file else ([], "none")
                r, n_ci, source = max(pool) if pool else (math.sqrt(2), None, None)
                sd = max(math.sqrt(2), r) * se
                row.update(n_images=n_full, se=se, ci_ratio=r, ci_images=n_ci, basis=f"r of {source}" if source else
                           "no ci metric: r = sqrt(2)")
                if (file, key) in seeds and seeds[(file, key)][0] > sd:
                    sd = seeds[(file, key)][0]
                    row["basis"] = f"sd over {seeds[(file, key)][1]} seeds"
                row["tolerance"] = max(floor, k * sd)
            if (file, key) in seeds:
                row.update(seed_sd=seeds[(file, key)][0], seeds=seeds[(file, key)][1])
            row["guard"] = row["tolerance"] < drop / points_per_unit(key)
            out.append(row)
    return pd.DataFrame(out).set_index(["file", "key"])


def full_doc(stats: pd.DataFrame) -> dict:
    metrics: dict = {}
    for (file, key), s in stats.iterrows():
        entry = {"expected": float(s.expected), "tolerance": _r(s.tolerance), "check": s.check, "guard": bool(s.guard),
                 "basis": s.basis}
        for col in ("n_images", "se", "ci_ratio", "ci_images", "seed_sd", "seeds", "isa_dev", "derived_tolerance"):
            if col in s and not pd.isna(s[col]):
                entry[col] = int(s[col]) if col.endswith("images") or col == "seeds" else _r(s[col])
        metrics.setdefault(file, {})[key] = entry
    return metrics


def worse_by(key: str, got: float, want: float, check: str) -> float:
    return {"higher": want - got, "lower": got - want}.get(check, abs(got - want))


def full_isa_devs(stats: pd.DataFrame, full_runs: list[dict]) -> pd.DataFrame:
    """Adds isa_dev to ``stats``: the largest change for the worse (negative: for the better), over ``full_runs``,
    from the committed value."""
    devs: dict = {}
    for r in full_runs:
        leaves = {f: metric_leaves(d) for f, d in r["metrics"].items()}
        for (file, key), s in stats.iterrows():
            got = leaves.get(file, {}).get(key)
            if got is not None:
                worse = worse_by(key, got, s.expected, s.check)
                devs[(file, key)] = max(worse, devs.get((file, key), worse))
    return stats.assign(isa_dev=pd.Series(devs, dtype=float).reindex(stats.index))


def full_header(stats: pd.DataFrame, command: str, label: str, k: float, floor: float, drop: float, full_runs: list[dict]) -> str:
    props = stats[stats.n_images.notna()] if "n_images" in stats else stats.iloc[:0]
    guards = stats[stats.guard]
    lines = [
        f"Expected full-run metrics (reports/metrics of `make repro`, from {label}) and tolerances, by",
        f"`{command}`.",
        "Do not edit: rerun the command after an intended change of results (after a new full run only:",
        "`.venv/bin/python -m tests.calibrate --full-only`, which runs nothing and reads tests/expected/ci_runs.csv).",
        "",
        "Another CPU's full run is not measured by the test, so its spread is derived: from the ci measurement",
        "(tests/expected/ci_metrics.yaml) and, for a per-seed metric, from the full run's own training seeds.",
        "For a proportion, sd = r * SE: SE = the binomial standard error of the committed value on the images it",
        "is measured on (n_images: 10,000 test images, 2,000 per sweep point,",
        "1,000 per class; a delta_top1 gets sqrt(2) SE of its row's top1), r = the largest, over the metric's family",
        "(its key with fraction, repeat, class and perturbation wildcarded; else its file), of the ci metrics' sd over",
        "their own SE (ci_ratio, on ci_images: how much wider than sampling noise the ci seed/ISA spread was), and",
        "never below sqrt(2): the sd, in SE, of the difference of two equally accurate models with independent",
        "errors on the same images, which is what another CPU's run is (the same data, a different trajectory).",
        "A per-seed metric's sd is the larger of that and its sample sd over the full run's seeds (seed_sd, over",
        "`seeds` seeds: another CPU's run of a seed diverges from it as another seed does).",
        "A relative error (not a proportion) keeps its ci tolerance, or k * seed_sd where that is larger.",
        f"tolerance = max(floor, k*sd), k = {k:g} as for ci, floor = {floor:g} point.",
        f"check: as ci (higher: may not fall; lower: may not rise). guard: tolerance < {drop:g} points.",
        "",
        f"{len(props)} proportions: r from {props.ci_ratio.min():.2f} to {props.ci_ratio.max():.2f} (median {props.ci_ratio.median():.2f}),"
        f" tolerance from {props.tolerance.min():.2f} to {props.tolerance.max():.2f} points (median {props.tolerance.median():.2f});",
        f"{len(guards)} of {len(stats)} metrics are guards"
        + (f"; the seed sd sets the tolerance of {int(stats.basis.str.contains(SEED_BASIS).sum())}." if "basis" in stats else "."),
    ]
    for r in full_runs:
        took = f"{r['seconds'] / 60:.0f} min" + (" for its last part, continued after an interruption" if r.get("continued") else "")
        part = "" if r.get("targets", "all") == "all" else f" of {len(r['targets'])} stages ({', '.join(r['targets'])})"
        lines.append(f"Measured: one full `dvc repro`{part} of this code under {r['isa']} ({r['capability']} kernels, "
                     f"{took}) against the recorded (native) values:")
    if full_runs:
        measured = stats[stats.isa_dev.notna()]
        changed = measured[measured.isa_dev != 0]
        derived = measured.derived_tolerance.fillna(measured.tolerance) if "derived_tolerance" in measured else measured.tolerance
        ratio = (measured.isa_dev / derived)
        worst = ratio.idxmax()
        outside = measured[measured.isa_dev > derived]
        lines.append(f"  {len(changed)} of {len(measured)} metrics changed; the worst change relative to its derived tolerance {_name(*worst)}"
                     f" by {measured.isa_dev[worst]:+.3f} worse ({ratio[worst]:.2f} of {derived[worst]:.3f});"
                     f" {len(outside)} outside its derived tolerance" + (f": {', '.join(_name(*i) for i in outside.index)}" if len(outside) else "."))
    if "derived_tolerance" in stats:
        widened = stats[stats.derived_tolerance.notna()]
        was_guard = [s.derived_tolerance < DROP_POINTS / points_per_unit(key) for (_, key), s in widened.iterrows()]
        lines.append(f"  The runs above are samples of the spread too: {len(widened)} tolerances are k * sd over the full runs"
                     f" (seeds and other ISAs), wider than derived (derived_tolerance); {sum(was_guard)} of them were guards"
                     f" by the derived one, {int(widened.guard.sum())} still are.")
    lines += ["", "Headline metrics (n_images, SE, r, tolerance, guard" + (", isa_dev: worse by, in the full ISA run" if full_runs else "") + "):"]
    for (file, key), s in headline(stats).iterrows():
        lines.append(f"  {_name(file, key)}: n_images={s.n_images:.0f} SE={s.se:.2f} r={s.ci_ratio:.2f} ({s.basis})"
                     f"{f' seed_sd={s.seed_sd:.2f}' if 'seed_sd' in s and not pd.isna(s.seed_sd) else ''}"
                     f" tolerance={s.tolerance:.2f} guard={bool(s.guard)}" + (f" isa_dev={s.isa_dev:+.2f}" if full_runs else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def compose_ci(repo: Path, workdir: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=workdir)) / "params.yaml"
    composed = run(["python", "-m", "stages.compose", "experiment=ci", "--out", str(out)], repo)
    if composed.returncode != 0:
        raise SystemExit(composed.stderr)
    params = yaml.safe_load(out.read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    return params


def full_results(commit: str | None, workdir: Path) -> Path:
    """Where the full run's reports/metrics and params.yaml are: the working tree's (as the test reads them), or
    ``commit``'s."""
    if commit is None:
        return ROOT
    dest = Path(tempfile.mkdtemp(prefix="full-results-", dir=workdir))
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "reports/metrics", "params.yaml"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def write_full(ci_stats: pd.DataFrame, ci_params: dict, command: str, full_runs: list[dict], source: Path,
               label: str) -> pd.DataFrame:
    full = collect_metrics(source / "reports")
    docs = {f.name: json.loads(f.read_text()) for f in (source / "reports" / "metrics").rglob("*.json")}
    test_images = int(docs["baseline.json"]["test_images"])
    classes = len(docs["prune.json"]["classes"]) if "prune.json" in docs else 10
    stats = full_tolerances(ci_stats, ci_params, full, yaml.safe_load((source / "params.yaml").read_text()), test_images, classes)
    if full_runs:
        stats = widen_by_runs(full_isa_devs(stats, full_runs), full, full_runs)
    doc = {"command": command, "results": label, "k": K, "floor_points": FULL_FLOOR_POINTS, "drop_points": DROP_POINTS,
           "full_runs": [{k: r.get(k) for k in ("isa", "capability", "seconds", "continued", "targets")} for r in full_runs], "metrics": full_doc(stats)}
    write_expected(FULL_EXPECTED, doc, full_header(stats, command, label, K, FULL_FLOOR_POINTS, DROP_POINTS, full_runs))
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="must include 0 (the test's run)")
    parser.add_argument("--isa", nargs="+", default=["native", "avx2"], choices=sorted(ISA_ENV), help="must include native")
    parser.add_argument("--jobs", type=int, default=2, help="ci runs at a time (each on one torch thread)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cnnvis-calibrate",
                        help="runs are cached here by code, seed and ISA")
    parser.add_argument("--keep", action="store_true", help="keep each run's copy of the repository")
    parser.add_argument("--commit", help="calibrate this commit's code (default: the working tree, as the test copies it)")
    parser.add_argument("--full-isa", nargs="*", default=[], choices=sorted(ISA_ENV),
                        help="also run the full DAG under these ISAs (tens of minutes each; cached runs of this code are "
                             "always used) and record how far each result moved from the committed one, which must be "
                             "this code's native results")
    parser.add_argument("--full-seeds", type=int, nargs="+",
                        help="run only the stages of these training seeds in the --full-isa runs (default: every stage)")
    parser.add_argument("--full-only", action="store_true", help="only rewrite full_metrics.yaml, from ci_runs.csv")
    args = parser.parse_args(argv)
    if REFERENCE[0] not in args.seeds or REFERENCE[1] not in args.isa:
        parser.error(f"--seeds must include {REFERENCE[0]} and --isa {REFERENCE[1]}: the test repeats that run")
    t0 = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 90)
    pd.set_option("display.max_rows", 1000)
    snapshot = snapshot_of(Path(tempfile.mkdtemp(prefix="snapshot-", dir=args.workdir)), args.commit)
    code = code_id(snapshot)
    cache = args.workdir / code
    cache.mkdir(exist_ok=True)
    ci_params = compose_ci(snapshot, args.workdir)
    if args.full_only:
        command = yaml.safe_load(CI_EXPECTED.read_text())["command"]
        stats = spread(pd.read_csv(CI_RUNS))
    else:
        command = (".venv/bin/python -m tests.calibrate --seeds " + " ".join(map(str, args.seeds)) + " --isa " + " ".join(args.isa)
                   + (f" --commit {args.commit}" if args.commit else ""))
        keys = seed_keys(ci_params)
        todo = [(s, isa) for s in args.seeds for isa in args.isa]
        print(f"calibrate: code {code}, {len(todo)} ci runs ({len(args.seeds)} seeds × {', '.join(args.isa)}), "
              f"{args.jobs} at a time; the seeds set: {', '.join(keys)}", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            records = list(pool.map(lambda r: run_one(snapshot, cache, r[0], r[1], keys, args.keep), todo))
        df = rows(records)
        df.to_csv(CI_RUNS, index=False)
        stats = spread(df)
        runs = pd.DataFrame([{k: r[k] for k in ("seed", "isa", "capability", "seconds")} for r in records])
        doc = {"command": command, "code": code, "k": K, "floor_points": FLOOR_POINTS, "drop_points": DROP_POINTS,
               "runs": runs.to_dict("records"), "metrics": expected_doc(stats)}
        write_expected(CI_EXPECTED, doc, ci_header(stats, runs, command, code, K, FLOOR_POINTS, DROP_POINTS))
        print(stats.drop(columns=["check"]).round(3).to_string())
    # full runs asked for, and any this code already has in the cache
    isas = list(dict.fromkeys([*args.full_isa, *(f.stem.removeprefix("full-") for f in sorted(cache.glob("full-*.json")))]))
    full_runs = [run_full(snapshot, cache, isa, args.keep, args.full_seeds) for isa in isas]
    shutil.rmtree(snapshot, ignore_errors=True)
    full = write_full(stats, ci_params, command + (f" --full-isa {' '.join(isas)}" if isas else "")
                      + (f" --full-seeds {' '.join(map(str, args.full_seeds))}" if isas and args.full_seeds else ""), full_runs,
                      full_results(args.commit, args.workdir), f"commit {args.commit}" if args.commit else "the working tree")
    print(full.drop(columns=["check"]).round(3).to_string())
    print(f"calibrate: wrote {'' if args.full_only else f'{CI_EXPECTED}, {CI_RUNS} and '}{FULL_EXPECTED} in "
          f"{(time.perf_counter() - t0) / 60:.1f} min (code {code})")


if __name__ == "__main__":
    main()
