"""Study of stage `prune-by-importance`: filter importance, its check, paper 3's table, the sweep, the pruned model.

Filters are ranked on one set of images and scored on another (``prune.rank_split``): by default ranked on the
validation images that training set aside (``TrainConfig.val_size``, split off by ``cnnvis.data.prepare`` with the
checkpoint's own training config, so never trained on) and scored on the test split; ``test`` ranks on the scored
test images themselves, paper 3's same-set variant. Without a held-out split the training images are used, and
the metrics and the table say so.
"""

from __future__ import annotations

import logging
import math
import statistics
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnvis import ConfigError
from cnnvis import data as D
from cnnvis import importance as I
from cnnvis import pruning as P
from cnnvis import stats as S
from cnnvis.config import ModelConfig, TrainConfig, parse, to_dict
from cnnvis.io import Checkpoint
from cnnvis.paper_reference import paper_numbers

log = logging.getLogger("cnnvis.prune")

FD_LIMIT = 1e-6  # bound on the finite-difference relative error (float64)
REFERENCE_TABLE = "p3_pruning"  # paper 3's per-class table in reports/paper_reference.yaml
PAPER_CLASSES = ("Persian cat", "Pembroke")  # the two ImageNet classes of paper 3's table (§3.2.3)


@dataclass(frozen=True)
class PaperRow:
    """One row of paper 3's table (CaffeNet on ImageNet): error rates in %."""

    label: str
    initial: float
    least: float
    most: float


def paper_rows(reference: Mapping) -> tuple[PaperRow, ...]:
    """Paper 3's per-class rows from the parsed reports/paper_reference.yaml (table ``p3_pruning``)."""
    numbers = paper_numbers(reference, REFERENCE_TABLE, PAPER_CLASSES, ("initial", "least", "most"))
    return tuple(PaperRow(label, **v) for label, v in numbers.items())


@dataclass(frozen=True)
class RankSplit:
    """The images the filters are ranked on."""

    name: str  # heldout | test | train
    images: torch.Tensor  # [N, C, H, W] uint8
    labels: torch.Tensor  # [N] int64
    note: str  # what they are, for the caption and the metrics


def ranking_split(raw: D.RawDataset, train_cfg: TrainConfig | None, rank_split: str) -> RankSplit:
    """The images to rank on (``prune.rank_split``): the held-out validation images of ``train_cfg`` (the model's
    own training config; the training images when it set none aside or is unknown), or the test images."""
    if rank_split == "test":
        return RankSplit("test", D.to_tensor(raw.test.images), torch.as_tensor(raw.test.labels),
                         "the test images the errors are measured on (paper 3's same-set variant)")
    if train_cfg is None:
        return RankSplit("train", D.to_tensor(raw.train.images), torch.as_tensor(raw.train.labels),
                         "training images: the checkpoint records no training config, so no held-out split is "
                         "known and the model may have trained on them")
    td = D.prepare(raw, val_size=train_cfg.val_size, max_train=train_cfg.max_train_images, seed=train_cfg.seed)
    if len(td.val_y):
        return RankSplit("heldout", td.val_x, td.val_y,
                         f"held-out images, of the {len(td.val_y)} validation images training set aside from the training "
                         f"split (train.val_size {train_cfg.val_size}, seed {train_cfg.seed}), never trained on")
    return RankSplit("train", td.train_x, td.train_y,
                     "training images the model trained on: its training set no validation images aside "
                     "(train.val_size 0), so no held-out split exists")


