"""Stage `visualize` end to end on a tiny untrained p1_cnn and synthetic data (in-process, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cnnvis import data as D
from cnnvis.config import ModelConfig
from cnnvis.io import save_checkpoint
from stages import visualize as V

from conftest import ROOT

CI = {"feature_map_images": 4, "gradcam_images": 3, "probe_images": 3, "eval_images": 6, "faithfulness_steps": 4}


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
    params["visualize"] = {**params["visualize"], **CI}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path, test


def _args(tmp_path, **over):
    a = {"--dataset": "synthetic", "--model": tmp_path / "baseline.pt", "--data": tmp_path / "raw",
         "--figures": tmp_path / "figs", "--recon": tmp_path / "vis" / "reconstructions.npz",
         "--metrics": tmp_path / "m" / "visualize.json", "--params": tmp_path / "params.yaml", **over}
    return [str(x) for kv in a.items() for x in kv]


class FakeSynthesis:
    """Stands in for stages/_viz_synthesis.py: the stage must call run() and merge its metrics."""

    PARAMS = ()
    calls: list = []

    @classmethod
    def run(cls, model, spec, images_u8, labels, params, fig_dir):
        cls.calls.append((images_u8.dtype, len(labels), fig_dir))
        (fig_dir / "p2_fake.png").write_bytes(b"png")
        return {"fake_metric": 1.5}


def test_visualize_stage_writes_figures_recon_and_metrics(setup, monkeypatch):
    tmp_path, test = setup
    monkeypatch.setattr(V, "SYNTHESIS", FakeSynthesis)  # the real module is tested by its own tests
    V.main(_args(tmp_path))
    assert str(FakeSynthesis.calls[0][0]) == "torch.uint8" and FakeSynthesis.calls[0][1] == 30
    assert (tmp_path / "figs" / "p2_fake.png").exists()
    names = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    for prefix in ("p1_fig02", "p1_fig03", "p1_fig04", "p1_fig05a", "p1_fig05b", "p1_fig06", "p1_fig07", "p1_fig08",
                   "beyond_randomization", "beyond_deletion_insertion"):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    with np.load(tmp_path / "vis" / "reconstructions.npz") as z:  # the similarity stage's format
        assert list(z["layers"]) == ["features.conv1", "features.conv2"]
        assert z["recon_0"].dtype == np.float16 and z["recon_0"].shape == (3, 8, 1, 28, 28)
        assert z["recon_1"].shape == (3, 16, 1, 28, 28)
        assert z["probe_labels"].dtype == np.int64 and z["probe_indices"].dtype == np.int64
        assert (test.labels[z["probe_indices"]] == z["probe_labels"]).all()
        assert list(z["probe_labels"]) == [0, 1, 2]  # class by class
        assert np.isfinite(z["recon_1"].astype(np.float32)).all()
    m = json.loads((tmp_path / "m" / "visualize.json").read_text())
    assert set(m["faithfulness"]["methods"]) == {"gradcam", "guided_gradcam", "saliency", "random"}
    for v in m["faithfulness"]["methods"].values():
        assert 0 <= v["deletion_auc_mean"] <= 1 and 0 <= v["insertion_auc_mean"] <= 1 and v["n"] == 6
    assert set(m["class_sensitivity"]) == {"saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam"}
    assert [s["layer"] for s in m["randomization"]["gradcam"]][0] == "classifier.fc"
    assert m["synthesis"] == {"fake_metric": 1.5}
    assert m["gradcam_layers"] == ["features.relu1", "features.relu2"]  # the rectified maps of conv1, conv2


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
    assert not (tmp_path / "figs").exists() and not (tmp_path / "vis").exists()
