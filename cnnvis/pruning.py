"""Pruning by filter importance (paper 3 §3.2.3) and the baselines it must beat.

Removing a filter = zeroing it in a copy of the model (the original is never
touched): its conv weight and bias, and every out-channel it is coupled to by
Torch-Pruning's dependency graph (a following BatchNorm's scale and shift, the
other convs of a residual sum), so the masked copy computes exactly what the
physically smaller network from ``remove_filters`` computes.

Rankings are global over the analysed layers: each layer's scores divided by
the layer's mean (gradient norms of different layers differ in scale by orders
of magnitude; the normalization of Molchanov et al., 2017), the lowest removed.
At least ``min_keep`` filters stay in every layer so the network still
computes something.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnvis import ConfigError
from cnnvis.config import opt
from cnnvis.hooks import eval_mode

Removed = dict[str, torch.Tensor]  # layer name -> int64 indices of removed filters


@dataclass(frozen=True)
class PruneConfig:
    """The ``prune`` section of params.yaml (stage ``prune-by-importance``)."""

    layers: tuple[str, ...] = opt(())  # conv layers analysed and pruned; empty = every nn.Conv2d
    max_images: int | None = opt(None, ge=10)  # images ranked and images scored (each a seeded subset); null = all
    # images the filters are ranked on: heldout = the validation images training set aside (never trained on);
    # test = the test images the errors are measured on (paper 3's same-set variant)
    rank_split: str = opt("heldout", choices=("heldout", "test"))
    batch_size: int = opt(100, ge=1)  # images per importance batch (memory: C × batch × conv outputs)
    fd_images: int = opt(2, ge=1)  # finite-difference check: images, weights and filters per layer
    fd_weights_per_layer: int = opt(16, ge=1)
    fd_filters_per_layer: int | None = opt(None, ge=1)  # null = every filter
    fd_epsilon: float = opt(1e-4, gt=0.0, lt=1.0)  # relative step: h = ε·max(1, |w|)
    normalization: str = opt("layer_mean", choices=("layer_mean", "none"))
    fractions: tuple[float, ...] = opt((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), ge=0.0, lt=1.0, min_length=2)
    sweep_images: int | None = opt(2000, ge=10)  # scored test images per sweep point (seeded subset); null = all
    random_repeats: int = opt(3, ge=1)  # random baseline: seeds per fraction (mean ± std)
    min_keep: int = opt(1, ge=1)  # filters kept in every layer whatever the ranking
    table_layer: str | None = opt(None)  # per-class table: layer whose filters are removed; null = first conv
    reference_class: int | None = opt(None, ge=0)  # §3.2.2 figures; null = the class with most errors
    prune_fraction: float = opt(0.3, ge=0.0, lt=1.0)  # of all analysed filters, for pruned.pt
    latency_batch: int = opt(64, ge=1)  # CPU latency: images per forward
    latency_repeats: int = opt(30, ge=3)
    seed: int = opt(0, ge=0)


# --------------------------------------------------------------------------- scores and rankings


def filter_l1_norms(model: nn.Module, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """‖W_f‖₁ of every filter (Li et al., 2017, "Pruning filters for efficient ConvNets"). {layer: O}."""
    modules = dict(model.named_modules())
    return {n: modules[n].weight.detach().abs().flatten(1).sum(1).float() for n in layers}


def normalize_scores(scores: Mapping[str, torch.Tensor], how: str = "layer_mean") -> dict[str, torch.Tensor]:
    """Scores comparable across layers: each divided by its layer's mean (``how="none"``: unchanged)."""
    if how == "none":
        return {n: s.float() for n, s in scores.items()}
    return {n: s.float() / s.float().mean().clamp_min(1e-30) for n, s in scores.items()}


