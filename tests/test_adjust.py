"""Paper 1's width rule (cnnvis.adjust), the control's widths, the stages' Table I."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import yaml

from cnnvis import ConfigError
from cnnvis import adjust as A
from cnnvis import similarity as S
from cnnvis.config import ModelConfig, parse
from cnnvis.models import build_model, count_parameters
from cnnvis.similarity import Redundancy, SimilarityConfig
from cnnvis.studies import adjust as sdj

from conftest import ROOT


def red(k: int, distinct: int, dead: int = 0) -> Redundancy:
    return Redundancy(num_kernels=k, dead_kernels=tuple(range(dead)), mean_similarity=0.6, pair_std=0.05,
                      image_spread=0.05, fraction_above=0.01, groups=(), distinct=distinct, threshold=0.8)


CFG = A.AdjustConfig(lower=0.15, upper=0.30, growth_factor=1.5, max_width=128, min_width=8, max_steps=4,
                     search_reference=False)


class Fakes:
    """train_fn / measure_fn whose redundancy is a given function of the layer's width."""

    def __init__(self, value_of_width):
        self.value_of_width = value_of_width
        self.trained: list[tuple[int, ...]] = []

    def train_fn(self, widths):
        self.trained.append(widths)
        return widths, 80.0 + len(self.trained)  # the "model" is its widths

    def measure_fn(self, model, i):
        k = model[i]
        v = self.value_of_width(k)
        return red(k, distinct=round(k * (1 - v)))


def test_metric_and_band():
    r = red(64, distinct=48)
    assert A.metric_value(r, "redundant_fraction") == pytest.approx(0.25)
    assert A.classify(0.25, CFG) == "in_band"
    assert A.classify(0.31, CFG) == "high" and A.classify(0.1, CFG) == "low"
    assert A.classify(float("nan"), CFG) == "high"  # every kernel dead
    assert A.grow_width(64, CFG) == 96 and A.grow_width(100, CFG) == 128
    assert A.grow_width(64, dataclasses.replace(CFG, growth="add", growth_step=32)) == 96
    assert A.shrink_width(32, red(32, distinct=20), CFG) == 20
    assert A.shrink_width(32, red(32, distinct=3), CFG) == 16  # shrink_floor 0.5
    assert A.shrink_width(12, red(12, distinct=2), CFG) == 8  # min_width


