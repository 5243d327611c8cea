"""Pipeline smoke test (`dvc repro` of experiment=ci in a temporary copy) and regression of accuracies.

CI regression: the ci metrics must equal the committed expected values within
the stated tolerance (CPU training here is deterministic; the tolerance absorbs
other CPUs' kernels). Regenerate after an intended change with
``CNNVIS_UPDATE_EXPECTED=1 pytest tests/test_pipeline.py``.
"""

from __future__ import annotations

import os
import time

import pytest

from pipeline import ROOT, collect_metrics, compare, copy_repo, load_expected, run, write_expected

CI_EXPECTED = ROOT / "tests" / "expected" / "ci_metrics.yaml"
FULL_EXPECTED = ROOT / "tests" / "expected" / "full_metrics.yaml"
CI_TOLERANCE = 2.0  # accuracy points; identical on this machine kind, other CPUs' kernels differ slightly
FULL_TOLERANCE = 0.5  # a committed accuracy may not fall by more than this


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    # one torch thread: pytest runs two workers on two cores; oversubscribed OpenMP threads are 10x slower
    composed = run(["python", "-m", "stages.compose", "experiment=ci", "hardware.threads=1"], repo)
    assert composed.returncode == 0, composed.stderr
    t0 = time.perf_counter()
    first = run(["dvc", "repro"], repo)
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


@pytest.mark.slow
@pytest.mark.xdist_group("pipeline")
def test_ci_metrics_regression(ci_run):
    current = collect_metrics(ci_run["repo"] / "reports")
    assert current, "the ci run wrote no accuracy metrics"
    if os.environ.get("CNNVIS_UPDATE_EXPECTED"):
        write_expected(CI_EXPECTED, current, CI_TOLERANCE, "accuracies and error rates (%) of `dvc repro` with experiment=ci")
        pytest.skip(f"wrote {CI_EXPECTED}")
    expected = load_expected(CI_EXPECTED)
    problems = compare(current, expected["metrics"], expected["tolerance_points"])
    assert not problems, "ci accuracy regression:\n" + "\n".join(problems)


def test_committed_full_run_metrics_did_not_drop():
    """The committed reports/metrics (from `make repro`) against their recorded values: an accuracy lower or an
    error rate higher beyond tolerance fails."""
    current = collect_metrics(ROOT / "reports")
    if os.environ.get("CNNVIS_UPDATE_EXPECTED"):
        write_expected(FULL_EXPECTED, current, FULL_TOLERANCE, "accuracies and error rates (%) of the committed full `make repro`")
        pytest.skip(f"wrote {FULL_EXPECTED}")
    if not FULL_EXPECTED.exists():
        pytest.fail(f"{FULL_EXPECTED} missing: record it after a full run with CNNVIS_UPDATE_EXPECTED=1")
    expected = load_expected(FULL_EXPECTED)
    problems = compare(current, expected["metrics"], expected["tolerance_points"], worse_only=True)
    assert not problems, "committed results got worse:\n" + "\n".join(problems)


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
           "pruned": {"error_masked": 10.0, "size": 3}, "sweep": {"mean_error_over_fractions": 16.0},
           "gradient_check": {"max_rel_error": 1e-9}}
    leaves = metric_leaves(doc)
    assert leaves == {"test.top1": 91.0, "rows[perturbation=blur3,model=baseline].top1": 88.0,
                      "pruned.error_masked": 10.0, "sweep.mean_error_over_fractions": 16.0}
    expected = {"m.json": {"test.top1": 92.0, "rows[perturbation=blur3,model=baseline].top1": 88.2,
                           "pruned.error_masked": 9.0, "sweep.mean_error_over_fractions": 16.3}}
    problems = compare({"m.json": leaves}, expected, 0.5, worse_only=True)
    assert problems == ["m.json:test.top1 = 91.000, expected 92.000 ± 0.5 points",
                        "m.json:pruned.error_masked = 10.000, expected 9.000 ± 0.5 points"]
    better = {**leaves, "test.top1": 99.0, "pruned.error_masked": 1.0}  # accuracy up, error down: fine
    assert compare({"m.json": better}, expected, 0.5, worse_only=True) == []
    assert compare({}, expected, 0.5)[:2] == ["m.json:test.top1 missing (expected 92.0)",
                                              "m.json:rows[perturbation=blur3,model=baseline].top1 missing (expected 88.2)"]
