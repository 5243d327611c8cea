"""README's headlines: generated from the run's metrics, verdicts the tests' own, in sync with what is committed."""

from __future__ import annotations

import copy
import json
import re
import shutil

from cnnvis.headlines import HEADLINES_END, HEADLINES_START, headlines
from stages.readme import main as sync_readme

from conftest import ROOT

SEEDS = ROOT / "reports" / "metrics" / "fashion_mnist" / "seeds.json"
# a p-value stated in prose: p = 0.72, p=0.0012, p < 1e-4 (not "p = 0" in a sentence about the method)
P_VALUE = re.compile(r"\bp ?[=<≤] ?(0?\.\d+|\d(\.\d+)?e-\d+)")


def committed() -> dict:
    return {"fashion_mnist": {"seeds.json": json.loads(SEEDS.read_text())}}


def paths(root) -> list[str]:
    return ["--results", str(root / "reports" / "RESULTS.md"), "--readme", str(root / "README.md"),
            "--metrics", str(root / "reports" / "metrics"), "--params", str(root / "params.yaml")]


def test_committed_readme_headlines_are_the_committed_metrics():
    text = (ROOT / "README.md").read_text()
    assert HEADLINES_START in text and HEADLINES_END in text, "README.md lost its headlines markers"
    assert sync_readme([*paths(ROOT), "--check"]) == 0, "run `python -m stages.readme`"


def test_every_verdict_is_the_tests_own():
    metrics = committed()
    seeds = metrics["fashion_mnist"]["seeds.json"]
    lines = "\n".join(headlines(metrics, 0))
    for test in seeds["tests"].values():
        if test["test"] == "paired t":  # the Welch variant is in the Findings block only
            assert test["verdict"] in lines
    flipped = copy.deepcopy(metrics)
    flipped["fashion_mnist"]["seeds.json"]["tests"]["adjusted_vs_control"]["verdict"] = "adjusted better than control"
    assert "adjusted better than control" in "\n".join(headlines(flipped, 0))
    untested = copy.deepcopy(metrics)
    del untested["fashion_mnist"]["seeds.json"]["tests"]["importance_vs_l1_norm"]
    text = "\n".join(headlines(untested, 0))
    assert "importance vs l1_norm" not in text and "importance vs random" in text  # no test, no verdict


def test_headlines_state_spread_and_a_lone_seed_without_it():
    metrics = committed()
    base = metrics["fashion_mnist"]["seeds.json"]["summary"]["baseline"]["top1"]
    line = next(x for x in headlines(metrics, 0) if "Paper 1's CNN" in x)
    assert f"{base['mean']:.2f} ± {base['std']:.2f} %" in line and f"[{base['ci95_low']:.2f}, {base['ci95_high']:.2f}]" in line
    one = {"fashion_mnist": {"seeds.json": {"n": 1, "seeds": [0], "summary": {
        "baseline": {"top1": {"n": 1, "mean": 92.3, "std": None, "values": [92.3], "seeds": [0]}}}}}}
    assert "92.30 % (one seed, seed 0: 92.30)" in "\n".join(headlines(one, 0))
    assert "has not run" in headlines({"mnist": {}}, 0)[0]


def test_readme_check_fails_when_a_result_changes_and_the_rewrite_fixes_it(tmp_path, capsys):
    for rel in ("README.md", "params.yaml", "reports/RESULTS.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    shutil.copytree(ROOT / "reports" / "metrics", tmp_path / "reports" / "metrics")
    assert sync_readme([*paths(tmp_path), "--check"]) == 0
    seeds = tmp_path / "reports" / "metrics" / "fashion_mnist" / "seeds.json"
    doc = json.loads(seeds.read_text())
    doc["summary"]["baseline"]["top1"]["mean"] = 88.5
    seeds.write_text(json.dumps(doc))
    assert sync_readme([*paths(tmp_path), "--check"]) == 1 and "run `python -m stages.readme`" in capsys.readouterr().err
    assert sync_readme(paths(tmp_path)) == 0 and "88.50 ± " in (tmp_path / "README.md").read_text()
    assert sync_readme([*paths(tmp_path), "--check"]) == 0
    seeds.write_text(seeds.read_text()[:50])  # truncated
    before = (tmp_path / "README.md").read_text()
    assert sync_readme(paths(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seeds.json" in err and "not valid JSON" in err
    assert (tmp_path / "README.md").read_text() == before  # nothing half-written


def test_hand_written_readme_states_no_p_value():
    """Outside the generated blocks (and code), README.md may explain but not pronounce: no p-value by hand."""
    text = (ROOT / "README.md").read_text()
    prose = re.sub(r"<!-- (results|headlines):start -->.*?<!-- \1:end -->", "", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    found = [prose[max(0, m.start() - 60):m.end()].replace("\n", " ") for m in P_VALUE.finditer(prose)]
    assert not found, found
    assert P_VALUE.search("not distinguishable (paired t, p = 0.72)")  # the pattern does catch one