def test_grow_until_the_band_is_entered():
    fakes = Fakes(lambda k: k / 512)  # 64 → 0.125 (low), 96 → 0.19 (in band)
    res = A.adjust_widths([red(32, 30), red(64, 56)], (32, 64), dataclasses.replace(CFG, layers=(1,)),
                          train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
    assert res.widths == (32, 96)
    assert fakes.trained == [(32, 96)]
    grow = [s for s in res.steps if s.phase == "grow"]
    assert [(s.width, s.band) for s in grow] == [(96, "in_band")] and grow[0].proxy_top1 == 81.0
    assert res.decisions == [{"layer": 1, "action": "grow", "from": 64, "to": 96,
                              "judged": {"value": 0.125, "lo": 0.125, "hi": 0.125, "sd": 0.0},
                              "reason": "redundant_fraction 0.125 < lower 0.15; width 96 enters the band "
                                        "(judged 0.188)"}]


def test_grow_stops_at_max_width_and_undoes_an_overshoot():
    fakes = Fakes(lambda k: 0.05)
    res = A.adjust_widths([red(64, 61)], (64,), CFG, train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
    assert res.widths == (128,) and "max_width 128 reached" in res.decisions[0]["reason"]
    fakes = Fakes(lambda k: 0.05 if k < 96 else 0.5)
    res = A.adjust_widths([red(64, 61)], (64,), CFG, train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
    assert res.widths == (64,) and res.decisions[0]["action"] == "keep" and "overshoots" in res.decisions[0]["reason"]


def test_reference_calibrates_the_brief_recipe():
    """Brief training adds +0.2 redundancy at every width: judged relative to the reference, 96 is in band."""
    cfg = dataclasses.replace(CFG, search_reference=True, search_calibrate=True)
    for calibration in A.CALIBRATIONS:
        fakes = Fakes(lambda k: 0.2 + k / 512)
        res = A.adjust_widths([red(64, 56)], (64,), dataclasses.replace(cfg, calibration=calibration),
                              train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
        assert fakes.trained == [(64,), (96,)]
        assert res.widths == (96,), calibration
        ref = next(s for s in res.steps if s.phase == "reference")
        assert ref.width == 64 and "trained baseline 0.125, brief 0.328" in ref.note
        assert ref.judged.value == pytest.approx(0.125)  # the reference judges as the trained baseline itself
    fakes = Fakes(lambda k: 0.2 + k / 512)  # uncalibrated: 0.325 at 64 already overshoots
    res = A.adjust_widths([red(64, 56)], (64,), dataclasses.replace(cfg, search_calibrate=False),
                          train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
    assert res.widths == (64,)


# The committed Fashion-MNIST search (reports/metrics/fashion_mnist/seeds/0/adjust.json): conv2 of the trained baseline has
# 64 distinct kernels of 64; briefly trained at each width: (dead kernels, distinct groups)
COMMITTED_BRIEF_CONV2 = {64: (18, 34), 96: (9, 52), 128: (10, 90)}


class BriefFakes(Fakes):
    """conv2's brief trainings as the committed search measured them; conv1 as given."""

    def __init__(self, conv1=lambda k: red(k, k)):
        super().__init__(None)
        self.conv1 = conv1

    def measure_fn(self, model, i):
        k = model[i]
        if i == 0:
            return self.conv1(k)
        dead, distinct = COMMITTED_BRIEF_CONV2[k]
        return red(k, distinct, dead)


def test_share_calibration_reaches_the_band_the_offset_could_not():
    """The offset judged conv2's candidates below 0 (the band unreachable, the cap decided); the share
    calibration judges the 96-kernel candidate inside the band and stops there."""
    cfg = A.AdjustConfig(layers=(1,))
    baseline = [red(32, 26), red(64, 64)]
    fakes = BriefFakes()
    old = A.adjust_widths(baseline, (32, 64), dataclasses.replace(cfg, calibration="offset"),
                          train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
    grow = [s for s in old.steps if s.phase == "grow"]
    assert [round(s.judged.value, 3) for s in grow] == [-0.01, -0.172]
    assert old.widths == (32, 128) and "max_width 128 reached" in old.decisions[0]["reason"]
    fakes = BriefFakes()
    new = A.adjust_widths(baseline, (32, 64), cfg, train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
    assert new.widths == (32, 96) and "width 96 enters the band" in new.decisions[0]["reason"]
    step = next(s for s in new.steps if s.phase == "grow")
    assert step.judged.value == pytest.approx(1 - (52 / 87) / (34 / 46))  # 0.191: in [0.15, 0.30]
    assert cfg.lower <= step.judged.value <= cfg.upper
    assert all(0.0 <= s.judged.value <= 1.0 for s in new.steps if s.judged is not None)
    assert fakes.trained == [(32, 64), (32, 96)]  # the reference and one step: the cap never reached


def test_share_calibration_is_bounded_and_monotone():
    cfg = A.AdjustConfig()
    base, ref = red(64, 60, dead=4), red(64, 30, dead=20)
    assert A.calibrated(ref, ref, base, cfg) == pytest.approx(A.metric_value(base, cfg.metric))
    values = [A.calibrated(red(96, d, dead=6), ref, base, cfg) for d in range(1, 91)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values, reverse=True)  # more distinct kernels, less redundant
    assert math.isnan(A.calibrated(red(96, 10), red(64, 0, dead=64), base, cfg))  # a reference with no alive kernel


def borderline_layer(pool: int = 200, k: int = 32, seed: int = 0):
    """Fingerprints [pool, k] of a layer with 3 sure duplicate pairs and 4 pairs whose similarity averages at
    the threshold 0.8 (10 of 64 bits apart, each bit flipped with p = 0.033 per image): redundant fraction
    3/32 … 7/32 depending on the images, either side of lower = 0.15."""
    rng = np.random.default_rng(seed)
    base = rng.random((k, 64)) < 0.5
    for a, b in ((0, 1), (2, 3), (4, 5)):
        base[b] = base[a]
    for a, b in ((6, 7), (8, 9), (10, 11), (12, 13)):
        base[b] = base[a]
        base[b, rng.choice(64, 10, replace=False)] ^= True
    bits = base[None] ^ (rng.random((pool, k, 64)) < 0.033)
    return S.pack_bits(bits), np.zeros((pool, k), bool)


def test_default_margin_keeps_a_borderline_layer_stable_under_reshuffled_probes():
    sim_cfg = SimilarityConfig(threshold=0.8)
    fp, dead = borderline_layer()
    cfg = A.AdjustConfig(layers=(0,), search_reference=False)  # the default margin and number of probe images

    def decide(cfg, seed):
        perm = np.random.default_rng(seed).permutation(len(fp))
        ls = A.similarity_of(fp[perm], dead[perm])
        fakes = Fakes(lambda k: 0.2)
        res = A.adjust_widths([A.Measurement(S.redundancy(ls, sim_cfg), ls, sim_cfg)], (32,), cfg,
                              train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
        return res.decisions[0]["action"], res.steps[0].judged

    default = [decide(cfg, seed) for seed in range(20)]
    assert {action for action, _ in default} == {"keep"}
    assert all(j.lo < cfg.lower < j.hi for _, j in default)  # the spread across images reaches across the edge
    bare = [decide(dataclasses.replace(cfg, margin_se=0.0), seed) for seed in range(20)]
    assert {action for action, _ in bare} == {"keep", "grow"}  # without the margin the decision flips


def test_measurement_on_fewer_images_equals_measuring_them(tiny_p1):
    sim_cfg = SimilarityConfig(threshold=0.8)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    m = A.measurement(tiny_p1, 1, x, sim_cfg)
    assert m.images == 6 and m.first(None) is m
    rec = A.reconstruct(tiny_p1, 1, x).astype(np.float16)
    direct = S.layer_similarity(rec[:3], sim_cfg)
    sub = m.first(3)
    assert sub.redundancy == S.redundancy(direct, sim_cfg)
    np.testing.assert_array_equal(np.nan_to_num(sub.similarity.mean, nan=-1), np.nan_to_num(direct.mean, nan=-1))
    np.testing.assert_array_equal(sub.similarity.count, direct.count)
    with pytest.raises(A.NotMeasured, match="7 probe images"):
        m.first(7)
    reps = m.replicates(50)
    assert len(reps) == 50 and m.replicates(50) is reps  # computed once
    assert all(r.num_kernels == 16 for r in reps) and m.replicates(0) is None
    assert A.Measurement(m.redundancy).replicates(50) is None  # no per-image data: no spread


def test_ablation_rejudges_the_search_and_trains_only_within_budget():
    cfg = A.AdjustConfig(layers=(0, 1))
    baseline = [red(32, 26), red(64, 64)]  # conv1 0.1875 (in band), conv2 0.0 (low)
    fakes = BriefFakes(conv1=lambda k: red(k, round(0.8 * k)))
    res = A.adjust_widths(baseline, (32, 64), cfg, train_fn=fakes.train_fn, measure_fn=fakes.measure_fn)
    assert res.widths == (32, 96) and len(fakes.trained) == 2
    settings = A.ablation_settings(cfg, previous_probe_images=10)
    rows = A.ablation(res.record, (32, 64), settings, undertrained=False, train_fn=fakes.train_fn,
                      measure_fn=fakes.measure_fn, budget=1)
    by = {r.setting: r for r in rows}
    assert [r.setting for r in rows] == [name for name, _ in settings]
    assert {"default", "previous rule", "calibration offset", "calibration off", "no margin", "band [0.1, 0.25]",
            "band [0.2, 0.4]", "cap 96", "4 probe images", "10 probe images", "20 probe images"} == set(by)
    assert by["default"].widths == res.widths and list(by["default"].decisions) == res.decisions
    assert by["default"].reused == 2 and not by["default"].added
    assert by["previous rule"].widths == (32, 128) and by["previous rule"].added == ((32, 128),)
    assert by["calibration offset"].widths == (32, 128)  # re-uses the training the previous row added
    assert by["calibration off"].widths == (32, 64)  # raw brief value 0.458 > upper: the step is undone
    assert by["band [0.2, 0.4]"].widths is None and "widths [48, 64]" in by["band [0.2, 0.4]"].missing
    assert len(fakes.trained) == 3  # one training added (the budget), none repeated
    md = sdj.ablation_markdown(tuple(rows), "fashion_mnist", cfg, {"visualize_probes": 10})
    assert md.count("\n| ") == len(rows) + 1 and "| previous rule | [0.15, 0.3] | 128 | offset | 0 | 10 | [32, 128] |" in md
    assert "not judged: needs a brief training of widths [48, 64]" in md


def test_probe_images_extend_the_visualize_probes_class_by_class():
    from cnnvis.studies.adjust import Probes, probe_indices

    labels = np.array([1, 0, 2, 1, 0, 2, 2, 0, 1, 1])
    probes = Probes(np.array([1, 0, 2]), labels[[1, 0, 2]])  # the first image of each class
    idx, lab = probe_indices(labels, probes, 8)
    assert idx.tolist() == [1, 0, 2, 4, 3, 5, 7, 8]  # then the second of each class, then the third
    assert lab.tolist() == labels[idx].tolist()
    assert probe_indices(labels, probes, 2)[0].tolist() == [1, 0]
    assert probe_indices(labels, probes, None)[0].tolist() == [1, 0, 2]
    assert len(probe_indices(labels, probes, 50)[0]) == 10  # at most the whole test split


def test_shrink_and_rule_one_first_when_undertrained():
    calls = []

    def further():
        calls.append(1)
        return (32, 64)

    fakes = Fakes(lambda k: 0.2)  # after further training both layers sit in the band
    res = A.adjust_widths([red(32, 20), red(64, 50)], (32, 64), CFG, train_fn=fakes.train_fn,
                          measure_fn=fakes.measure_fn, undertrained=True, further_fn=further)
    assert calls == [1] and res.further_training and res.extra_epochs == CFG.extra_epochs
    assert res.widths == (32, 64) and [d["action"] for d in res.decisions] == ["keep", "keep"]
    res = A.adjust_widths([red(32, 20), red(64, 50)], (32, 64), CFG, train_fn=fakes.train_fn,
                          measure_fn=fakes.measure_fn, undertrained=False, further_fn=further)
    assert calls == [1] and not res.further_training
    assert res.widths == (20, 64) and res.decisions[0]["action"] == "shrink"


def test_each_width_tuple_is_trained_once():
    """With a reference training per grown layer, layer 1's reference is layer 0's last trial: trained once."""
    fakes = Fakes(lambda k: 0.0)  # never enters the band: every layer grows to max_width
    cfg = dataclasses.replace(CFG, search_reference=True, search_calibrate=False)
    res = A.adjust_widths([red(32, 32), red(64, 64)], (32, 64), cfg, train_fn=fakes.train_fn,
                          measure_fn=fakes.measure_fn)
    assert res.widths == (cfg.max_width, cfg.max_width)
    assert len(fakes.trained) == len(set(fakes.trained))
    assert [s.phase for s in res.steps].count("reference") == 2  # both references still measured and logged


def test_config_checks():
    with pytest.raises(ConfigError, match="lower"):
        parse(A.AdjustConfig, {"lower": 0.5, "upper": 0.2}, "adjust")
    with pytest.raises(ConfigError, match="adjust.metric"):
        parse(A.AdjustConfig, {"metric": "entropy"}, "adjust")
    with pytest.raises(ConfigError, match="out of range"):
        A.adjust_widths([red(8, 8)], (8,), dataclasses.replace(CFG, layers=(3,)), train_fn=None, measure_fn=None)


def test_uniform_control_matches_parameter_count():
    base = ModelConfig(widths=(32, 64), kernel_sizes=(5, 5), hidden=128)

    def count(ws):
        return count_parameters(build_model(dataclasses.replace(base, widths=ws), in_channels=1, num_classes=10,
                                            image_size=28))

    target = count((21, 96))
    ws = A.uniform_control_widths((32, 64), count, target)
    best = min(abs(count((round(32 * a), round(64 * a))) - target) for a in np.linspace(0.5, 3, 600))
    assert abs(count(ws) - target) <= best + 1
    assert ws[1] / ws[0] == pytest.approx(2.0, abs=0.1)  # one factor for every layer


def test_measure_real_deconvnet_leaves_model_unchanged(tiny_p1):
    before = {k: v.clone() for k, v in tiny_p1.state_dict().items()}
    tiny_p1.train()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ls, r, recon = A.measure(tiny_p1, 1, x, SimilarityConfig())
    assert recon.shape == (3, 16, 1, 28, 28) and ls.mean.shape == (16, 16)
    assert r.num_kernels == 16
    assert tiny_p1.training
    assert all(torch.equal(before[k], v) for k, v in tiny_p1.state_dict().items())


def _row(ds, before, after, control):
    def s(v):
        return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v),
                "values": v}
    return {"dataset": ds, "name": ds.upper(), "seeds": list(range(len(after))), "epochs": {"before": 4, "after": 4},
            "widths": {"before": [32, 64], "after": [21, 96], "control": [33, 66]},
            "parameters": {"before": 1000, "after": 1200, "control": 1190},
            "before": s(before), "after": s(after), "control": s(control)}


REFERENCE = ROOT / "reports" / "paper_reference.yaml"


def _seed_rows(ds, before, after, control, mcnemar=None):
    """One retrain row per seed (the stage's output): seed i has the i-th value of each column."""
    rows = {}
    for i, (b, a, c) in enumerate(zip(before, after, control, strict=True)):
        row = {**_row(ds, [b], [a], [c]), "seeds": [i]}
        if mcnemar is not None:
            row["tests"] = {"mcnemar": mcnemar}
        rows[i] = row
    return rows


def test_table1_markdown_and_stage(tmp_path):
    from cnnvis import stats as S
    from cnnvis.studies.table1 import table1, table1_markdown
    from stages import table1 as stage

    reference = yaml.safe_load(REFERENCE.read_text())
    right = np.r_[np.ones(900), np.zeros(100)].astype(bool)
    mcnemar = S.mcnemar(right, np.r_[np.ones(850), np.zeros(150)].astype(bool), ("adjusted", "control")).as_dict()
    rows = {"mnist": _seed_rows("mnist", [98.0, 98.2, 98.1], [98.5, 98.7, 98.6], [98.6, 98.9, 98.6], mcnemar)}
    md = table1_markdown(table1(rows, ["mnist"], reference))
    # mean ± sample sd [95 % t interval] over the seeds; the paper's numbers from the file
    t = S.summarize(__import__("pandas").DataFrame({"g": 0, "v": [98.5, 98.7, 98.6]}), ["g"], "v").iloc[0]
    assert "| MNIST | 3 | 98.07 | 99.42 | 98.10 ± 0.10 [" in md
    assert f"| 98.60 ± 0.10 [{t.ci_low:.2f}, {t.ci_high:.2f}] |" in md
    paired = S.paired_t([98.5, 98.7, 98.6], [98.6, 98.9, 98.6], ("adjusted", "control")).as_dict()["verdict"]
    assert f"{paired}; McNemar per seed: 3 of 3 significant" in md  # the verdict is the test's
    assert "[32, 64] → [21, 96] ([33, 66]) (3/3)" in md  # each seed's decision, counted
    # decisions that differ between seeds are each counted
    rows["mnist"][2]["widths"] = {"before": [32, 64], "after": [32, 64], "control": [32, 64]}
    md = table1_markdown(table1(rows, ["mnist"], reference))
    assert "[32, 64] → [21, 96] ([33, 66]) (2/3); [32, 64] → [32, 64] ([32, 64]) (1/3)" in md

    root = tmp_path / "rows"
    for ds in ("fashion_mnist", "mnist", "cifar10"):
        (root / ds).mkdir(parents=True)
        (root / ds / "0.json").write_text(json.dumps({**_row(ds, [90.0], [91.0], [90.5]), "seeds": [0],
                                                      "tests": {"mcnemar": mcnemar}}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": {"fashion_mnist": {}, "mnist": {}}, "seeds": {"list": [0]},
                                      "hardware": {}}))
    out = tmp_path / "table1.md"
    argv = ["--rows", str(root), "--reference", str(REFERENCE), "--table", str(out), "--params", str(params)]
    stage.main(argv)
    body = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split("|")[1].strip() for line in body] == ["MNIST", "FASHION_MNIST"]  # paper order, selected only
    assert "adjusted better than control by 5.00 points (McNemar exact, n=1000, p=" in body[0]  # n=1 seed: per image
    assert body[1].split("|")[3:5] == [" — ", " — "]  # no paper numbers for a dataset the paper does not report
    # a seed of seeds.list without its row stops the stage, naming the dataset and seed
    params.write_text(yaml.safe_dump({"dataset": {"mnist": {}}, "seeds": {"list": [0, 1]}, "hardware": {}}))
    out.unlink()
    with pytest.raises(SystemExit) as e:
        stage.main(argv)
    assert e.value.code == 2 and not out.exists()


def test_table1_stage_missing_reference_is_one_line(tmp_path, capsys):
    from stages import table1 as stage

    (tmp_path / "rows").mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": {"mnist": {}}, "seeds": {"list": [0]}, "hardware": {}}))
    with pytest.raises(SystemExit) as e:
        stage.main(["--rows", str(tmp_path / "rows"), "--reference", str(tmp_path / "nope.yaml"),
                    "--table", str(tmp_path / "t.md"), "--params", str(params)])
    assert e.value.code == 2 and "nope.yaml: missing" in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists()


def test_probe_images_follow_the_visualize_indices():
    from cnnvis import DataError
    from cnnvis import data as D
    from cnnvis.studies.adjust import Probes, probe_images

    train, test, classes = D.make_synthetic(28, 64, 32, seed=0)
    raw = D.RawDataset("synthetic", train, test, classes, "synthetic")
    probes = Probes.from_arrays({"probe_indices": np.array([5, 2, 9]), "probe_labels": test.labels[[5, 2, 9]]})
    spec = {"mean": [0.5], "std": [0.25]}
    x, labels = probe_images(raw, probes, 2, spec)
    assert x.shape == (2, 1, 28, 28) and labels.tolist() == test.labels[[5, 2]].tolist()
    assert torch.allclose(x[1], (torch.as_tensor(test.images[2]).permute(2, 0, 1).float() / 255 - 0.5) / 0.25)
    with pytest.raises(DataError, match="outside the test split"):
        probe_images(raw, Probes(np.array([32]), np.array([0])), None, spec)
    with pytest.raises(DataError, match="no probe_indices"):
        Probes.from_arrays({"layers": np.array(["a"])})


@pytest.mark.slow
def test_similarity_adjust_retrain_table_on_synthetic(tmp_path):
    """The three stages and the table end to end on a tiny synthetic dataset (seconds)."""
    from cnnvis import data as D
    from cnnvis.attribution.deconvnet import project_feature_maps
    from cnnvis.config import HardwareConfig, TrainConfig, to_dict
    from cnnvis.io import save_json
    from cnnvis.models import conv_layers, load_checkpoint
    from cnnvis.studies.training import fit
    from stages import adjust_architecture, retrain, similarity, table1

    train, test, classes = D.make_synthetic(28, 512, 128, seed=0)
    raw = tmp_path / "raw"
    raw.mkdir()
    D.save_npz(raw, D.RawDataset("synthetic", train, test, classes, "synthetic"))
    model_cfg = ModelConfig(widths=(6, 8), kernel_sizes=(3, 3), hidden=16)
    train_cfg = TrainConfig(epochs=2, batch_size=64, val_size=64, augment="none")
    hw = HardwareConfig(threads=1, progress="none")
    m = tmp_path / "m"
    m.mkdir()
    trained = fit(D.load_npz(raw), model_cfg, train_cfg, hw, tag="baseline")
    trained.checkpoint().save(m / "baseline.pt")
    save_json(m / "baseline.json", trained.metrics)
    model, state = load_checkpoint(m / "baseline.pt")
    idx = np.arange(4)
    x = D.normalize(D.to_tensor(test.images[idx]), state["spec"]["mean"], state["spec"]["std"])
    arrays = {f"recon_{i}": project_feature_maps(model, c, x, rectify=True).numpy().astype(np.float16)
              for i, (_, c) in enumerate(conv_layers(model))}
    np.savez(m / "recon.npz", layers=np.array([n for n, _ in conv_layers(model)]), probe_labels=test.labels[idx],
             probe_indices=idx, **arrays)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "dataset": {"synthetic": {"name": "synthetic"}}, "hardware": to_dict(hw), "train": to_dict(train_cfg),
        "similarity": {"agreement_maps": 8}, "seeds": {"list": [0]},
        "adjust": {"lower": 0.9, "upper": 0.95, "max_steps": 1, "search_train_images": 448, "search_val_images": 64,
                   "probe_images": 4, "growth": "add", "growth_step": 4, "max_width": 16},
    }))
    p = ["--params", str(params), "--dataset", "synthetic"]
    similarity.main([*p, "--recon", str(m / "recon.npz"), "--metrics", str(m / "similarity.json"),
                     "--arrays", str(m / "similarity.npz"), "--figures", str(tmp_path / "fig_sim")])
    adjust_architecture.main([*p, "--data", str(raw), "--baseline", str(m / "baseline.pt"),
                              "--baseline-metrics", str(m / "baseline.json"), "--similarity", str(m / "similarity.json"),
                              "--recon", str(m / "recon.npz"), "--out", str(m / "adjusted.yaml"),
                              "--metrics", str(m / "adjust.json"), "--ablation", str(tmp_path / "adjust_ablation.md")])
    log = json.loads((m / "adjust.json").read_text())
    assert log["probe"]["visualize_probes"] == 4 and len(log["probe"]["indices"]) == 20  # ablation's 20 measured
    assert log["probe"]["indices"][:4] == [0, 1, 2, 3]
    ours = [s["ours_on_its_probes"] for s in log["similarity_stage"]]
    assert ours == [s["value"] for s in log["similarity_stage"]]  # our measurement on its probes = the stage's
    assert [r["setting"] for r in log["ablation"]][:2] == ["default", "previous rule"]
    assert log["ablation"][0]["widths"] == log["widths"]
    table = (tmp_path / "adjust_ablation.md").read_text()
    assert table.count("\n| ") == len(log["ablation"]) + 1
    grown = [d for d in log["decisions"] if d["action"] == "grow"]
    assert grown and all(d["to"] == d["from"] + 4 for d in grown)  # band [0.9, 0.95]: every layer is "low"
    assert any(s["phase"] == "grow" and s["proxy_top1"] is not None for s in log["steps"])
    retrain.main([*p, "--data", str(raw), "--adjusted", str(m / "adjusted.yaml"),
                  "--baseline-metrics", str(m / "baseline.json"), "--recon", str(m / "recon.npz"),
                  "--out", str(m / "adjusted.pt"), "--control-out", str(m / "control.pt"),
                  "--metrics", str(m / "adjusted.json"), "--rows", str(tmp_path / "rows" / "synthetic" / "0.json"),
                  "--figures", str(tmp_path / "fig_adj"), "--resume-dir", str(tmp_path / "resume")])
    adj = json.loads((m / "adjusted.json").read_text())
    assert adj["widths"]["after"] == yaml.safe_load((m / "adjusted.yaml").read_text())["widths"]
    assert load_checkpoint(m / "adjusted.pt")[1]["model"]["widths"] == adj["widths"]["after"]
    assert load_checkpoint(m / "control.pt")[1]["model"]["widths"] == adj["widths"]["control"]
    ratio = adj["parameters"]["control"] / adj["parameters"]["after"]
    assert 0.8 < ratio < 1.2 and adj["widths"]["control"] != adj["widths"]["after"]
    figures = {f.name for f in (tmp_path / "fig_adj").iterdir()}  # each figure once: paper name, else generic
    assert figures == {"p1_fig13.png", "p1_fig14.png", "maps_features.conv1.png", "matrix_features.conv1.png"}
    assert not list((tmp_path / "resume").iterdir())  # resume state removed once each training finished
    mc = adj["adjusted_vs_control"]["mcnemar"]  # per image on the whole test split, the seed's two models
    assert mc["test"] == "McNemar exact" and mc["n"] == adj["test"]["n"] and 0 < mc["p_value"] <= 1
    table1.main(["--params", str(params), "--rows", str(tmp_path / "rows"), "--reference", str(REFERENCE),
                 "--table", str(tmp_path / "table1.md")])
    assert "| synthetic | 1 |" in (tmp_path / "table1.md").read_text()