def lowest_filters(scores: Mapping[str, torch.Tensor], fraction: float, *, min_keep: int = 1) -> tuple[Removed, float]:
    """The ⌊fraction·total⌉ globally lowest-scoring filters, keeping ``min_keep`` per layer.

    Returns (removed indices per layer, threshold): every removed filter scores
    ≤ threshold, the threshold being the highest removed score (NaN if none).
    """
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    layer_of = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
    index_in = torch.cat([torch.arange(scores[n].numel()) for n in names])
    want = round(fraction * flat.numel())
    left = {i: scores[n].numel() for i, n in enumerate(names)}
    removed: dict[str, list[int]] = {n: [] for n in names}
    threshold, count = float("nan"), 0
    for j in torch.argsort(flat, stable=True).tolist():
        if count >= want:
            break
        i = int(layer_of[j])
        if left[i] <= min_keep:
            continue
        left[i] -= 1
        count += 1
        removed[names[i]].append(int(index_in[j]))
        threshold = float(flat[j])
    return {n: torch.tensor(sorted(v), dtype=torch.long) for n, v in removed.items()}, threshold


def random_filters(sizes: Mapping[str, int], fraction: float, generator: torch.Generator, *, min_keep: int = 1) -> Removed:
    """A uniformly random set of filters of the same size as ``lowest_filters`` would remove."""
    scores = {n: torch.rand(k, generator=generator) for n, k in sizes.items()}
    return lowest_filters(scores, fraction, min_keep=min_keep)[0]


# --------------------------------------------------------------------------- masking and surgery


def _dependency_graph(model: nn.Module, example_inputs: torch.Tensor):  # -> tp.DependencyGraph
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)


def _groups(model: nn.Module, removed: Removed, example_inputs: torch.Tensor) -> list:
    import torch_pruning as tp

    with torch.enable_grad():
        dg = _dependency_graph(model, example_inputs)
    modules = dict(model.named_modules())
    return [dg.get_pruning_group(modules[n], tp.prune_conv_out_channels, idxs=idx.tolist())
            for n, idx in removed.items() if len(idx)]


def _is_out_channel(module: nn.Module, handler: Callable, types: tuple[type, ...]) -> bool:
    """Is this dependency the removal of ``module``'s output channels (a bound method of some pruner)?"""
    return isinstance(module, types) and getattr(handler, "__name__", "") == "prune_out_channels"


