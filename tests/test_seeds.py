"""Seeds as a pipeline dimension: the per-seed stages' --seed, the aggregation across seeds (pandas), the tests
across seeds, and the `seeds` stage's outputs and errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from cnnvis import DataError
from cnnvis import stats as S


def test_summarize_is_mean_sample_sd_and_the_t_interval():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 3 + ["c"], "v": rng.normal(90, 2, 9)})
    out = S.summarize(frame, ["g"], "v").set_index("g")
    for g, part in frame.groupby("g"):
        v = part.v.to_numpy()
        assert out.loc[g, "n"] == len(v) and out.loc[g, "mean"] == pytest.approx(v.mean())
        if len(v) > 1:
            lo, hi = scipy_stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=scipy_stats.sem(v))
            assert out.loc[g, "sd"] == pytest.approx(v.std(ddof=1))
            assert (out.loc[g, "ci_low"], out.loc[g, "ci_high"]) == pytest.approx((lo, hi))
    assert np.isnan(out.loc["c", "sd"]) and np.isnan(out.loc["c", "ci_low"])  # one seed: no spread, no interval


def test_paired_t_is_scipys_and_names_the_direction():
    a, b = [91.0, 92.5, 90.8, 91.9], [90.1, 91.0, 90.2, 90.7]
    t = S.paired_t(a, b, ("adjusted", "control"))
    assert t.p_value == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue) and t.n == 4
    assert t.difference == pytest.approx(np.mean(np.subtract(a, b)))
    assert t.as_dict()["verdict"].startswith("adjusted better than control by 1.05 points (paired t, n=4")
    assert S.paired_t([1.0], [2.0]) is None  # one pair: nothing to test
    same = S.paired_t([90.0, 91.0], [90.0, 91.0], ("a", "b"))
    assert same.p_value == 1.0 and "not distinguishable" in same.as_dict()["verdict"]
    shifted = S.paired_t([91.0, 92.0], [90.0, 91.0], ("a", "b"))  # the same difference every seed: no spread
    assert shifted.p_value == 1.0 and "not testable" in shifted.detail  # scipy: t = inf, p = 0 from 2 seeds


def _docs(seed: int, after: float, control: float, widths: list[int], importance_err: float) -> dict:
    curve = lambda err: [{"fraction": f, "error_mean": err + 10 * f} for f in (0.0, 0.3, 0.6)]  # noqa: E731
    mcnemar = {"test": "McNemar exact", "n": 1000, "a": "adjusted", "b": "control", "p_value": 0.01 * (seed + 1),
               "difference": after - control,
               "verdict": f"seed {seed}'s verdict"}
    return {"baseline.json": {"test": {"top1": 90.0 + seed / 10, "top5": 99.0}},
            "adjust.json": {"widths": widths},
            "adjusted.json": {"runs": {"after": [{"test": {"top1": after, "top5": 99.5}}],
                                       "control": [{"test": {"top1": control, "top5": 99.4}}]},
                              "adjusted_vs_control": {"mcnemar": mcnemar}},
            "prune.json": {"sweep": {"summary": {"importance": {"curve": curve(importance_err)},
                                                 "l1_norm": {"curve": curve(importance_err + 0.5)},
                                                 "random": {"curve": curve(importance_err + 8)}}}},
            "encdec.json": {"test": {"top1": 88.0 + seed}, "resnet18": {"test": {"top1": 89.0 + seed}}}}


DOCS = {0: _docs(0, 92.0, 91.0, [32, 96], 8.0), 1: _docs(1, 92.4, 91.1, [32, 96], 8.2),
        2: _docs(2, 91.8, 91.2, [32, 64], 7.9)}


def test_seeds_study_aggregates_every_model_and_tests_across_seeds():
    from cnnvis.studies.seeds import seeds_study

    study = seeds_study("mnist", DOCS, (0, 1, 2))
    m = study.metrics()
    assert m["n"] == 3 and m["seeds"] == [0, 1, 2]
    adjusted = m["summary"]["adjusted"]["top1"]
    assert adjusted["values"] == [92.0, 92.4, 91.8] and adjusted["mean"] == pytest.approx(92.0667, abs=1e-4)
    assert adjusted["std"] == pytest.approx(np.std([92.0, 92.4, 91.8], ddof=1), abs=1e-4)
    assert m["summary"]["pruned (random)"]["error_avg"]["mean"] == pytest.approx(np.mean([16, 16.2, 15.9]) + 3,
                                                                                  abs=1e-4)
    # the width decision of every seed, most frequent first
    assert m["decisions"] == [{"widths": [32, 96], "seeds": [0, 1], "count": 2},
                              {"widths": [32, 64], "seeds": [2], "count": 1}]
    t = m["tests"]["adjusted_vs_control"]
    assert t["test"] == "paired t" and t["p_value"] == pytest.approx(
        scipy_stats.ttest_rel([92.0, 92.4, 91.8], [91.0, 91.1, 91.2]).pvalue)
    assert m["tests"]["adjusted_vs_control_welch"]["test"] == "Welch t"
    # an error: lower is better, so importance (0.5 points lower every seed) is the better ranking
    assert m["tests"]["importance_vs_l1_norm"]["difference"] == pytest.approx(0.5)
    assert m["tests"]["encdec_vs_resnet18"]["difference"] == pytest.approx(-1.0)
    own = m["per_seed_tests"]["pHash-adjusted widths vs uniform-width control, test top-1"]
    assert [e["seed"] for e in own] == [0, 1, 2] and own[2]["p_value"] == pytest.approx(0.03)
    md = study.markdown()
    assert "| adjusted | top1 | 3 | 92.07 ± 0.31 |" in md and "| [32, 96] | 2 | 2/3 | 0, 1 |" in md
    assert "| pHash-adjusted widths vs uniform-width control, test top-1 | McNemar exact | 3 | 0 | 0 |" in md
    assert [name for name, _ in study.figures()] == ["top1_across_seeds.png", "pruning_across_seeds.png"]


def test_tally_counts_each_seeds_test_by_its_outcome():
    entries = [{"seed": 0, "difference": 2.0, "p_value": 0.001}, {"seed": 1, "difference": -1.5, "p_value": 0.01},
               {"seed": 2, "difference": 0.3, "p_value": 0.4}, {"seed": 3, "difference": -0.2, "p_value": 0.2}]
    assert S.tally(entries) == ([0], [1], [2, 3])  # significant in 2 of 4, but in opposite directions


def test_findings_say_which_way_each_seeds_test_went():
    from cnnvis.report import findings

    per_seed = [{"seed": s, "test": "paired bootstrap", "n": 2000, "a": "l1_norm", "b": "random", "p_value": p,
                 "difference": d, "verdict": ""} for s, d, p in ((0, 9.7, 1e-4), (1, -1.8, 1e-4), (2, 0.1, 0.6))]
    line = findings({"mnist": {"seeds.json": {"n": 3, "tests": {}, "per_seed_tests": {"pruning": per_seed}}}})[0]
    assert line == ("mnist, pruning, each seed's own paired bootstrap test (n=2000 per seed, α=0.05): l1_norm better "
                    "in seed 0; random better in seed 1; not distinguishable in seed 2 (p = 0.0001, 0.0001, 0.6).")


def test_seeds_study_refuses_a_missing_seed_and_tests_nothing_at_one_seed():
    from cnnvis.studies.seeds import seeds_study

    with pytest.raises(DataError, match="no results of seed 3 for mnist"):
        seeds_study("mnist", DOCS, (0, 1, 3))
    one = seeds_study("mnist", DOCS, (0,))
    assert one.tests == {} and one.metrics()["summary"]["adjusted"]["top1"]["std"] is None
    assert "Fewer than 2 seeds" in one.markdown()


def test_seeds_stage_writes_its_outputs_and_fails_cleanly(tmp_path, capsys):
    from stages.seeds import main

    per_seed = tmp_path / "seeds"
    for seed, files in DOCS.items():
        (per_seed / str(seed)).mkdir(parents=True)
        for name, doc in files.items():
            (per_seed / str(seed) / name).write_text(json.dumps(doc))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": {"mnist": {}}, "seeds": {"list": [0, 1, 2], "alpha": 0.05},
                                      "hardware": {}}))
    out = {"metrics": tmp_path / "m" / "seeds.json", "table": tmp_path / "t" / "seeds.md",
           "figures": tmp_path / "f"}
    argv = ["--dataset", "mnist", "--per-seed", str(per_seed), "--metrics", str(out["metrics"]),
            "--table", str(out["table"]), "--figures", str(out["figures"]), "--params", str(params)]
    main(argv)
    assert json.loads(out["metrics"].read_text())["n"] == 3
    assert "results across 3 seeds (0, 1, 2)" in out["table"].read_text()
    assert sorted(p.name for p in out["figures"].iterdir()) == ["pruning_across_seeds.png", "top1_across_seeds.png"]
    # a seed of seeds.list without results: one line, exit 2, nothing written
    for p in (out["metrics"], out["table"]):
        p.unlink()
    params.write_text(yaml.safe_dump({"dataset": {"mnist": {}}, "seeds": {"list": [0, 1, 5]}, "hardware": {}}))
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == ["seeds: error: no results of seed 5 for mnist; run `dvc repro` (the "
                                         "per-seed stages of seed 5) first"]
    assert not out["metrics"].exists() and not out["table"].exists()


def test_seed_flag_sets_the_seed_keys_of_a_stage():
    from cnnvis.config import TrainConfig
    from cnnvis.encdec import EncDecConfig
    from stages import prune_by_importance, retrain, train_baseline, train_encdec
    from stages._runner import with_seed

    params = {"train": TrainConfig(seed=0), "encdec": EncDecConfig()}
    seeded = with_seed(params, ("train.seed", "encdec.train.seed"), 7)
    assert seeded["train"].seed == 7 and seeded["encdec"].train.seed == 7 and params["train"].seed == 0
    assert seeded["train"].epochs == params["train"].epochs  # nothing else changes
    assert train_baseline.STAGE.seeded == retrain.STAGE.seeded == ("train.seed",)
    assert train_encdec.STAGE.seeded == ("encdec.train.seed",) and prune_by_importance.STAGE.seeded == ("prune.seed",)
    assert "--seed" in train_baseline.STAGE.parser().format_help()


def test_retrain_refuses_the_baseline_of_another_seed():
    from cnnvis.config import TrainConfig
    from cnnvis.studies.retrain import retrain_study

    with pytest.raises(DataError, match="the baseline of seed 1, this run's seed is 0"):
        retrain_study(None, None, {"seed": 1}, None, TrainConfig(seed=0), None, None, train=None,
                      baseline_source="baseline.json")
