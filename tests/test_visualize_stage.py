"""Stage `visualize` end to end on a tiny untrained p1_cnn and synthetic data (in-process, seconds)."""

from __future__ import annotations

import json

import nrrd
import numpy as np
import pytest
import yaml

from cnnvis import attribution as A
from cnnvis import data as D
from cnnvis.config import ModelConfig
from cnnvis.io import save_checkpoint
from cnnvis.studies import visualize as SV
from stages import visualize as V

from conftest import ROOT

CI = {"feature_map_images": 4, "gradcam_images": 3, "probe_images": 3, "eval_images": 6, "faithfulness_steps": 4,
      "faithfulness_images": 8, "faithfulness_bootstrap": 200}
SYNTHESIS = {"steps": 3, "max_channels": 4, "inversion_images": 2, "inversion_steps": 3}
ACTIVATIONS = {"kmeans_clusters": [2, 3], "kmeans_n_init": 1}
FIGURES = ("p2_fig02_kernels_maps.png", "p2_actmax_classes.png", "p2_actmax_channels.png", "p2_inversion.png",
           "p3_activation_grid.png", "p3_volume.png", "p3_kmeans.png", "p3_pca.png")


@pytest.fixture
def setup(tmp_path, tiny_p1):
    train, test, classes = D.make_synthetic(28, 40, 30, seed=0)
    raw = tmp_path / "raw"
    raw.mkdir()
    D.save_npz(raw, D.RawDataset("synthetic", train, test, classes, "synthetic"))
    spec = {"in_channels": 1, "num_classes": 10, "image_size": 28, "mean": [0.3], "std": [0.3],
            "classes": list(classes)}
    save_checkpoint(tmp_path / "baseline.pt", tiny_p1,
                    ModelConfig(widths=(8, 16), kernel_sizes=(3, 3), hidden=32), spec, test_top1=10.0)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.pop("_compose", None)  # hand-made params: no composition record to re-check
    params["visualize"] = {**params["visualize"], **CI}
    params["synthesis"] = {**params["synthesis"], **SYNTHESIS}
    params["activations"] = {**params["activations"], **ACTIVATIONS}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path, test


def _args(tmp_path, **over):
    a = {"--dataset": "synthetic", "--model": tmp_path / "baseline.pt", "--data": tmp_path / "raw",
         "--figures": tmp_path / "figs", "--recon": tmp_path / "vis" / "reconstructions.npz",
         "--metrics": tmp_path / "m" / "visualize.json", "--record": tmp_path / "m" / "record.json", "--volume": tmp_path / "vol" / "p3_volume.nrrd", "--params": tmp_path / "params.yaml", **over}
    return [str(x) for kv in a.items() for x in kv]


def _nothing_written(tmp_path):
    return not any((tmp_path / d).exists() for d in ("figs", "vis", "m", "vol"))


