"""Activation-based views of one layer (paper 3 §3.1, paper 2 Fig 2).

- ``layer_outputs``: every filter output of a layer for a batch (paper 3 §3.1.1).
- ``layer_kernels``: the layer's kernels, to show next to its maps (paper 2 Fig 2).
- ``volume``: one image's filter outputs stacked into a K×H×W volume (§3.1.2),
  with ``nrrd_header`` so the stage can write it for ParaView / napari.
- ``vertical_slice`` + ``kmeans_order`` / ``pca_order``: the slice-based
  reordering of §3.1.3. The volume's vertical slice at column j is a K×H image
  whose row k is column j of filter k's output; reordering its rows reorders the
  filters (the paper: "the order from different slices were different", so the
  order is one of filters).
- ``pca_order`` on whole flattened filter outputs: the filter-output-based
  reordering of §3.1.3 (paper 3 Fig 3).

Layers are named by module name (``features.conv1``) or by an alias
(``first_conv``, ``last_conv``) so the same config serves every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from torch import nn

from cnnvis import ConfigError
from cnnvis.config import opt
from cnnvis.hooks import capture, model_state_guard, run_until
from cnnvis.models import conv_layers

LAYER_ALIASES = ("first_conv", "last_conv")


@dataclass(frozen=True)
class ActivationsConfig:
    layer: str = opt("first_conv")  # module name or first_conv / last_conv (paper 3 uses conv1)
    rectify: bool = opt(True)  # apply max(0, ·) to the conv output, as the ReLU after it does (paper 3: CaffeNet blobs are post-ReLU)
    image_index: int = opt(0, ge=0)  # which probe image's maps form the grid and the volume
    slice_column: int | None = opt(None, ge=0)  # vertical slice for §3.1.3; null = the middle column
    kmeans_clusters: tuple[int, ...] = opt((7, 10, 20), ge=2, min_length=1)  # paper 3: 7, 10, 20 means
    kmeans_n_init: int = opt(10, ge=1)
    seed: int = opt(0, ge=0)  # k-means initialization


# --------------------------------------------------------------------------- layers and maps


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """(qualified name, module) for a module name or an alias in ``LAYER_ALIASES``."""
    if name in LAYER_ALIASES:
        convs = conv_layers(model)
        if not convs:
            raise ConfigError(f"layer = {name!r}: the model has no Conv2d layer")
        return convs[0] if name == "first_conv" else convs[-1]
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        convs = ", ".join(n for n, _ in conv_layers(model))
        raise ConfigError(f"layer = {name!r}: no such module; use {', '.join(LAYER_ALIASES)} or one of: {convs}")
    return name, modules[name]


def layer_outputs(model: nn.Module, x: torch.Tensor, layer: str, *, rectify: bool = False) -> torch.Tensor:
    """Every filter output of ``layer`` for normalized input ``x`` (N×C×H×W) → N×K×h×w.

    The forward pass stops after the layer; the model is left as it was.
    """
    _, module = resolve_layer(model, layer)
    with model_state_guard(model, eval_mode=True, frozen=True), torch.no_grad(), capture(module, stop=True) as box:
        out = run_until(model, x, box).detach().clone()
    return out.clamp(min=0) if rectify else out


def layer_kernels(model: nn.Module, layer: str) -> torch.Tensor:
    """The weights of conv ``layer``: K×C_in×kh×kw (a copy)."""
    name, module = resolve_layer(model, layer)
    if not isinstance(module, nn.Conv2d):
        raise ConfigError(f"layer = {name!r}: kernels need a Conv2d layer, got {type(module).__name__}")
    return module.weight.detach().clone()


# --------------------------------------------------------------------------- the 3D volume (paper 3 §3.1.2)


def volume(maps: torch.Tensor) -> np.ndarray:
    """One image's filter outputs K×H×W → float32 volume K×H×W (z = filter index, y = row, x = column)."""
    if maps.dim() != 3:
        raise ValueError(f"volume: expected one image's maps K×H×W, got shape {tuple(maps.shape)}")
    return np.ascontiguousarray(maps.detach().cpu().numpy().astype(np.float32))


def nrrd_header(vol: np.ndarray, *, layer: str, order: str = "filter index") -> dict:
    """An NRRD header for ``vol`` (K×H×W, written by pynrrd with ``index_order="C"``).

    NRRD lists axes fastest first, so the file's axes are column, row, filter.
    """
    return {
        "encoding": "gzip",
        "content": f"{layer} filter outputs stacked along z ({order})",
        "space dimension": 3,
        "space directions": np.eye(3),
        "space origin": np.zeros(3),
        "kinds": ["domain", "domain", "domain"],
        "labels": ["column", "row", "filter"],
    }


# --------------------------------------------------------------------------- reordering (paper 3 §3.1.3)


def vertical_slice(vol: np.ndarray, column: int | None = None) -> tuple[np.ndarray, int]:
    """The K×H slice of volume K×H×W at ``column`` (default: the middle): row k = filter k's column."""
    k, h, w = vol.shape
    column = w // 2 if column is None else column
    if not 0 <= column < w:
        raise ConfigError(f"activations.slice_column = {column}: must be in 0..{w - 1} for maps {h}×{w}")
    return np.ascontiguousarray(vol[:, :, column]), column


def first_component_scores(rows: np.ndarray) -> np.ndarray:
    """Projection of each row (N×D) on the first principal component (sklearn's sign convention)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.shape[0] < 2 or np.allclose(rows, rows[0]):
        return np.zeros(rows.shape[0])  # no variance: every row scores the same
    return PCA(n_components=1, svd_solver="full").fit_transform(rows)[:, 0]


def pca_order(rows: np.ndarray) -> np.ndarray:
    """Row order by increasing first-principal-component score (paper 3: "in increasing order").

    Ties keep their original order (stable sort), so the result is a permutation.
    """
    return np.argsort(first_component_scores(rows), kind="stable")


@dataclass(frozen=True)
class KMeansOrdering:
    """k-means on the rows of a slice: rows grouped by cluster."""

    k: int
    labels: np.ndarray  # cluster of each row (original order), relabelled 0..k-1 in display order
    order: np.ndarray  # permutation: rows grouped by cluster, clusters by their centre's PCA score
    boundaries: np.ndarray  # positions in ``order`` where a new cluster starts (excluding 0)


def kmeans_order(rows: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10) -> KMeansOrdering:
    """k-means (scikit-learn) on the rows (N×D); rows grouped by cluster.

    Clusters are shown in order of their centre's first-PCA score and rows within
    a cluster by their own score, so similar clusters sit next to each other.
    """
    rows = np.asarray(rows, dtype=np.float64)
    n = rows.shape[0]
    if not 2 <= k <= n:
        raise ConfigError(f"activations.kmeans_clusters: k = {k} must be in 2..{n} (the number of filters)")
    distinct = len(np.unique(rows, axis=0))
    km = KMeans(n_clusters=min(k, distinct), n_init=n_init, random_state=seed).fit(rows)
    scores = first_component_scores(rows)
    centre_score = np.array([scores[km.labels_ == c].mean() for c in range(km.n_clusters)])
    rank = np.empty(km.n_clusters, dtype=np.int64)
    rank[np.argsort(centre_score, kind="stable")] = np.arange(km.n_clusters)
    labels = rank[km.labels_]
    order = np.lexsort((scores, labels))  # primary key: cluster, secondary: own score
    sorted_labels = labels[order]
    boundaries = np.flatnonzero(np.diff(sorted_labels)) + 1
    return KMeansOrdering(k=k, labels=labels, order=order, boundaries=boundaries)
