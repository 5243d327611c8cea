"""Pruning (paper 3 §3.2.3): masking = removal, rankings, table, sweep, and the stage end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from cnnvis import ConfigError
from cnnvis import pruning as P
from cnnvis.config import ModelConfig
from cnnvis.models import build_model


def p1(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelConfig(widths=(4, 6), kernel_sizes=(3, 5), hidden=16, batchnorm=batchnorm),
                    in_channels=1, num_classes=5, image_size=12)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):  # a BN whose zero-input output is not zero
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            mod.bias.data.normal_(0, 0.5)
    return m.eval()


REFERENCE = Path(__file__).resolve().parent.parent / "reports" / "paper_reference.yaml"
X = torch.randn(40, 1, 12, 12, generator=torch.Generator().manual_seed(1))
REMOVED = {"features.conv1": torch.tensor([0, 2]), "features.conv2": torch.tensor([1, 3, 5])}


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "batchnorm"])
def test_masked_equals_physically_removed_and_original_untouched(bn):
    model = p1(bn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masked = P.zero_filters(model, REMOVED, X[:1])
    small = P.remove_filters(model, REMOVED, X[:1])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert masked.features.conv1.weight[[0, 2]].abs().sum() == 0 and masked.features.conv1.bias[[0, 2]].abs().sum() == 0
    assert small.features.conv1.out_channels == 2 and small.features.conv2.out_channels == 3
    assert small.features.conv2.in_channels == 2 and small.classifier.fc1.in_features == 3 * 3 * 3
    with torch.no_grad():
        torch.testing.assert_close(masked(X), small(X), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(masked(X), model(X))
    # the smaller model is exactly a P1CNN of the remaining widths
    ref = build_model(ModelConfig(widths=(2, 3), kernel_sizes=(3, 5), hidden=16, batchnorm=bn), in_channels=1, num_classes=5, image_size=12)
    ref.load_state_dict(small.state_dict())
    cost_before, cost_after = P.complexity(model, X[:1]), P.complexity(small, X[:1])
    assert cost_after["params"] == sum(p.numel() for p in small.parameters()) < cost_before["params"]
    assert cost_after["macs"] < cost_before["macs"]


def test_residual_coupled_layers_masked_equals_removed_and_refused_when_both_pruned():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18", width_multiplier=0.125), in_channels=1, num_classes=3, image_size=8).eval()
    x = torch.randn(4, 1, 8, 8)
    one = {"layer1.0.conv2": torch.tensor([0, 3])}  # coupled to the stem and layer1.1.conv2 by the residual sums
    with torch.no_grad():
        torch.testing.assert_close(P.zero_filters(model, one, x[:1])(x), P.remove_filters(model, one, x[:1])(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="residual sum"):
        P.remove_filters(model, {"layer1.0.conv2": torch.tensor([0]), "layer1.1.conv2": torch.tensor([1])}, x[:1])


def test_lowest_filters_global_ranking_min_keep_and_threshold():
    scores = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([0.5, 0.1])}
    removed, thr = P.lowest_filters(scores, 0.6)  # 3 of 5; b keeps its best filter
    assert removed["a"].tolist() == [1, 2] and removed["b"].tolist() == [1] and thr == 2.0
    removed, thr = P.lowest_filters(scores, 0.0)
    assert all(len(v) == 0 for v in removed.values()) and thr != thr  # NaN: nothing removed
    rnd = P.random_filters({"a": 3, "b": 2}, 0.6, torch.Generator().manual_seed(0))
    assert sum(len(v) for v in rnd.values()) == 3 and len(rnd["a"]) <= 2 and len(rnd["b"]) <= 1


def test_l1_norms_and_normalization():
    model = p1()
    l1 = P.filter_l1_norms(model, ["features.conv1", "features.conv2"])
    torch.testing.assert_close(l1["features.conv2"][3], model.features.conv2.weight[3].abs().sum())
    norm = P.normalize_scores(l1)
    assert all(abs(v.mean().item() - 1) < 1e-6 for v in norm.values())


def test_evaluate_per_class_table_and_sweep(monkeypatch):
    model = p1()
    y = model(X).argmax(1).detach()
    y[:5] = (y[:5] + 1) % 5  # 5 known errors
    res = P.evaluate(model, X, y, 5)
    assert res["error"] == pytest.approx(100 * 5 / 40)
    for c in range(5):
        sel = y == c
        if sel.any():
            assert res["per_class_error"][c] == pytest.approx(100 * (res["predictions"][sel] != c).float().mean().item())
    relevance = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    rows = P.per_class_table(model, X, y, relevance, "features.conv1", X[:1])
    for r in rows:
        assert r["least_filter"] == int(relevance[r["class"]].argmin()) and r["most_filter"] == int(relevance[r["class"]].argmax())
        sel = y == r["class"]
        masked = P.zero_filters(model, {"features.conv1": torch.tensor([r["most_filter"]])}, X[:1])
        assert r["error_most_removed"] == pytest.approx(P.evaluate(masked, X[sel], y[sel], 5)["error"])
    scores = P.normalize_scores(P.filter_l1_norms(model, ["features.conv1", "features.conv2"]))
    calls = []
    real = P.evaluate
    monkeypatch.setattr(P, "evaluate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    sweep = P.sweep(model, X, y, 5, {"l1_norm": scores}, [0.0, 0.5], X[:1], random_repeats=2)
    assert [r["method"] for r in sweep] == ["l1_norm", "l1_norm", "random", "random", "random", "random"]
    assert sweep[0]["error"] == pytest.approx(res["error"]) and sweep[0]["removed"] == 0
    assert sweep[2]["error"] == sweep[0]["error"] and len(calls) == 4  # the unpruned model once, 3 pruned
    assert sweep[1]["removed"] == 5 and sweep[1]["removed_fraction"] == pytest.approx(0.5)


def test_paper_rows_come_from_the_reference_file():
    from cnnvis.studies.prune import PaperRow, paper_rows

    rows = paper_rows(yaml.safe_load(REFERENCE.read_text()))
    assert rows == (PaperRow("Persian cat", 10.5, 10.5, 14.0), PaperRow("Pembroke", 9.39, 8.83, 15.46))
    with pytest.raises(ConfigError, match="p3_pruning"):
        paper_rows({"tables": [{"id": "p1_table1", "paper_rows": []}]})


def test_cpu_latency_reports_spread():
    model = p1().train()
    lat = P.cpu_latency_ms({"a": model, "b": P.remove_filters(model, REMOVED, X[:1])}, X[:1], repeats=3, warmup=1)
    assert all(v["min_ms"] <= v["median_ms"] <= v["max_ms"] and v["n"] == 3 for v in lat.values())
    assert model.training


# --------------------------------------------------------------------------- the study: ranking vs scoring images


def _study_inputs():
    from cnnvis import data as D

    train_s, test_s, classes = D.make_synthetic(12, 200, 60, seed=0)
    raw = D.RawDataset("synthetic", train_s, test_s, classes, "synthetic")
    torch.manual_seed(0)
    model = build_model(ModelConfig(widths=(4, 6), kernel_sizes=(3, 3), hidden=16), in_channels=1, num_classes=10,
                        image_size=12).eval()
    return raw, model


def _study(monkeypatch, raw, model, train_cfg, **prune):
    """The study with compute_importance recorded (the images the filters are ranked on) and per_class_table
    recorded (the images they are scored on)."""
    from cnnvis import data as D
    from cnnvis.config import parse
    from cnnvis.studies import prune as S

    ranked, scored = [], []
    real_imp, real_table = S.I.compute_importance, S.P.per_class_table
    monkeypatch.setattr(S.I, "compute_importance", lambda m, x, y, **kw: ranked.append((x, y)) or real_imp(m, x, y, **kw))
    monkeypatch.setattr(S.P, "per_class_table", lambda m, x, y, *a, **kw: scored.append((x, y)) or real_table(m, x, y, *a, **kw))
    cfg = parse(P.PruneConfig, {"fractions": [0.0, 0.5], "random_repeats": 1, "latency_repeats": 3, "latency_batch": 4,
                                "fd_weights_per_layer": 2, "fd_filters_per_layer": 1, **prune}, "prune")
    spec = D.prepare(raw, val_size=train_cfg.val_size if train_cfg else 0, seed=train_cfg.seed if train_cfg else 0).spec
    study = S.prune_study(model, ModelConfig(widths=(4, 6), kernel_sizes=(3, 3), hidden=16), spec, raw, cfg,
                          train_cfg=train_cfg, tag="adjusted")
    return study, spec, ranked, scored


def test_filters_ranked_on_the_heldout_images_by_default_and_scored_on_test(monkeypatch):
    from cnnvis import data as D
    from cnnvis.config import TrainConfig

    raw, model = _study_inputs()
    tc = TrainConfig(val_size=30, seed=3, epochs=5)
    study, spec, ranked, scored = _study(monkeypatch, raw, model, tc)
    td = D.prepare(raw, val_size=30, seed=3)  # the split training made: 30 validation images set aside
    (xr, yr), (xs, ys) = ranked[0], scored[0]
    assert torch.equal(ys, td.test_y)
    torch.testing.assert_close(xr, D.normalize(td.val_x, spec["mean"], spec["std"]), rtol=0, atol=0)
    assert torch.equal(yr, td.val_y)
    torch.testing.assert_close(xs, D.normalize(td.test_x, spec["mean"], spec["std"]), rtol=0, atol=0)
    m = study.metrics("synthetic", checkpoint="model.pt")
    assert m["ranking"]["split"] == "heldout" and m["ranking"]["images"] == 30 and m["images"] == 60
    assert "never trained on" in m["ranking"]["images_are"] and m["classes_3_2_2"]["split"] == "heldout"
    assert sum(r["n"] for r in m["per_class_table"]["rows"]) == 60  # the table counts test images
    assert m["model"] == {"tag": "adjusted", "name": "p1_cnn", "widths": [4, 6], "seed": 3, "epochs": 5, "val_size": 30}
    caption = " ".join(study.table(()).split("\n\n")[1].split())
    assert "the `adjusted` model (p1_cnn [4, 6], seed 3, 5 epochs" in caption
    assert "30 held-out images" in caption and "`prune.rank_split: heldout`" in caption


def test_same_set_option_reproduces_ranking_on_the_scored_test_images(monkeypatch):
    from cnnvis import data as D
    from cnnvis import importance as I
    from cnnvis.config import TrainConfig

    raw, model = _study_inputs()
    study, spec, ranked, scored = _study(monkeypatch, raw, model, TrainConfig(val_size=30, seed=3), rank_split="test",
                                         max_images=40)
    (xr, yr), (xs, ys) = ranked[0], scored[0]
    assert torch.equal(xr, xs) and torch.equal(yr, ys) and len(ys) == 40  # one seeded subset of the test split
    # what the stage computed before the option existed: ranked and scored on the same images
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(0))[:40].sort().values
    x = D.normalize(D.to_tensor(raw.test.images)[idx], spec["mean"], spec["std"])
    y = torch.as_tensor(raw.test.labels)[idx]
    rel = I.compute_importance(model, x, y, batch_size=100).relevance()["features.conv1"]
    assert study.table_rows == P.per_class_table(model, x, y, rel, "features.conv1", x[:1])
    assert study.metrics("s", checkpoint="c")["ranking"]["split"] == "test"
    assert "same-set" in study.table(())


@pytest.mark.parametrize("train", ["val_size 0", "no config"])
def test_without_a_heldout_split_ranks_on_training_images_and_says_so(monkeypatch, train):
    from cnnvis import data as D
    from cnnvis.config import TrainConfig

    raw, model = _study_inputs()
    tc = TrainConfig(val_size=0, seed=0) if train == "val_size 0" else None
    study, spec, ranked, _ = _study(monkeypatch, raw, model, tc)
    train_u8 = D.prepare(raw, val_size=0, seed=0).train_x if tc else D.to_tensor(raw.train.images)
    torch.testing.assert_close(ranked[0][0], D.normalize(train_u8, spec["mean"], spec["std"]), rtol=0, atol=0)
    m = study.metrics("s", checkpoint="c")
    assert m["ranking"]["split"] == "train" and "trained on" in m["ranking"]["images_are"]
    assert "no held-out split" in m["ranking"]["images_are"]
    assert m["ranking"]["images_are"] in " ".join(study.table(()).split())  # the caption says so too
    assert (m["model"]["seed"], m["model"]["epochs"]) == ((0, 4) if tc else (None, None))


# --------------------------------------------------------------------------- the stage


@pytest.mark.slow
def test_stage_end_to_end(tmp_path):
    """Synthetic data, a briefly trained tiny model: every output written, gradient check passed,
    pruned.pt physically smaller, loadable alone and as accurate as the masked model; filters ranked on the
    checkpoint's own held-out images, the table names the model with its seed and epochs."""
    from cnnvis import data as D
    from cnnvis.config import TrainConfig, to_dict
    from cnnvis.io import save_checkpoint
    from cnnvis.models import load_checkpoint
    from cnnvis.training import train
    from stages import prune_by_importance as S

    train_s, test_s, classes = D.make_synthetic(16, 300, 120, seed=0)
    raw = D.RawDataset("synthetic", train_s, test_s, classes, "synthetic")
    (tmp_path / "raw").mkdir()
    D.save_npz(tmp_path / "raw", raw)
    tc = TrainConfig(epochs=2, batch_size=32, val_size=50, augment="none", lr=0.05, seed=1)
    td = D.prepare(raw, val_size=tc.val_size, seed=tc.seed)
    cfg = ModelConfig(widths=(6, 8), kernel_sizes=(3, 3), hidden=16)
    torch.manual_seed(0)
    model = build_model(cfg, in_channels=1, num_classes=10, image_size=16)
    train(model, td, tc)
    save_checkpoint(tmp_path / "model.pt", model, cfg, td.spec, tag="adjusted", train=to_dict(tc))
    params = {"prune": {"batch_size": 50, "fd_weights_per_layer": 4, "fd_filters_per_layer": 3, "fractions": [0.0, 0.5],
                        "sweep_images": 60, "random_repeats": 2, "latency_repeats": 3, "prune_fraction": 0.25},
              "hardware": {"threads": 1, "progress": "none"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    reference = yaml.safe_load(REFERENCE.read_text())  # paper numbers come from this file, not from the code
    p3 = next(t for t in reference["tables"] if t["id"] == "p3_pruning")
    p3["paper_rows"][0]["initial"] = 12.34
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump(reference))
    out = {k: tmp_path / v for k, v in (("out", "pruned.pt"), ("metrics", "prune.json"), ("table", "t/table.md"), ("figures", "fig"))}
    S.main(["--dataset", "synthetic", "--checkpoint", str(tmp_path / "model.pt"), "--data", str(tmp_path / "raw"),
            "--reference", str(tmp_path / "reference.yaml"), "--params", str(tmp_path / "params.yaml")] + [a for k, v in out.items() for a in (f"--{k}", str(v))])
    m = json.loads(out["metrics"].read_text())
    assert m["gradient_check"]["passed"] and m["gradient_check"]["max_rel_error"] < 1e-6
    assert m["images"] == 120 and len(m["per_class_table"]["rows"]) == 10
    assert m["ranking"]["split"] == "heldout" and m["ranking"]["images"] == 50
    assert (m["model"]["tag"], m["model"]["seed"], m["model"]["epochs"]) == ("adjusted", 1, 2)
    pr = m["pruned"]
    assert pr["saved_as"] == "physical" and pr["predictions_equal"] and pr["error_masked"] == pr["error_physical"]
    assert pr["params_after"] < pr["params_before"] and pr["macs_after"] < pr["macs_before"]
    assert {r["method"] for r in m["sweep"]["rows"]} == {"importance", "l1_norm", "random"}
    tests = m["sweep"]["tests"]  # every pair of rankings, paired over the same sweep images
    assert set(tests) == {"importance_vs_l1_norm", "importance_vs_random", "l1_norm_vs_random"}
    assert all(t["test"] == "paired bootstrap" and t["n"] == m["sweep"]["images"] and t["verdict"] for t in tests.values())
    small, state = load_checkpoint(out["out"])
    assert sum(p.numel() for p in small.parameters()) == pr["params_after"]
    assert state["model"]["widths"] != [6, 8]
    x = D.normalize(D.to_tensor(test_s.images), td.mean, td.std)
    err = P.evaluate(small, x, torch.as_tensor(test_s.labels), 10)["error"]
    assert err == pytest.approx(pr["error_physical"])
    table = out["table"].read_text()
    assert "| Persian cat (paper 3, CaffeNet) | — | 12.34 | 10.50 | 14.00 | — |" in table
    assert "Pembroke" in table and "bar0" in table
    assert "the `adjusted` model (p1_cnn [6, 8], seed 1, 2 epochs" in " ".join(table.split())
    pngs = {p.name for p in out["figures"].glob("*.png")}
    assert {"sweep.png", "importance_histogram.png", "same_vs_different_class.png", "threshold_per_class.png",
            "importance_grid_features_conv1.png", "importance_grid_features_conv2.png",
            "gradient_volumes_features_conv1.png"} <= pngs
    assert np.isfinite(m["importance"]["per_layer"]["features.conv1"]["mean"])


def test_stage_bad_reference_class_is_one_line(tmp_path, capsys):
    from stages import prune_by_importance as S

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prune": {"fractions": [0.5]}, "hardware": {}}))
    with pytest.raises(SystemExit) as e:
        S.main(["--dataset", "x", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path),
                "--reference", str(REFERENCE), "--out", "o",
                "--metrics", "m", "--table", "t", "--figures", "f", "--params", str(tmp_path / "params.yaml")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prune.fractions" in err and "at least 2" in err