def test_visualize_stage_writes_figures_recon_and_metrics(setup):
    tmp_path, test = setup
    V.main(_args(tmp_path))
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    for prefix in ("p1_fig02", "p1_fig03", "p1_fig04", "p1_fig05a", "p1_fig05b", "p1_fig06", "p1_fig07", "p1_fig08",
                   "beyond_randomization", "beyond_deletion_insertion", *FIGURES):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    assert not any(n.startswith(".") for n in names)  # no temporary file left
    vol, _ = nrrd.read(str(tmp_path / "vol" / "p3_volume.nrrd"), index_order="C")
    assert vol.shape == (8, 28, 28)  # first conv layer's 8 maps
    assert b"# on " not in (tmp_path / "vol" / "p3_volume.nrrd").read_bytes().partition(b"\n\n")[0]
    with np.load(tmp_path / "vis" / "reconstructions.npz") as z:  # the similarity stage's format
        assert list(z["layers"]) == ["features.conv1", "features.conv2"]
        assert z["recon_0"].dtype == np.float16 and z["recon_0"].shape == (3, 8, 1, 28, 28)
        assert z["recon_1"].shape == (3, 16, 1, 28, 28)
        assert z["probe_labels"].dtype == np.int64 and z["probe_indices"].dtype == np.int64
        assert (test.labels[z["probe_indices"]] == z["probe_labels"]).all()
        assert list(z["probe_labels"]) == [0, 1, 2]  # class by class
        assert np.isfinite(z["recon_1"].astype(np.float32)).all()
    m = json.loads((tmp_path / "m" / "visualize.json").read_text())
    faith = m["faithfulness"]
    assert set(faith["methods"]) == {"gradcam", "hirescam", "guided_gradcam", "saliency", "random"}
    assert faith["n"] == 8 and faith["sign"] == "positive" and faith["baselines"] == ["black", "blur", "road"]
    for name, v in faith["methods"].items():
        for metric in ("deletion", "insertion"):
            for baseline in faith["baselines"]:
                entry = v[metric][baseline]
                assert 0 <= entry["auc"]["mean"] <= 1 and entry["auc"]["n"] == 8
                assert ("vs_random" in entry) == (name != "random")  # every method tested against the control
                if name != "random":
                    assert entry["vs_random"]["verdict"].endswith("n=8)") and 0 <= entry["vs_random"]["p_value"] <= 1
    assert list(m["class_sensitivity"]) == ["saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam"]
    assert list(m["randomization"]) == list(m["class_sensitivity"])
    assert [s["layer"] for s in m["randomization"]["gradcam"]][0] == "classifier.fc"
    assert m["gradcam_layers"] == ["features.relu1", "features.relu2"]  # the rectified maps of conv1, conv2
    assert m["checkpoint"] == str(tmp_path / "baseline.pt") and m["test_top1_checkpoint"] == 10.0
    assert m["synthesis"]["actmax_channels"]["channels"] == 4
    assert set(m["synthesis"]["inversion"]) == {"features.conv1", "features.conv2", "logits"}
    assert "timings" not in m and "config" not in m  # how the run went is in the run record, not the results
    r = json.loads((tmp_path / "m" / "record.json").read_text())
    assert set(r["timings"]) >= {"reconstructions_s", "faithfulness_s", "synthesis_s"} and "stage_seconds" in r
    assert r["config"]["figure_classes"] == [0, 1, 2] and set(r["synthesis"]["timings"]) == {
        "actmax_s", "inversion_s", "activations_s"}


def test_methods_come_from_the_registry():
    factories = SV.method_factories(SV.SANITY_METHODS, "features.conv2")
    assert list(factories) == ["saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam"]
    assert set(SV.FAITHFULNESS_METHODS) <= set(A.METHODS)


def test_method_factories_give_layer_methods_the_layer(tiny_p1):
    made = {n: f(tiny_p1) for n, f in SV.method_factories(("saliency", "gradcam", "guided_gradcam"),
                                                           "features.conv1").items()}
    assert type(made["saliency"]) is A.METHODS["saliency"]
    assert made["gradcam"].layer is tiny_p1.features.conv1 and made["guided_gradcam"].layer is tiny_p1.features.conv1


def test_visualize_bad_class_is_one_line(setup, capsys):
    tmp_path, _ = setup
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["visualize"]["figure_classes"] = [0, 12]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as e:
        V.main(_args(tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "visualize.figure_classes" in err[0] and "class 12" in err[0]
    assert _nothing_written(tmp_path)


def test_visualize_checkpoint_of_other_classes_is_one_line(setup, tiny_p1, capsys):
    tmp_path, _ = setup
    spec = {"in_channels": 1, "num_classes": 10, "image_size": 28, "mean": [0.3], "std": [0.3],
            "classes": [f"other{i}" for i in range(10)]}
    save_checkpoint(tmp_path / "other.pt", tiny_p1, ModelConfig(widths=(8, 16), kernel_sizes=(3, 3), hidden=32), spec)
    with pytest.raises(SystemExit) as e:
        V.main(_args(tmp_path, **{"--model": tmp_path / "other.pt"}))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "other.pt") in err[0] and "trained on classes" in err[0]
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_visualize_corrupt_checkpoint_is_one_line_naming_it(setup, capsys, damage):
    tmp_path, _ = setup
    ckpt = tmp_path / "baseline.pt"
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(SystemExit) as e:
        V.main(_args(tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("visualize: error: ") and str(ckpt) in err[0], err
    assert _nothing_written(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.pt", "params.yaml", "raw"]