def subset(n: int, limit: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``limit`` of ``n`` items (all when ``limit`` is None)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def confusion(pred: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
    """C×C counts, rows true class, columns predicted."""
    m = torch.zeros(c, c, dtype=torch.long)
    m.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    return m


def pick_classes(conf: torch.Tensor, reference: int | None) -> tuple[int, int, int]:
    """(reference, similar, dissimilar): reference = the class with most errors unless given; similar =
    the class it is most confused with (both directions), dissimilar = the least confused one."""
    errors = conf.sum(1) - conf.diag()
    ref = int(errors.argmax()) if reference is None else reference
    mix = (conf[ref] + conf[:, ref]).float()
    mix[ref] = -1
    similar = int(mix.argmax())
    mix[ref] = float("inf")
    mix[similar] = float("inf")
    return ref, similar, int(mix.argmin())


def sweep_tests(rows: Sequence[dict], seed: int = 0) -> dict[str, dict]:
    """Each pair of rankings on the same images: per image, the error (%) averaged over every fraction of the sweep
    (random: also over its repeats), compared by a paired bootstrap (``cnnvis.stats.paired_bootstrap``)."""
    per_image: dict[str, list[np.ndarray]] = {}
    for r in rows:
        per_image.setdefault(r["method"], []).append(100.0 * r["wrong"].astype(np.float64))
    area = {m: np.mean(v, axis=0) for m, v in per_image.items()}  # [N] mean over fractions (and repeats)
    names = list(area)
    return {f"{a}_vs_{b}": S.paired_bootstrap(area[a] - area[b], (a, b), seed=seed).as_dict()
            for i, a in enumerate(names) for b in names[i + 1:]}


def summarize_sweep(rows: Sequence[dict]) -> dict:
    """Per method: error (mean ± std over repeats) at each fraction, and the mean over fractions."""
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        by_f: dict[float, list[float]] = {}
        for r in rows:
            if r["method"] == method:
                by_f.setdefault(r["fraction"], []).append(r["error"])
        curve = [{"fraction": f, "error_mean": statistics.fmean(v), "error_std": statistics.pstdev(v), "n": len(v)}
                 for f, v in sorted(by_f.items())]
        out[method] = {"curve": curve, "mean_error_over_fractions": statistics.fmean(c["error_mean"] for c in curve)}
    return out


@dataclass(frozen=True)
class Pruned:
    """The model pruned at ``prune.prune_fraction``: what is saved (physically smaller when it rebuilds from a
    config, else masked) and how it compares with the unpruned model."""

    model: nn.Module
    model_cfg: ModelConfig
    physical: bool
    record: dict  # the metrics' "pruned" section


@dataclass(frozen=True)
class PruneStudy:
    config: P.PruneConfig
    model_cfg: ModelConfig
    spec: dict
    classes: tuple[str, ...]
    layers: tuple[str, ...]
    train_cfg: TrainConfig | None  # the model's own training config (from its checkpoint)
    tag: str | None  # the checkpoint's tag (baseline, adjusted, ...)
    table_layer: str
    indices: torch.Tensor  # [N] int64 scored images, indices into the test split
    rank_split: str  # heldout | test | train
    rank_note: str
    rank_indices: torch.Tensor  # [M] int64 ranking images, indices into the ranking split
    stats: I.ImportanceStats  # over the ranking images
    check: I.GradientCheck
    roles: tuple[int, int, int]  # reference, similar, dissimilar class (§3.2.2)
    probes: dict[str, int]  # figure title → position among the ranking images
    volumes: torch.Tensor | None  # [P, O, I, kh, kw] ∂y_ref/∂W of the table layer for the probes
    probe_pixels: torch.Tensor | None  # [P, C, H, W] the probes in [0, 1]
    table_rows: list[dict]
    sweep_rows: list[dict]
    sweep_images: int
    pruned: Pruned
    seconds: dict[str, float]  # importance, importance_cpu, gradient_check, sweep
    threads: int

    @property
    def overall(self) -> dict[str, torch.Tensor]:
        return self.stats.overall()

    @property
    def relevance(self) -> dict[str, torch.Tensor]:
        return self.stats.relevance()

    @property
    def other(self) -> dict[str, torch.Tensor]:
        return self.stats.other_class()

    def per_layer(self) -> dict[str, dict]:
        overall, relevance, other = self.overall, self.relevance, self.other
        right, wrong = self.stats.mean(correct=True), self.stats.mean(correct=False)
        wrong_seen = self.stats.counts[0] > 0
        return {n: {"filters": int(v.numel()), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                    "max": float(v.max()), "dead_filters": int((v == 0).sum()),
                    "same_class_mean": float(relevance[n].mean()), "other_class_mean": float(other[n].mean()),
                    "correct_inputs_mean": float(torch.diagonal(right[n], dim1=0, dim2=1).mean()),
                    "wrong_inputs_mean": float(torch.diagonal(wrong[n], dim1=0, dim2=1)[:, wrong_seen].mean())
                    if bool(wrong_seen.any()) else None}
                for n, v in overall.items()}

    def model_record(self) -> dict:
        """Which model the rows come from; seed and epochs from its own checkpoint (None when not recorded)."""
        t = self.train_cfg
        return {"tag": self.tag, "name": self.model_cfg.name, "widths": list(self.model_cfg.widths),
                "seed": t.seed if t else None, "epochs": t.epochs if t else None,
                "val_size": t.val_size if t else None}

    def model_text(self) -> str:
        m, t = self.model_cfg, self.train_cfg
        run = f"seed {t.seed}, {t.epochs} epochs" if t else "seed and epochs not recorded"
        return f"the `{self.tag or 'untagged'}` model ({m.name} {list(m.widths)}, {run}, from its checkpoint)"

    def metrics(self, dataset: str, *, checkpoint: str) -> dict:
        cfg, check, s = self.config, self.check, self.seconds
        ref, similar, dissimilar = self.roles
        n = len(self.rank_indices)
        return {
            "dataset": dataset, "checkpoint": checkpoint, "checkpoint_tag": self.tag, "model": self.model_record(),
            "config": to_dict(cfg), "classes": list(self.classes), "layers": list(self.layers),
            "images": len(self.indices),
            "ranking": {"split": self.rank_split, "images": n, "images_are": self.rank_note},
            "filters": sum(v.numel() for v in self.overall.values()),
            "importance": {"seconds": round(s["importance"], 2), "cpu_seconds": round(s["importance_cpu"], 2),
                           "images_per_s": round(n / s["importance"], 1), "threads": self.threads,
                           "batch_size": cfg.batch_size, "per_layer": self.per_layer()},
            "gradient_check": {"max_rel_error": check.max_rel_error, "limit": FD_LIMIT,
                               "passed": check.max_rel_error < FD_LIMIT, "epsilon": check.epsilon, "dtype": "float64",
                               "weights": check.weights, "directional": check.directional, "checked": check.checked,
                               "seconds": round(s["gradient_check"], 2)},
            "classes_3_2_2": {"reference": self.classes[ref], "similar": self.classes[similar],
                              "dissimilar": self.classes[dissimilar], "split": self.rank_split,
                              "probes": {k: int(self.rank_indices[v]) for k, v in self.probes.items()}},
            "per_class_table": {"layer": self.table_layer, "rows": self.table_rows},
            "sweep": {"images": self.sweep_images, "seconds": round(s["sweep"], 2), "normalization": cfg.normalization,
                      "summary": summarize_sweep(self.sweep_rows), "tests": sweep_tests(self.sweep_rows, cfg.seed),
                      "rows": [{k: v for k, v in r.items() if k != "wrong"} for r in self.sweep_rows]},
            "pruned": self.pruned.record,
        }

    def checkpoint(self, dataset: str, *, source: str) -> Checkpoint:
        return Checkpoint(self.pruned.model, self.pruned.model_cfg, self.spec,
                          {"dataset": dataset, "tag": "pruned", "source": source,
                           "prune_fraction": self.config.prune_fraction,
                           "test_error": self.pruned.record["error_physical"]})

    def table(self, paper: Sequence[PaperRow]) -> str:
        """Paper 3's per-class table as Markdown: the paper's rows, then one row per class of ours."""
        from cnnvis.report import md_table

        rows = self.table_rows
        n, k = len(self.indices), len(self.rank_indices)
        ranked = (f"the same {n} test images (`prune.rank_split: test`, paper 3's same-set variant)"
                  if self.rank_split == "test" else f"{k} {self.rank_note} (`prune.rank_split: {self.config.rank_split}`)")
        caption = (f"Our rows: {self.model_text()}. Filters ranked on {ranked}; error rate (%) on {n} test images, "
                   "per class (paper 3 eq. (2)). A filter is removed by zeroing its weights and bias. Least / most "
                   "important = lowest / highest class-wise relevance (mean ‖∂y_c/∂W_f‖ over the ranking images of "
                   "the class) for that class. Paper rows (CaffeNet conv1, ranked and scored on the same ImageNet "
                   "training images) quoted for reference.")
        head = [f"# Per-class error when one filter of `{self.table_layer}` is removed (paper 3 table)", "",
                textwrap.fill(caption, 110, break_long_words=False, break_on_hyphens=False), ""]
        cells = [[f"{p.label} (paper 3, CaffeNet)", "—", f"{p.initial:.2f}", f"{p.least:.2f}", f"{p.most:.2f}", "—"]
                 for p in paper]
        cells += [[self.classes[r["class"]], r["n"], f"{r['error']:.2f}", f"{r['error_least_removed']:.2f}",
                   f"{r['error_most_removed']:.2f}", f"{r['least_filter']}, {r['most_filter']}"] for r in rows]
        table = md_table(["class", "n", "initial error (%)", "least important removed (%)",
                          "most important removed (%)", "filters (least, most)"], cells, align="lrrrrl")
        worse_most = sum(r["error_most_removed"] > r["error"] for r in rows)
        worse_least = sum(r["error_least_removed"] > r["error"] for r in rows)
        tail = ["", f"Removing the most important filter raised the error in {worse_most} of {len(rows)} classes; "
                    f"removing the least important one in {worse_least}.", ""]
        return "\n".join([*head, table, *tail])


def _pruned(model: nn.Module, model_cfg: ModelConfig, layers: tuple[str, ...], rankings: dict, x: torch.Tensor,
            y: torch.Tensor, c: int, cfg: P.PruneConfig) -> Pruned:
    """The lowest ``prune_fraction`` of the importance ranking removed: masked, then physically smaller."""
    example = x[:1]
    removed, threshold = P.lowest_filters(rankings["importance"], cfg.prune_fraction, min_keep=cfg.min_keep)
    masked = P.zero_filters(model, removed, example)
    small = P.remove_filters(model, removed, example)
    full_eval = P.evaluate(model, x, y, c)
    masked_eval, small_eval = P.evaluate(masked, x, y, c), P.evaluate(small, x, y, c)
    with torch.no_grad():
        logit_diff = max((masked(x[i : i + 1000]) - small(x[i : i + 1000])).abs().max().item()
                         for i in range(0, len(x), 1000))
    lat_x = x[: cfg.latency_batch] if len(x) >= cfg.latency_batch else x[:1].expand(cfg.latency_batch, *x.shape[1:])
    before, after = P.complexity(model, example), P.complexity(small, example)
    lat = P.cpu_latency_ms({"before": model, "after": small}, lat_x, repeats=cfg.latency_repeats)
    small_cfg = None
    if model_cfg.name == "p1_cnn" and layers == I.conv_layer_names(model):  # the smaller net is a P1CNN of new widths
        widths = tuple(dict(small.named_modules())[n].out_channels for n in layers)
        small_cfg = parse(ModelConfig, {**to_dict(model_cfg), "widths": list(widths)}, "pruned.model")
    record = {
        "fraction": cfg.prune_fraction, "threshold": threshold if math.isfinite(threshold) else None,
        "removed_per_layer": {n: v.tolist() for n, v in removed.items()},
        "error_unpruned": full_eval["error"], "error_masked": masked_eval["error"], "error_physical": small_eval["error"],
        "predictions_equal": bool(torch.equal(masked_eval["predictions"], small_eval["predictions"])),
        "max_logit_difference": logit_diff,
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "latency_before": lat["before"], "latency_after": lat["after"], "latency_batch": cfg.latency_batch,
        "speedup": lat["before"]["median_ms"] / lat["after"]["median_ms"],
        "saved_as": "physical" if small_cfg is not None else "masked",
    }
    if small_cfg is not None:
        return Pruned(small, small_cfg, True, record)
    return Pruned(masked, model_cfg, False, record)


def prune_study(model: nn.Module, model_cfg: ModelConfig, spec: Mapping, raw: D.RawDataset, cfg: P.PruneConfig, *,
                train_cfg: TrainConfig | None = None, tag: str | None = None,
                progress: Callable[..., Iterable] = lambda it, **_: it) -> PruneStudy:
    """Paper 3 §3.2 on ``model`` (built from ``model_cfg`` for the dataset ``spec``, trained with ``train_cfg``):
    filters ranked on the images of ``cfg.rank_split`` of ``raw``, scored on its test split."""
    classes = tuple(spec["classes"])
    c = len(classes)
    mean, std = tuple(spec["mean"]), tuple(spec["std"])
    test_u8, test_y = D.to_tensor(raw.test.images), torch.as_tensor(raw.test.labels)
    idx = subset(len(test_y), cfg.max_images, cfg.seed)
    x, y = D.normalize(test_u8[idx], mean, std), test_y[idx]
    split = ranking_split(raw, train_cfg, cfg.rank_split)
    r_idx = subset(len(split.labels), cfg.max_images, cfg.seed)
    xr, yr = D.normalize(split.images[r_idx], mean, std), split.labels[r_idx]
    log.info("ranking on %d %s images, scoring on %d test images", len(yr), split.name, len(y))
    layers = I.conv_layer_names(model, cfg.layers or None)
    table_layer = cfg.table_layer or layers[0]
    if table_layer not in layers:
        raise ConfigError(f"prune.table_layer = {table_layer!r}: not among the analysed layers ({', '.join(layers)})")
    if cfg.reference_class is not None and cfg.reference_class >= c:
        raise ConfigError(f"prune.reference_class = {cfg.reference_class}: the dataset has {c} classes")
    example = x[:1]

    # importance for every input, layer, filter and class (§3.2.1, §3.2.3)
    t0, cpu0 = time.perf_counter(), time.process_time()
    stats = I.compute_importance(model, xr, yr, layers=layers, batch_size=cfg.batch_size, progress=progress)
    seconds = {"importance": time.perf_counter() - t0, "importance_cpu": time.process_time() - cpu0}
    log.info("importance: %d images × %d classes × %d layers in %.1f s (%.1f s CPU, %d threads)", len(yr), c,
             len(layers), seconds["importance"], seconds["importance_cpu"], torch.get_num_threads())
    overall = stats.overall()

    # finite-difference validation (float64, central differences, weights restored)
    t0 = time.perf_counter()
    fd_idx = torch.arange(min(cfg.fd_images, len(yr)))
    check = I.check_gradients(model, xr[fd_idx], yr[fd_idx], layers=layers, weights_per_layer=cfg.fd_weights_per_layer,
                              filters_per_layer=cfg.fd_filters_per_layer, epsilon=cfg.fd_epsilon, seed=cfg.seed)
    seconds["gradient_check"] = time.perf_counter() - t0
    log.info("finite differences: max relative error %.2e (limit %.0e)", check.max_rel_error, FD_LIMIT)

    # §3.2.2: reference, similar and dissimilar class; a correct and a wrong input of each
    ref, similar, dissimilar = pick_classes(confusion(stats.predictions, yr, c), cfg.reference_class)
    probes = {}
    for role, k in (("reference", ref), ("similar", similar), ("dissimilar", dissimilar)):
        for ok in (True, False):
            hit = torch.nonzero((yr == k) & ((stats.predictions == yr) == ok)).flatten()
            if len(hit):
                wrong = "wrong → " + classes[int(stats.predictions[hit[0]])]
                probes[f"{role} ({classes[k]}), {'correct' if ok else wrong}"] = int(hit[0])
    probe_list = list(probes.values())
    volumes = pixels = None
    if probe_list:
        fi = I.FilterImportance(model, [table_layer])
        volumes = fi.gradients(xr[probe_list], torch.full((len(probe_list),), ref))[table_layer]
        pixels = split.images[r_idx][probe_list].float() / 255.0

    # paper 3's table, for every class: relevance from the ranking images, errors on the test images
    table_rows = P.per_class_table(model, x, y, stats.relevance()[table_layer], table_layer, example)

    # threshold sweep, importance vs L1-norm vs random (Fig 7-8 and beyond)
    s_idx = subset(len(y), cfg.sweep_images, cfg.seed + 1)
    rankings = {"importance": P.normalize_scores(overall, cfg.normalization),
                "l1_norm": P.normalize_scores(P.filter_l1_norms(model, layers), cfg.normalization)}
    t0 = time.perf_counter()
    sweep = P.sweep(model, x[s_idx], y[s_idx], c, rankings, cfg.fractions, example, random_repeats=cfg.random_repeats,
                    seed=cfg.seed, min_keep=cfg.min_keep, progress=progress)
    seconds["sweep"] = time.perf_counter() - t0

    pruned = _pruned(model, model_cfg, layers, rankings, x, y, c, cfg)
    pr = pruned.record
    log.info("pruned %.0f %% of filters: error %.2f → %.2f %% (physical %.2f), params %d → %d, MACs %d → %d, "
             "latency ×%.2f", 100 * cfg.prune_fraction, pr["error_unpruned"], pr["error_masked"], pr["error_physical"],
             pr["params_before"], pr["params_after"], pr["macs_before"], pr["macs_after"], pr["speedup"])
    return PruneStudy(cfg, model_cfg, dict(spec), classes, layers, train_cfg, tag, table_layer, idx, split.name,
                      split.note, r_idx, stats, check,
                      (ref, similar, dissimilar), probes, volumes, pixels, table_rows, sweep, len(s_idx), pruned,
                      seconds, torch.get_num_threads())
