"""Pipeline smoke test (`dvc repro` of experiment=ci in a temporary copy) and regression of accuracies.

CI regression: the ci run's metrics against tests/expected/ci_metrics.yaml, written by
``.venv/bin/python -m tests.calibrate`` from several ci runs (seeds × emulated CPU instruction sets): per
metric the expected value (the seed-0 native run, which the fixture repeats), n, mean, sd and a tolerance
max(floor, k·sd). An accuracy may not fall, an error rate may not rise, by more than its tolerance; CPU
training is bit-identical on one machine, not across CPUs, and the tolerance absorbs that. Metrics with
``guard: true`` fail on a 3-point drop (tested below); the others only on a collapse. The committed
full-run metrics against tests/expected/full_metrics.yaml, the same way (its header says how its
tolerances come from the ci measurement). After an intended change of results, rerun the calibration
(after a new full `make repro` only: ``python -m tests.calibrate --full-only``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml

from pipeline import (
    CI_EXPECTED,
    FULL_EXPECTED,
    ROOT,
    ci_repro,
    code_id,
    collect_metrics,
    compare,
    copy_repo,
    cpu_capability,
    is_error,
    load_expected,
    points_per_unit,
    run,
)


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    t0 = time.perf_counter()
    first = ci_repro(repo)
    seconds = time.perf_counter() - t0
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    t0 = time.perf_counter()
    second = run(["dvc", "repro"], repo)
    again = time.perf_counter() - t0
    return {"repo": repo, "first": first, "second": second, "seconds": seconds, "again": again}


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_ci_dag_runs_and_second_repro_does_nothing(ci_run):
    assert ci_run["second"].returncode == 0
    out = ci_run["second"].stdout
    assert "Running stage" not in out, out
    status = run(["dvc", "status"], ci_run["repo"])
    assert "up to date" in status.stdout, status.stdout
    print(f"ci DAG: {ci_run['seconds']:.0f} s; second repro {ci_run['again']:.1f} s")


def _calibrated_note(repo, expected: dict) -> str:
    code = code_id(repo)
    same = "the same code" if code == expected.get("code") else f"code {expected.get('code')}, this run's is {code}"
    return (f"\n(this run: {cpu_capability()} kernels; the expected values were calibrated by `{expected['command']}` on {same};"
            " after an intended change of results rerun that command)")


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_ci_metrics_regression(ci_run):
    current = collect_metrics(ci_run["repo"] / "reports")
    assert current, "the ci run wrote no accuracy metrics"
    expected = load_expected(CI_EXPECTED)
    problems = compare(current, expected["metrics"])
    assert not problems, "ci accuracy regression:\n" + "\n".join(problems) + _calibrated_note(ci_run["repo"], expected)
    uncalibrated = sorted(f"{f}:{k}" for f, leaves in current.items() for k in leaves if k not in expected["metrics"].get(f, {}))
    print(f"{sum(map(len, expected['metrics'].values()))} ci metrics within tolerance on {cpu_capability()};"
          f" {len(uncalibrated)} not calibrated: {uncalibrated[:5]}")


def dropped(metrics: dict, points: float, only_guards: bool = True) -> dict:
    """{file: {key: value}} of the expected values, each made worse by ``points`` (an accuracy lower, an error
    rate higher; in a relative error's own unit, a fraction): what a real drop would report."""
    out: dict = {}
    for file, leaves in metrics.items():
        for key, spec in leaves.items():
            if spec["guard"] or not only_guards:
                delta = points / points_per_unit(key)
                out.setdefault(file, {})[key] = spec["expected"] + (delta if is_error(key) else -delta)
    return out


def test_ci_check_catches_a_3_point_drop():
    """Every guard of the ci calibration, made 3 points worse than its expected value, fails the check and is
    named; the expected values themselves pass, and a rise of an accuracy (fall of an error) passes."""
    expected = load_expected(CI_EXPECTED)
    metrics, drop = expected["metrics"], expected["drop_points"]
    guards = {(f, k) for f, leaves in metrics.items() for k, s in leaves.items() if s["guard"]}
    assert guards, "no ci metric guards against a 3-point drop"
    exact = {f: {k: s["expected"] for k, s in leaves.items()} for f, leaves in metrics.items()}
    assert compare(exact, metrics) == []
    current = copy.deepcopy(exact)
    for file, leaves in dropped(metrics, drop).items():
        current[file].update(leaves)
    problems = compare(current, metrics)
    named = {tuple(p.split(" = ", 1)[0].split(":", 1)) for p in problems}
    assert named == guards, sorted(guards ^ named)[:10]
    better = copy.deepcopy(exact)
    for file, leaves in dropped(metrics, -drop, only_guards=False).items():
        better[file].update(leaves)
    assert compare(better, metrics) == []


def test_ci_baseline_accuracy_is_a_guard():
    """The baseline's test accuracy (the ci run's headline; its training was bit-identical across the ISAs
    measured) is a regression guard: its seed/ISA spread leaves a 3-point drop outside the tolerance. The other
    ci accuracies may not be (see the file's header); the full run's are checked by full_metrics.yaml."""
    metrics = load_expected(CI_EXPECTED)["metrics"]["reports/metrics/fashion_mnist/seeds/0/baseline.json"]
    for key in ("test.top1", "test.top5"):
        assert metrics[key]["guard"], (key, metrics[key])


def test_calibration_tolerances_cover_the_measured_spread():
    """ci_metrics.yaml is what its rule says: tolerance = max(floor, k·sd), every measured deviation (over
    seeds and ISAs) inside it, guard exactly when the tolerance is below the drop; n and spread recorded."""
    expected = load_expected(CI_EXPECTED)
    k, floor, drop = expected["k"], expected["floor_points"], expected["drop_points"]
    assert {r["isa"] for r in expected["runs"]} >= {"native", "avx2"} and len({r["seed"] for r in expected["runs"]}) >= 3
    for file, leaves in expected["metrics"].items():
        for key, s in leaves.items():
            unit = points_per_unit(key)
            assert s["n"] >= 2 and s["sd"] is not None, (file, key, s)
            assert s["tolerance"] == pytest.approx(max(floor / unit, k * s["sd"]), abs=1e-3), (file, key, s)
            assert s["max_dev"] <= s["tolerance"], (file, key, s)
            assert s["guard"] == (s["tolerance"] < drop / unit), (file, key, s)
            assert s["check"] == ("lower" if is_error(key) else "higher"), (file, key, s)


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_broken_training_fails_the_regression(ci_run, tmp_path):
    """A training that cannot learn (train.lr=1e-7, the rest of the ci recipe) run by the train-baseline
    stage on the fixture's data fails the check on its accuracies."""
    repo = ci_run["repo"]
    params = tmp_path / "params.yaml"
    composed = run(["python", "-m", "stages.compose", "experiment=ci", "hardware.threads=1", "train.lr=1e-7",
                    "--out", str(params)], repo)
    assert composed.returncode == 0, composed.stderr
    metrics = tmp_path / "reports" / "metrics" / "fashion_mnist" / "seeds" / "0" / "baseline.json"
    trained = run(["python", "-m", "stages.train_baseline", "--dataset", "fashion_mnist", "--seed", "0",
                   "--data", "data/raw/fashion_mnist",
                   "--out", str(tmp_path / "baseline.pt"), "--metrics", str(metrics), "--resume-dir", str(tmp_path / "resume"),
                   "--params", str(params)], repo)
    assert trained.returncode == 0, trained.stderr[-3000:]
    file = "reports/metrics/fashion_mnist/seeds/0/baseline.json"
    expected = {file: load_expected(CI_EXPECTED)["metrics"][file]}
    problems = compare(collect_metrics(tmp_path / "reports"), expected)
    assert any(p.startswith(f"{file}:test.top1 = ") for p in problems), problems
    assert yaml.safe_load(params.read_text())["train"]["lr"] == 1e-7
    print("\n".join(problems))


def test_committed_full_run_metrics_did_not_drop():
    """The committed reports/metrics (from `make repro`) against full_metrics.yaml: an accuracy lower or an
    error rate higher than its tolerance allows fails, naming the metric."""
    if not FULL_EXPECTED.exists():
        pytest.fail(f"{FULL_EXPECTED} missing: record it after a full run with `python -m tests.calibrate --full-only`")
    expected = load_expected(FULL_EXPECTED)
    problems = compare(collect_metrics(ROOT / "reports"), expected["metrics"])
    assert not problems, "committed results got worse:\n" + "\n".join(problems)


# Measured by `tests.calibrate --full-isa avx2 --full-seeds 0`: one-shot pruning at a fixed fraction under a global
# threshold removes another filter set when importances near the threshold move by float rounding (seed 0 under
# AVX2: 14 conv1 filters instead of 12, error 9.32 -> 13.75 %), so the pruned model, its perturbation rows and
# single sweep points can move past a tolerance derived from sampling noise and the seed spread. No other metric may.
UNSTABLE_ACROSS_ISA = (r"prune\.json:pruned\.", r"perturbation\.json:rows\[.*model=pruned\]", r"prune\.json:sweep\.")


def test_full_tolerances_cover_the_measured_full_run_on_another_isa():
    """Where the calibration ran the full DAG under an emulated ISA (``full_runs``): every metric it moved for the
    worse beyond its derived tolerance is one of the pruning metrics known to be unstable across ISAs, and the
    expected file widened it (that run counted as a sample of the spread) past what the run measured, as no guard;
    every other metric moved by less than its derived tolerance: the derivation checked against a measurement."""
    import re

    expected = load_expected(FULL_EXPECTED)
    if not expected.get("full_runs"):
        pytest.skip("no full run under another ISA recorded (tests.calibrate --full-isa)")
    measured = [(f, k, s) for f, leaves in expected["metrics"].items() for k, s in leaves.items() if "isa_dev" in s]
    assert len(measured) > 100
    beyond = [(f"{Path(f).name}:{k}", s) for f, k, s in measured if s["isa_dev"] > s.get("derived_tolerance", s["tolerance"])]
    unexplained = [name for name, _ in beyond if not any(re.search(p, name) for p in UNSTABLE_ACROSS_ISA)]
    assert not unexplained, f"moved beyond the derived tolerance on another ISA: {unexplained}"
    assert all(s["isa_dev"] <= s["tolerance"] and not s["guard"] for _, s in beyond), beyond
    kept = [(f"{Path(f).name}:{k}", s) for f, k, s in measured if (Path(f).name, k) in
            {("baseline.json", "test.top1"), ("adjusted.json", "test.top1"), ("adjusted.json", "control.top1"), ("encdec.json", "test.top1")}]
    assert kept and all(s["guard"] and s["isa_dev"] <= s["tolerance"] for _, s in kept), kept  # the headline accuracies stay guards


def test_full_check_catches_a_3_point_drop():
    """Every guard of full_metrics.yaml, 3 points worse than its committed value, fails and is named."""
    expected = load_expected(FULL_EXPECTED)
    metrics = expected["metrics"]
    guards = {(f, k) for f, leaves in metrics.items() for k, s in leaves.items() if s["guard"]}
    assert guards
    current = {f: {k: s["expected"] for k, s in leaves.items()} for f, leaves in metrics.items()}
    for file, leaves in dropped(metrics, expected["drop_points"]).items():
        current[file].update(leaves)
    named = {tuple(p.split(" = ", 1)[0].split(":", 1)) for p in compare(current, metrics)}
    assert named == guards, sorted(guards ^ named)[:10]


PAPER_TOLERANCE = 2.0  # accuracy points a committed result may sit below the paper's on the same dataset


def paper_shortfalls(metrics: dict) -> tuple[int, list[str]]:
    """(comparisons made, messages) for every accuracy of ``metrics`` ({dataset: {file: json}}) more than
    PAPER_TOLERANCE points below the paper's on the same dataset; error columns are not compared."""
    import yaml

    from cnnvis.report import comparison_table

    reference = yaml.safe_load((ROOT / "reports" / "paper_reference.yaml").read_text())
    compared, problems = 0, []
    for spec in reference["tables"]:
        if "error" in str(spec.get("unit", "")).lower():
            continue
        for row in comparison_table(spec, metrics).rows:
            for column, delta in row.delta.items():
                compared += 1
                if delta < -PAPER_TOLERANCE:
                    problems.append(f"{spec['id']} {row.dataset} {row.label} {column}: {delta:+.2f} points vs the paper")
    return compared, problems


def committed_metrics() -> dict:
    import json

    return {d.name: {f.name: json.loads(f.read_text()) for f in d.glob("*.json")}
            for d in (ROOT / "reports" / "metrics").iterdir() if d.is_dir()}


def test_committed_metrics_against_paper_where_datasets_match():
    """Where a committed dataset is one a paper reports (MNIST, CIFAR, Tiny ImageNet), ours may not fall
    more than PAPER_TOLERANCE points below the paper's accuracy. Skips when no committed dataset is one
    of the papers' (the default Fashion-MNIST); the check itself is exercised by the next test."""
    metrics = committed_metrics()
    compared, problems = paper_shortfalls(metrics)
    if compared == 0:
        pytest.skip(f"no committed dataset ({', '.join(sorted(metrics))}) is one the papers report")
    assert not problems, "\n".join(problems)


def test_paper_comparison_flags_a_result_below_the_paper():
    """The committed Fashion-MNIST metrics filed under 'mnist': 92.3 % is far below paper 1's 98.07 %."""
    metrics = committed_metrics()
    compared, problems = paper_shortfalls({"mnist": metrics["fashion_mnist"]})
    assert compared == 2 and all(p.startswith("p1_table1 mnist ") for p in problems) and len(problems) == 2, problems


def test_regression_check_names_the_metric_that_got_worse():
    from pipeline import metric_leaves

    doc = {"test": {"top1": 91.0, "loss": 0.3}, "history": [{"val_top1": 1.0}],
           "rows": [{"perturbation": "blur3", "model": "baseline", "top1": 88.0}],
           "pruned": {"error_masked": 10.0, "size": 3}, "sweep": {"mean_error_over_fractions": 16.0, "error_std": 2.0},
           "gradient_check": {"max_rel_error": 1e-9}}
    leaves = metric_leaves(doc)
    assert leaves == {"test.top1": 91.0, "rows[perturbation=blur3,model=baseline].top1": 88.0,
                      "pruned.error_masked": 10.0, "sweep.mean_error_over_fractions": 16.0}
    expected = {"m.json": {"test.top1": 92.0, "rows[perturbation=blur3,model=baseline].top1": 88.2,
                           "pruned.error_masked": 9.0, "sweep.mean_error_over_fractions": 16.3}}
    problems = compare({"m.json": leaves}, expected, 0.5, worse_only=True)
    assert problems == ["m.json:test.top1 = 91.000, expected 92.000 (may fall 0.500)",
                        "m.json:pruned.error_masked = 10.000, expected 9.000 (may rise 0.500)"]
    better = {**leaves, "test.top1": 99.0, "pruned.error_masked": 1.0}  # accuracy up, error down: fine
    assert compare({"m.json": better}, expected, 0.5, worse_only=True) == []
    assert compare({}, expected, 0.5)[:2] == ["m.json:test.top1 missing (expected 92.0)",
                                              "m.json:rows[perturbation=blur3,model=baseline].top1 missing (expected 88.2)"]
    calibrated = {"m.json": {"test.top1": {"expected": 92.0, "tolerance": 0.8, "check": "higher", "n": 6, "sd": 0.2},
                             "pruned.error_masked": {"expected": 9.0, "tolerance": 1.5, "check": "lower", "n": 6, "sd": 0.375},
                             "rows[perturbation=blur3,model=baseline].top1": {"expected": 88.2, "tolerance": 0.1,
                                                                               "check": "both", "n": 6, "sd": 0.0}}}
    assert compare({"m.json": leaves}, calibrated) == [
        "m.json:test.top1 = 91.000, expected 92.000 (may fall 0.800; calibration n=6, sd=0.2)",
        "m.json:rows[perturbation=blur3,model=baseline].top1 = 88.000, expected 88.200 (± 0.100; calibration n=6, sd=0.0)"]


def _declared_outs(repo, kind: str) -> list[tuple[str, str]]:
    """(stage name, path) of every ``kind`` (``metrics`` or ``plots``) out of ``repo``'s dvc.yaml, as DVC resolves
    its foreach/matrix stages and interpolation: what `dvc metrics`/`dvc plots` read, not a list kept by hand."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return [(s.name, o.def_path) for s in dvc.index.stages for o in s.outs if (o.metric if kind == "metrics" else o.plot)]


# Stages forced to run again on identical inputs: the cheapest ones with metrics (seconds in the ci run)
RERUN_STAGES = ("similarity@fashion_mnist", "perturbation-eval@fashion_mnist")


def _first_scalar(doc, prefix: str = ""):
    """(dotted key, value) of the first number in ``doc`` outside lists (DVC compares a list as one string)."""
    for k, v in doc.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{prefix}{k}", v
        if isinstance(v, dict) and (found := _first_scalar(v, f"{prefix}{k}.")):
            return found
    return None


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_forced_rerun_leaves_dvc_metrics_diff_empty(ci_run, tmp_path):
    """Results are a function of code, params and data: the ci run committed to git, then its similarity and
    perturbation stages forced to run again (`dvc repro -f -s`) on the same inputs, `dvc metrics diff --json`
    against HEAD is empty, while `--all` lists every metrics file dvc.yaml declares, unchanged (so HEAD's metrics
    did load, not two empty sides). The check can fail: one number edited in a metrics file is reported, with its
    old and new value. Run on a copy of the fixture's repository (its git, DVC cache and data), which the later
    tests never see."""
    import json
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(ci_run["repo"], repo, symlinks=True)
    git = ["git", "-c", "user.name=cnnvis-test", "-c", "user.email=test@localhost"]
    assert run(git + ["add", "-A"], repo).returncode == 0
    committed = run(git + ["commit", "-q", "-m", "ci run"], repo)
    assert committed.returncode == 0, committed.stdout + committed.stderr

    stages = [s for s, _ in _declared_outs(repo, "metrics")]
    for prefix in RERUN_STAGES:  # a per-seed stage (matrix) is named <prefix>-<seed>: the first of them
        stage = next((s for s in stages if s == prefix or s.startswith(prefix + "-")), None)
        assert stage, f"no metrics stage {prefix} in {sorted(set(stages))}"
        rerun = run(["dvc", "repro", "-f", "-s", stage], repo)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert f"Running stage '{stage}'" in rerun.stdout, rerun.stdout

    def metrics_diff(*extra):
        out = run(["dvc", "metrics", "diff", "--json", *extra], repo)
        assert out.returncode == 0 and "failed to load" not in out.stderr, out.stderr
        return json.loads(out.stdout or "{}")

    diff = metrics_diff()
    changed = {f: d for f, d in diff.items() if d}
    assert not changed, f"metrics changed by an identical rerun: {json.dumps(changed, indent=1)[:3000]}"
    everything = metrics_diff("--all")
    declared = {path for _, path in _declared_outs(repo, "metrics")}
    assert declared and declared <= set(everything), sorted(declared - set(everything))
    moved = {f"{f}:{k}": v for f, d in everything.items() for k, v in d.items() if v.get("old") != v.get("new")}
    assert not moved, moved

    file = next(path for s, path in _declared_outs(repo, "metrics") if s == RERUN_STAGES[0])
    doc = json.loads((repo / file).read_text())
    key, value = _first_scalar(doc)
    node = doc
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.split(".")[-1]] = value + 1
    (repo / file).write_text(json.dumps(doc, indent=2))
    diff = metrics_diff()
    assert set(diff) == {file} and set(diff[file]) == {key}, diff
    assert diff[file][key]["old"] == value and diff[file][key]["new"] == value + 1, diff[file][key]
    print(f"{len(declared)} metrics files unchanged after rerunning {RERUN_STAGES}; edited {file}:{key} reported")


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_dvc_plots_show_renders_every_declared_plot(ci_run, tmp_path):
    """Every `plots:` out of dvc.yaml (figure directories, DVCLive curve directories) as the ci run wrote it is
    rendered by DVC: `dvc plots show --json` has no errors, names every PNG of a declared directory as an image
    whose file has the PNG's bytes and every DVCLive .tsv as a Vega-Lite plot with all its rows, and lists
    nothing outside the declared outs; the HTML of `dvc plots show -o` shows every PNG (an <img> whose file has
    its bytes) and every curve. A figure a stage writes but DVC cannot show would be missed by a reader of
    `dvc plots show`/`dvc plots diff` and of the DVC VS Code extension."""
    import hashlib
    import json
    import re
    from pathlib import Path

    repo = ci_run["repo"]
    declared = _declared_outs(repo, "plots")
    assert declared, "dvc.yaml declares no plots"

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    images, curves = {}, {}  # repo-relative path -> sha256 / data rows
    for stage, out in declared:
        files = sorted(f for f in (repo / out).rglob("*") if f.is_file()) if (repo / out).is_dir() else [repo / out]
        shown = [f for f in files if f.suffix in (".png", ".tsv")]
        assert shown, f"{stage}: plots out {out} has no PNG or .tsv: {[f.name for f in files]}"
        for f in shown:
            rel = f.relative_to(repo).as_posix()
            if f.suffix == ".png":
                images[rel] = sha(f)
            else:
                curves[rel] = len(f.read_text().splitlines()) - 1
    assert images and curves, (sorted(images)[:3], sorted(curves)[:3])

    shown = run(["dvc", "plots", "show", "--json", "-o", str(tmp_path / "json")], repo)
    assert shown.returncode == 0, shown.stderr[-3000:]
    doc = json.loads(shown.stdout)
    assert not doc.get("errors"), doc["errors"][:5]
    data = doc["data"]
    outs = [out for _, out in declared]
    stray = [p for p in data if not any(p == o or p.startswith(o.rstrip("/") + "/") for o in outs)]
    assert not stray, stray
    for rel, digest in images.items():
        entries = data.get(rel) or []
        assert [e["type"] for e in entries] == ["image"], (rel, entries)
        assert sha(Path(entries[0]["url"])) == digest, rel
    for rel, rows in curves.items():
        entries = data.get(rel) or []
        assert [e["type"] for e in entries] == ["vega"], (rel, entries)
        values = entries[0]["content"]["data"]["values"]
        assert rows > 0 and len(values) == rows, (rel, rows, len(values))

    html_dir = tmp_path / "html"
    page = run(["dvc", "plots", "show", "-o", str(html_dir)], repo)
    assert page.returncode == 0, page.stderr[-3000:]
    html = (html_dir / "index.html").read_text()
    srcs = {src: sha(html_dir / src) for src in re.findall(r'<img src="([^"]+)"', html) if (html_dir / src).is_file()}
    missing = [rel for rel, digest in images.items()
               if not any(d == digest and s.endswith(Path(rel).name) for s, d in srcs.items())]
    assert not missing, f"PNGs not shown by index.html: {missing}"
    unshown = [rel for rel in curves if f'"{rel}"' not in html]  # a Vega-Lite spec titled by its file
    assert not unshown, f"curves not shown by index.html: {unshown}"
    print(f"{len(declared)} plots outs: {len(images)} PNGs and {len(curves)} curves rendered")


def test_calibration_names_per_seed_files_by_the_seeds_position():
    """A calibration run with its seed list shifted (seeds 2, 3) is compared file by file with the test's own run
    (seeds 0, 1): its n-th seed's files are named as the n-th seed's, the other files are left alone."""
    from tests.calibrate import by_position

    assert by_position("reports/metrics/fashion_mnist/seeds/3/prune.json", [2, 3]) == \
        "reports/metrics/fashion_mnist/seeds/1/prune.json"
    assert by_position("reports/metrics/fashion_mnist/seeds/2/baseline.json", [2, 3]) == \
        "reports/metrics/fashion_mnist/seeds/0/baseline.json"
    assert by_position("reports/metrics/fashion_mnist/seeds.json", [2, 3]) == "reports/metrics/fashion_mnist/seeds.json"
    with pytest.raises(ValueError):
        by_position("reports/metrics/fashion_mnist/seeds/7/baseline.json", [2, 3])  # not a seed of the run


def test_full_tolerance_of_a_per_seed_metric_covers_its_spread_over_the_seeds():
    """A per-seed metric whose full-run seeds differ by more than its derived sd gets k × their sd; the same
    metric of a non-seeded file, and a steady one, keep the derived tolerance (max(floor, k·√2·SE))."""
    import pandas as pd

    from tests.calibrate import K, full_tolerances, seed_spread

    m = "reports/metrics/d/seeds/{}/prune.json"
    full = {m.format(s): {"sweep.error_at_0.8": e, "pruned.error_masked": 8.0 + s / 100} for s, e in ((0, 30.0), (1, 60.0), (2, 45.0))}
    full["reports/metrics/d/perturbation.json"] = {"rows[perturbation=clean,model=baseline].top1": 92.0}
    spread = seed_spread(full)
    assert spread[(m.format(1), "sweep.error_at_0.8")] == pytest.approx((15.0, 3))
    assert ("reports/metrics/d/perturbation.json", "rows[perturbation=clean,model=baseline].top1") not in spread
    ci = pd.DataFrame(columns=["mean", "sd", "tolerance"], index=pd.MultiIndex.from_tuples([], names=["file", "key"]))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # the committed run's
    stats = full_tolerances(ci, {}, full, params, 10_000, 10)
    wide = stats.loc[(m.format(0), "sweep.error_at_0.8")]
    assert wide.tolerance == pytest.approx(K * 15.0) and not wide.guard and "seeds" in wide.basis
    steady = stats.loc[(m.format(0), "pruned.error_masked")]
    assert steady.tolerance == pytest.approx(max(0.5, K * 2 ** 0.5 * steady.se)) and steady.guard


def test_partial_full_run_takes_one_seeds_stages_and_what_needs_no_other_seed(tmp_path):
    """`tests.calibrate --full-seeds 0`: seed 0's stages and the primary-seed stages; not the stages that read
    every seed (the seeds stage, Table I, the report) nor another seed's."""
    import shutil

    from stages.compose import compose
    from stages.sweep import DVC_YAML, resolve_stages
    from tests.calibrate import seed_targets

    compose([], tmp_path / "params.yaml")
    shutil.copy(DVC_YAML, tmp_path / "dvc.yaml")
    targets = seed_targets(tmp_path, [0])
    assert {"train-baseline@fashion_mnist-0", "retrain@fashion_mnist-0", "visualize@fashion_mnist",
            "perturbation-eval@fashion_mnist"} <= set(targets)
    assert not [t for t in targets if t.endswith(("-1", "-2")) or t.split("@")[0] in ("seeds", "table1", "report")]
    assert seed_targets(tmp_path, [0, 1, 2]) == list(resolve_stages(tmp_path / "dvc.yaml", tmp_path))  # every seed: all
