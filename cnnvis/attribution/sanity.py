"""Do the maps depend on the model and on the class? (None of the papers checks.)

- ``cascading_randomization``: Adebayo et al. (2018), "Sanity checks for saliency
  maps": re-initialize the weights layer by layer from the top down and measure
  the Spearman rank correlation of each map with the trained model's map. A
  method that explains the model decorrelates fast; one that mostly reflects the
  input (an edge detector) stays high.
- ``class_sensitivity``: rank correlation of the map for the true class with the
  map for another class of the same image (1 = the method ignores the class).

Maps are compared by absolute value per pixel (``pixel_importance``), as in
Adebayo et al.'s absolute-value variant.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnvis.attribution.faithfulness import pixel_importance

MethodFactory = Callable[[nn.Module], object]  # model → object with .attribute(images, target)


def average_ranks(a: torch.Tensor) -> torch.Tensor:
    """Ranks 1…D of each row of ``a`` [N, D], ties sharing their average rank (scipy's rankdata "average")."""
    a = a.double()
    order = a.argsort(dim=1, stable=True)
    sorted_a = a.gather(1, order)
    n, d = a.shape
    new_run = torch.ones(n, d, dtype=torch.bool)
    new_run[:, 1:] = sorted_a[:, 1:] != sorted_a[:, :-1]
    run_id = new_run.cumsum(1) - 1  # [N, D]: index of each sorted value's tie group
    pos = torch.arange(1, d + 1, dtype=torch.float64).expand(n, d)
    total = torch.zeros(n, d, dtype=torch.float64).scatter_add_(1, run_id, pos)
    count = torch.zeros(n, d, dtype=torch.float64).scatter_add_(1, run_id, torch.ones(n, d, dtype=torch.float64))
    ranks_sorted = (total / count.clamp(min=1)).gather(1, run_id)
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman correlation of each row of a with the same row of b ([N, D] → [N]; ties share ranks).

    A constant row has no ranking: its correlation is defined as 0 (nothing of the order survives).
    """
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = ((ra**2).sum(1) * (rb**2).sum(1)).sqrt()
    r = (ra * rb).sum(1) / den.clamp(min=1e-300)
    return torch.where(den > 0, r, torch.zeros_like(r)).numpy()


def _maps(factory: MethodFactory, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return pixel_importance(factory(model).attribute(images, target=target), sign="absolute")


@dataclass(frozen=True)
class RandomizationStep:
    layer: str  # the deepest layer re-initialized so far (all layers above it are too)
    spearman_mean: float
    spearman_std: float


def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, top (output side) first (normalization layers keep their weights)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][::-1]


def cascading_randomization(model: nn.Module, factories: dict[str, MethodFactory], images: torch.Tensor,
                            target: torch.Tensor, *, seed: int = 0,
                            layers: list[str] | None = None) -> dict[str, list[RandomizationStep]]:
    """Per method, the rank correlation after re-initializing each layer in turn (cumulative, top down).

    ``model`` itself is untouched (a copy is randomized); the re-initialization
    draws from ``seed`` without disturbing the global RNG.
    """
    layers = randomizable_layers(model) if layers is None else layers
    before = {name: _maps(f, model, images, target) for name, f in factories.items()}
    rand = copy.deepcopy(model)
    modules = dict(rand.named_modules())
    out: dict[str, list[RandomizationStep]] = {name: [] for name in factories}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in layers:
            modules[layer].reset_parameters()
            for name, f in factories.items():
                r = spearman_rows(before[name], _maps(f, rand, images, target))
                out[name].append(RandomizationStep(layer, float(r.mean()), float(r.std())))
    return out


def other_classes(target: torch.Tensor, num_classes: int, *, seed: int = 0) -> torch.Tensor:
    """For each image a class ≠ its target, uniformly at random (seeded)."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, target.shape, generator=g)
    return (target + shift) % num_classes


def class_sensitivity(model: nn.Module, factories: dict[str, MethodFactory], images: torch.Tensor,
                      target: torch.Tensor, other: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per method: Spearman of the true-class map with the other-class map (mean, std over images)."""
    out = {}
    for name, f in factories.items():
        r = spearman_rows(_maps(f, model, images, target), _maps(f, model, images, other))
        out[name] = {"spearman_mean": float(r.mean()), "spearman_std": float(r.std()), "n": len(r)}
    return out
