"""Activation views (paper 3 §3.1, paper 2 Fig 2) and the synthesis part of stage `visualize`."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from cnnvis import ConfigError
from cnnvis import activations as Act
from cnnvis.config import ModelConfig
from cnnvis.models import build_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelConfig(widths=(6, 8), kernel_sizes=(3, 3), hidden=16), in_channels=1, num_classes=3, image_size=12)
    return m.train()


def test_layer_outputs_equal_the_conv_and_leave_model_unchanged(model):
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    flags = [p.requires_grad for p in model.parameters()]
    maps = Act.layer_outputs(model, x, "first_conv", rectify=True)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.allclose(maps, torch.relu(model.features.conv1(x)), atol=1e-6)
    assert torch.equal(Act.layer_kernels(model, "features.conv2"), model.features.conv2.weight)
    assert Act.resolve_layer(model, "last_conv")[0] == "features.conv2"
    with pytest.raises(ConfigError, match="features.conv1"):
        Act.resolve_layer(model, "conv7")


def test_volume_round_trips_through_nrrd(tmp_path, model):
    maps = Act.layer_outputs(model, torch.randn(1, 1, 12, 12), "first_conv")[0]
    vol = Act.volume(maps)
    assert vol.shape == (6, 12, 12) and vol.dtype == np.float32
    path = tmp_path / "v.nrrd"
    nrrd.write(str(path), vol, Act.nrrd_header(vol, layer="features.conv1"), index_order="C")
    back, header = nrrd.read(str(path), index_order="C")
    assert np.array_equal(back, vol)
    assert list(header["sizes"]) == [12, 12, 6]  # NRRD: fastest axis (column) first
    assert list(header["labels"]) == ["column", "row", "filter"]


def test_pca_order_sorts_by_first_component_score_like_sklearn():
    rows = np.random.default_rng(0).normal(size=(20, 9)) * np.linspace(3, 0.1, 9)
    order = Act.pca_order(rows)
    assert sorted(order.tolist()) == list(range(20))
    scores = PCA(n_components=1).fit_transform(rows)[:, 0]  # sklearn directly
    assert np.array_equal(order, np.argsort(scores, kind="stable"))
    # independent check of the score: projection on the top right-singular vector (up to sign)
    centred = rows - rows.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    assert np.allclose(np.abs(centred @ v), np.abs(Act.first_component_scores(rows)), atol=1e-9)
    assert np.array_equal(Act.pca_order(np.ones((5, 3))), np.arange(5))  # no variance: order kept


@pytest.mark.parametrize("k", [3, 7])
def test_kmeans_order_groups_sklearn_clusters(k):
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.normal(c * 5, 0.1, size=(4, 6)) for c in range(k)])[rng.permutation(4 * k)]
    o = Act.kmeans_order(rows, k, seed=0)
    assert sorted(o.order.tolist()) == list(range(len(rows)))
    assert len(o.boundaries) == k - 1
    grouped = o.labels[o.order]
    assert np.all(np.diff(grouped) >= 0)  # contiguous clusters
    ref = KMeans(n_clusters=k, n_init=10, random_state=0).fit(rows).labels_
    # same partition as scikit-learn's (labels renamed)
    assert len({(a, b) for a, b in zip(ref, o.labels, strict=True)}) == k
    with pytest.raises(ConfigError, match="kmeans_clusters"):
        Act.kmeans_order(rows, len(rows) + 1)


def test_vertical_slice_rows_are_filter_columns():
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    rows, col = Act.vertical_slice(vol)
    assert col == 2 and np.array_equal(rows, vol[:, :, 2])
    with pytest.raises(ConfigError, match="slice_column"):
        Act.vertical_slice(vol, 4)


def test_synthesis_study_and_its_figures(tmp_path, model):
    from cnnvis.config import parse
    from cnnvis.io import save_figures, save_volume
    from cnnvis.plotting.activations import VOLUME_FILE, activation_figures
    from cnnvis.plotting.synthesis import synthesis_figures
    from cnnvis.studies.synthesis import synthesis_study
    from cnnvis.synthesis import SynthesisConfig

    scfg = parse(SynthesisConfig, {"steps": 3, "max_channels": 4, "inversion_images": 2, "inversion_steps": 3},
                 "synthesis")
    acfg = parse(Act.ActivationsConfig, {"kmeans_clusters": [2, 3], "kmeans_n_init": 1}, "activations")
    spec = {"mean": [0.3], "std": [0.35], "classes": ["a", "b", "c"]}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (9, 1, 12, 12), generator=g, dtype=torch.uint8)
    labels = torch.arange(9) % 3
    before = [p.detach().clone() for p in model.parameters()]
    study = synthesis_study(model, spec, images, labels, scfg, acfg)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    save_figures(tmp_path, [*synthesis_figures(study), *activation_figures(study.activations)])
    save_volume(tmp_path / VOLUME_FILE, study.activations)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(("p2_fig02_kernels_maps.png", "p2_actmax_classes.png", "p2_actmax_channels.png",
                              "p2_inversion.png", "p3_activation_grid.png", "p3_volume.png", "p3_kmeans.png",
                              "p3_pca.png", VOLUME_FILE))
    metrics = study.metrics()
    assert metrics["actmax_channels"]["channels"] == 4
    assert set(metrics["inversion"]) == {"features.conv1", "features.conv2", "logits"}
    vol, _ = nrrd.read(str(tmp_path / VOLUME_FILE), index_order="C")
    assert vol.shape == (6, 12, 12)


def test_non_conv_layer_has_no_kernels_figure(model):
    from cnnvis.config import parse
    from cnnvis.plotting.activations import activation_figures
    from cnnvis.studies.synthesis import activation_views

    acfg = parse(Act.ActivationsConfig, {"layer": "features.relu1", "kmeans_clusters": [2], "kmeans_n_init": 1},
                 "activations")
    images = torch.randint(0, 256, (2, 1, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    views = activation_views(model, {"mean": [0.3], "std": [0.35], "classes": ["a", "b"]}, images,
                             torch.tensor([0, 1]), acfg)
    assert views.kernels is None and views.volume.shape == (6, 12, 12)
    names = []
    for name, item in activation_figures(views):
        names.append(name)
        if item.figure is not None:
            import matplotlib.pyplot as plt

            plt.close(item.figure)
    assert "p2_fig02_kernels_maps" not in names and "p3_activation_grid" in names


def test_volume_file_is_byte_reproducible(tmp_path):
    from types import SimpleNamespace

    from cnnvis.io import save_volume

    vol = np.random.default_rng(0).random((3, 5, 4)).astype(np.float32)
    path = tmp_path / "v.nrrd"
    save_volume(path, SimpleNamespace(volume=vol, layer="conv"))
    raw = path.read_bytes()
    assert b"# on " not in raw.partition(b"\n\n")[0]  # no write date in the header
    back, header = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(back, vol)