def zero_filters(model: nn.Module, removed: Removed, example_inputs: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose removed filters output exactly zero downstream; ``model`` untouched."""

    masked = copy.deepcopy(model)
    groups = _groups(masked, removed, example_inputs)  # traced with autograd on
    with torch.no_grad():
        for group in groups:
            for dep, idxs in group:
                module, handler = dep.target.module, dep.handler
                idx = torch.as_tensor(list(idxs), dtype=torch.long)
                if _is_out_channel(module, handler, (nn.Conv2d, nn.BatchNorm2d)):
                    module.weight[idx] = 0  # BN: γ = 0 and β = 0 give a zero channel, as removal does
                    if module.bias is not None:
                        module.bias[idx] = 0
    return masked


def remove_filters(model: nn.Module, removed: Removed, example_inputs: torch.Tensor) -> nn.Module:
    """A physically smaller copy: the filters removed and every dependent layer shrunk (Torch-Pruning)."""

    small = copy.deepcopy(model)
    groups = _groups(small, removed, example_inputs)
    modules = {m: n for n, m in small.named_modules()}
    for group in groups:  # coupled layers (a residual sum) would make later indices stale
        coupled = sorted({modules[dep.target.module] for dep, _ in group
                          if _is_out_channel(dep.target.module, dep.handler, (nn.Conv2d,))}
                         & {n for n, idx in removed.items() if len(idx)})
        if len(coupled) > 1:
            raise ConfigError(f"prune.layers: {', '.join(coupled)} share channels through a residual sum; prune only one of them")
    for group in groups:
        group.prune()
    return small


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, batch_size: int = 1000) -> dict:
    """Error rate (%) overall and per class (paper 3 eq. (2)), in eval mode (restored)."""
    with eval_mode(model):
        pred = torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    wrong = (pred != labels).float()
    per_class = [100.0 * wrong[labels == c].mean().item() if bool((labels == c).any()) else float("nan") for c in range(num_classes)]
    return {"error": 100.0 * wrong.mean().item(), "per_class_error": per_class, "predictions": pred}


def per_class_table(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, relevance: torch.Tensor, layer: str,
                    example_inputs: torch.Tensor, *, batch_size: int = 1000) -> list[dict]:
    """Paper 3's table for every class c: error on class c's inputs, unpruned, with the filter of
    ``layer`` least important for c removed, with the most important removed. ``relevance``: C×O."""
    rows = []
    base = evaluate(model, images, labels, relevance.shape[0], batch_size=batch_size)["per_class_error"]
    for c in range(relevance.shape[0]):
        sel = labels == c
        if not bool(sel.any()):
            continue
        row = {"class": c, "n": int(sel.sum()), "error": base[c]}
        for key, f in (("least", int(relevance[c].argmin())), ("most", int(relevance[c].argmax()))):
            masked = zero_filters(model, {layer: torch.tensor([f])}, example_inputs)
            row[f"{key}_filter"] = f
            row[f"error_{key}_removed"] = evaluate(masked, images[sel], labels[sel], relevance.shape[0], batch_size=batch_size)["error"]
        rows.append(row)
    return rows


def sweep(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, rankings: Mapping[str, Mapping[str, torch.Tensor]],
          fractions: Sequence[float], example_inputs: torch.Tensor, *, random_repeats: int = 3, seed: int = 0, min_keep: int = 1,
          batch_size: int = 1000, progress: Callable[..., Iterable] = lambda it, **_: it) -> list[dict]:
    """Error while zeroing the lowest-scoring filters at each fraction, for each ranking
    (``rankings``: method → normalized scores) and for ``random_repeats`` random choices. Each row's ``wrong``
    is the per-image mask [N] bool (for paired tests; not for JSON)."""
    sizes = {n: s.numel() for n, s in next(iter(rankings.values())).items()}
    g = torch.Generator().manual_seed(seed)
    jobs: list[tuple[str, int, float]] = [(m, 0, f) for f in fractions for m in rankings]
    jobs += [("random", r, f) for f in fractions for r in range(random_repeats)]
    rows, unpruned = [], None
    for method, repeat, fraction in progress(jobs, desc="sweep", unit="model"):
        if method == "random":
            removed, threshold = random_filters(sizes, fraction, g, min_keep=min_keep), float("nan")
        else:
            removed, threshold = lowest_filters(rankings[method], fraction, min_keep=min_keep)
        n_removed = sum(len(v) for v in removed.values())
        if n_removed:
            res = evaluate(zero_filters(model, removed, example_inputs), images, labels, num_classes,
                           batch_size=batch_size)
        else:  # nothing removed (fraction 0 of every ranking): the model itself, evaluated once
            unpruned = unpruned or evaluate(model, images, labels, num_classes, batch_size=batch_size)
            res = unpruned
        rows.append({"method": method, "repeat": repeat, "fraction": fraction, "removed": n_removed,
                     "removed_fraction": n_removed / sum(sizes.values()), "threshold": threshold,
                     "removed_per_layer": {n: len(v) for n, v in removed.items()},
                     "error": res["error"], "per_class_error": res["per_class_error"],
                     "wrong": (res["predictions"] != labels).numpy()})
    return rows


# --------------------------------------------------------------------------- cost


def complexity(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """Parameters and multiply-accumulates of one forward of ``example_inputs`` (Torch-Pruning's counter)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return {"params": int(params), "macs": int(macs)}


@torch.no_grad()
def cpu_latency_ms(models: Mapping[str, nn.Module], example_inputs: torch.Tensor, *, repeats: int = 30, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Per model: median and spread (min, max) of one forward in eval mode, in ms (n = ``repeats``).

    The models' runs are interleaved (a, b, a, b, ...) so that a neighbour's load on a
    shared machine falls on all of them alike rather than on whichever ran second.
    """
    was = {k: m.training for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        for m in models.values():
            m.eval()
            for _ in range(warmup):
                m(example_inputs)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(example_inputs)
                times[k].append(1000.0 * (time.perf_counter() - t0))
    finally:
        for k, m in models.items():
            m.train(was[k])
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "n": repeats} for k, v in times.items()}
