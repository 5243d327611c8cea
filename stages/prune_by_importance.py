"""Stage `prune-by-importance`: filter importance, its validation, and pruning (paper 3 §3.2).

    python -m stages.prune_by_importance --dataset fashion_mnist \
        --checkpoint data/models/fashion_mnist/adjusted.pt --data data/raw/fashion_mnist \
        --out data/models/fashion_mnist/pruned.pt --metrics reports/metrics/fashion_mnist/prune.json \
        --table reports/tables/fashion_mnist/pruning_per_class.md --figures reports/figures/fashion_mnist/prune

On the test split (``prune.max_images``: a seeded subset): the importance
‖∂y_c/∂W_f‖ of every filter of every analysed conv layer for every input and
class; its finite-difference check in float64; paper 3's per-class table;
the threshold sweep against random and L1-norm rankings; the model pruned at
``prune.prune_fraction`` both masked and physically smaller (Torch-Pruning),
with parameters, MACs and CPU latency before and after.

The paper's issue names one table, ``reports/tables/pruning_per_class.md``; with
one chain of stages per dataset (foreach) each dataset writes its own
``reports/tables/<dataset>/pruning_per_class.md``.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from pathlib import Path

import torch

from cnnvis import ConfigError
from cnnvis import data as D
from cnnvis import importance as I
from cnnvis import pruning as P
from cnnvis.config import ModelConfig, parse, to_dict
from cnnvis.io import save_checkpoint, save_figure, save_json, save_text
from cnnvis.models import load_checkpoint
from stages._common import Params, add_common_args, progress_factory, stage_main

PARAMS = ("prune",)
INPUTS = ("--checkpoint", "--data")
OUTPUTS = ("--out", "--metrics", "--table", "--figures")

log = logging.getLogger("cnnvis.prune")

# Paper 3's table (CaffeNet on ImageNet), error rates in %: unpruned, least / most important conv filter removed.
PAPER_ROWS = (("Persian cat (paper 3, CaffeNet)", 10.5, 10.5, 14.0), ("Pembroke (paper 3, CaffeNet)", 9.39, 8.83, 15.46))
FD_LIMIT = 1e-6  # the bound on the finite-difference relative error (float64)


def subset(n: int, limit: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``limit`` of ``n`` items (all when ``limit`` is None)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def confusion(pred: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
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


def table_markdown(rows: list[dict], classes: list[str], layer: str, model_desc: str) -> str:
    lines = [
        f"# Per-class error when one filter of `{layer}` is removed (paper 3 table)",
        "",
        f"Model: {model_desc}. Error rate (%) on the test images of each class (paper 3 eq. (2)); a filter is",
        "removed by zeroing its weights and bias. Least / most important = lowest / highest class-wise",
        "relevance (mean ‖∂y_c/∂W_f‖ over the class's inputs) for that class. Paper rows quoted for reference.",
        "",
        "| class | n | initial error (%) | least important removed (%) | most important removed (%) | filters (least, most) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, e0, el, em in PAPER_ROWS:
        lines.append(f"| {name} | — | {e0:.2f} | {el:.2f} | {em:.2f} | — |")
    for r in rows:
        lines.append(f"| {classes[r['class']]} | {r['n']} | {r['error']:.2f} | {r['error_least_removed']:.2f} | "
                     f"{r['error_most_removed']:.2f} | {r['least_filter']}, {r['most_filter']} |")
    worse_most = sum(r["error_most_removed"] > r["error"] for r in rows)
    worse_least = sum(r["error_least_removed"] > r["error"] for r in rows)
    lines += ["", f"Removing the most important filter raised the error in {worse_most} of {len(rows)} classes; "
                  f"removing the least important one in {worse_least}.", ""]
    return "\n".join(lines)


def summarize_sweep(rows: list[dict]) -> dict:
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


def run(model: torch.nn.Module, state: dict, test_u8: torch.Tensor, test_y: torch.Tensor, cfg: P.PruneConfig,
        fig_dir: Path, progress) -> tuple[dict, str, torch.nn.Module, ModelConfig | None]:
    """Everything but the writing of the model, metrics and table (figures are saved into ``fig_dir``)."""
    from cnnvis.plotting import importance as F

    spec = state["spec"]
    classes = list(spec["classes"])
    c = len(classes)
    mean, std = tuple(spec["mean"]), tuple(spec["std"])
    idx = subset(len(test_y), cfg.max_images, cfg.seed)
    x, y = D.normalize(test_u8[idx], mean, std), test_y[idx]
    layers = I.conv_layer_names(model, cfg.layers or None)
    table_layer = cfg.table_layer or layers[0]
    if table_layer not in layers:
        raise ConfigError(f"prune.table_layer = {table_layer!r}: not among the analysed layers ({', '.join(layers)})")
    if cfg.reference_class is not None and cfg.reference_class >= c:
        raise ConfigError(f"prune.reference_class = {cfg.reference_class}: the dataset has {c} classes")
    example = x[:1]

    # --- importance for every input, layer, filter and class (§3.2.1, §3.2.3)
    t0, cpu0 = time.perf_counter(), time.process_time()
    stats = I.compute_importance(model, x, y, layers=layers, batch_size=cfg.batch_size, progress=progress)
    imp_seconds, imp_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    log.info("importance: %d images × %d classes × %d layers in %.1f s (%.1f s CPU, %d threads)", len(y), c, len(layers),
             imp_seconds, imp_cpu, torch.get_num_threads())
    overall, relevance, other = stats.overall(), stats.relevance(), stats.other_class()
    right, wrong = stats.mean(correct=True), stats.mean(correct=False)

    # --- finite-difference validation (float64, central differences, weights restored)
    t0 = time.perf_counter()
    fd_idx = torch.arange(min(cfg.fd_images, len(y)))
    check = I.check_gradients(model, x[fd_idx], y[fd_idx], layers=layers, weights_per_layer=cfg.fd_weights_per_layer,
                              filters_per_layer=cfg.fd_filters_per_layer, epsilon=cfg.fd_epsilon, seed=cfg.seed)
    fd_seconds = time.perf_counter() - t0
    log.info("finite differences: max relative error %.2e (limit %.0e)", check.max_rel_error, FD_LIMIT)

    # --- §3.2.2: reference, similar and dissimilar class; correct and wrong inputs
    conf = confusion(stats.predictions, y, c)
    ref, similar, dissimilar = pick_classes(conf, cfg.reference_class)
    probes = {}
    for role, k in (("reference", ref), ("similar", similar), ("dissimilar", dissimilar)):
        for ok in (True, False):
            hit = torch.nonzero((y == k) & ((stats.predictions == y) == ok)).flatten()
            if len(hit):
                probes[f"{role} ({classes[k]}), {'correct' if ok else 'wrong → ' + classes[int(stats.predictions[hit[0]])]}"] = int(hit[0])
    fi = I.FilterImportance(model, [table_layer])
    probe_list = list(probes.values())
    volumes = fi.gradients(x[probe_list], torch.full((len(probe_list),), ref))[table_layer] if probe_list else None

    # --- paper 3's table, for every class
    table_rows = P.per_class_table(model, x, y, relevance[table_layer], table_layer, example)

    # --- threshold sweep, importance vs L1-norm vs random (Fig 7-8 and beyond)
    s_idx = subset(len(y), cfg.sweep_images, cfg.seed + 1)
    rankings = {"importance": P.normalize_scores(overall, cfg.normalization),
                "l1_norm": P.normalize_scores(P.filter_l1_norms(model, layers), cfg.normalization)}
    t0 = time.perf_counter()
    sweep = P.sweep(model, x[s_idx], y[s_idx], c, rankings, cfg.fractions, example, random_repeats=cfg.random_repeats,
                    seed=cfg.seed, min_keep=cfg.min_keep, progress=progress)
    sweep_seconds = time.perf_counter() - t0

    # --- the pruned model: masked, then physically smaller
    removed, threshold = P.lowest_filters(rankings["importance"], cfg.prune_fraction, min_keep=cfg.min_keep)
    masked = P.zero_filters(model, removed, example)
    small = P.remove_filters(model, removed, example)
    full_eval = P.evaluate(model, x, y, c)
    masked_eval, small_eval = P.evaluate(masked, x, y, c), P.evaluate(small, x, y, c)
    with torch.no_grad():
        logit_diff = max((masked(x[i : i + 1000]) - small(x[i : i + 1000])).abs().max().item() for i in range(0, len(x), 1000))
    lat_x = x[: cfg.latency_batch] if len(x) >= cfg.latency_batch else x[:1].expand(cfg.latency_batch, *x.shape[1:])
    before, after = P.complexity(model, example), P.complexity(small, example)
    lat = P.cpu_latency_ms({"before": model, "after": small}, lat_x, repeats=cfg.latency_repeats)
    lat_before, lat_after = lat["before"], lat["after"]
    small_cfg = None
    model_cfg = parse(ModelConfig, state["model"], "checkpoint.model")
    if model_cfg.name == "p1_cnn" and layers == I.conv_layer_names(model):  # the smaller net is a P1CNN of new widths
        widths = tuple(dict(small.named_modules())[n].out_channels for n in layers)
        small_cfg = parse(ModelConfig, {**to_dict(model_cfg), "widths": list(widths)}, "pruned.model")

    # --- figures
    thr_rows = [r for r in sweep if r["method"] == "importance"]
    figs = {
        "importance_histogram": F.importance_histogram(stats.own, classes),
        "same_vs_different_class": F.same_vs_different(relevance, other, right, wrong, classes),
        "sweep": F.sweep_plot(sweep, classes, n_images=len(s_idx)),
        "threshold_per_class": F.threshold_per_class(thr_rows, classes, n_images=len(s_idx)),
    }
    for layer in layers:
        figs[f"importance_grid_{layer.replace('.', '_')}"] = F.importance_grid(
            overall[layer], relevance[layer][ref], other[layer][ref], layer, classes[ref])
    if volumes is not None:
        figs[f"gradient_volumes_{table_layer.replace('.', '_')}"] = F.gradient_volumes(
            volumes, test_u8[idx][probe_list].float() / 255.0, list(probes), table_layer, classes[ref])
    for name, fig in figs.items():
        save_figure(fig_dir / f"{name}.png", fig, dpi=110)

    n_filters = sum(v.numel() for v in overall.values())
    metrics = {
        "classes": classes, "layers": list(layers), "images": len(y), "filters": n_filters,
        "importance": {
            "seconds": round(imp_seconds, 2), "cpu_seconds": round(imp_cpu, 2), "images_per_s": round(len(y) / imp_seconds, 1), "threads": torch.get_num_threads(),
            "batch_size": cfg.batch_size,
            "per_layer": {n: {"filters": int(v.numel()), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                              "max": float(v.max()), "dead_filters": int((v == 0).sum()),
                              "same_class_mean": float(relevance[n].mean()), "other_class_mean": float(other[n].mean()),
                              "correct_inputs_mean": float(torch.diagonal(right[n], dim1=0, dim2=1).mean()),
                              "wrong_inputs_mean": float(torch.diagonal(wrong[n], dim1=0, dim2=1)[:, stats.counts[0] > 0].mean())
                              if bool((stats.counts[0] > 0).any()) else None}
                          for n, v in overall.items()},
        },
        "gradient_check": {"max_rel_error": check.max_rel_error, "limit": FD_LIMIT, "passed": check.max_rel_error < FD_LIMIT,
                           "epsilon": check.epsilon, "dtype": "float64", "weights": check.weights,
                           "directional": check.directional, "checked": check.checked, "seconds": round(fd_seconds, 2)},
        "classes_3_2_2": {"reference": classes[ref], "similar": classes[similar], "dissimilar": classes[dissimilar],
                          "probes": {k: int(idx[v]) for k, v in probes.items()}},
        "per_class_table": {"layer": table_layer, "rows": table_rows},
        "sweep": {"images": len(s_idx), "seconds": round(sweep_seconds, 2), "normalization": cfg.normalization,
                  "summary": summarize_sweep(sweep), "rows": sweep},
        "pruned": {
            "fraction": cfg.prune_fraction, "threshold": threshold if math.isfinite(threshold) else None,
            "removed_per_layer": {n: v.tolist() for n, v in removed.items()},
            "error_unpruned": full_eval["error"], "error_masked": masked_eval["error"], "error_physical": small_eval["error"],
            "predictions_equal": bool(torch.equal(masked_eval["predictions"], small_eval["predictions"])),
            "max_logit_difference": logit_diff,
            "params_before": before["params"], "params_after": after["params"],
            "macs_before": before["macs"], "macs_after": after["macs"],
            "latency_before": lat_before, "latency_after": lat_after, "latency_batch": cfg.latency_batch,
            "speedup": lat_before["median_ms"] / lat_after["median_ms"],
            "saved_as": "physical" if small_cfg is not None else "masked",
        },
    }
    table = table_markdown(table_rows, classes, table_layer, f"{model_cfg.name} {list(model_cfg.widths)}, {len(y)} test images")
    out_model = small if small_cfg is not None else masked
    return metrics, table, out_model, small_cfg if small_cfg is not None else model_cfg


@stage_main("prune-by-importance")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--checkpoint", required=True, type=Path, help="the adjusted (retrained) model, or the baseline")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--table", required=True, type=Path)
    p.add_argument("--figures", required=True, type=Path)
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS, args.dataset)
    cfg = params.section("prune", P.PruneConfig)
    hw = params.apply_hardware()
    model, state = load_checkpoint(args.checkpoint)
    raw = D.load_npz(args.data)
    test_u8, test_y = D.to_tensor(raw.test.images), torch.as_tensor(raw.test.labels)
    if len(raw.classes) != state["spec"]["num_classes"]:
        raise ConfigError(f"{args.checkpoint}: trained for {state['spec']['num_classes']} classes but {args.data} has "
                          f"{len(raw.classes)}; give the checkpoint of this dataset")
    args.figures.mkdir(parents=True, exist_ok=True)
    metrics, table, pruned, pruned_cfg = run(model, state, test_u8, test_y, cfg, args.figures, progress_factory(hw))
    metrics = {"dataset": args.dataset, "checkpoint": str(args.checkpoint), "checkpoint_tag": state.get("tag"),
               "config": to_dict(cfg), **metrics}
    save_checkpoint(args.out, pruned, pruned_cfg, state["spec"], dataset=args.dataset, tag="pruned",
                    source=str(args.checkpoint), prune_fraction=cfg.prune_fraction,
                    test_error=metrics["pruned"]["error_physical"])
    save_json(args.metrics, metrics)
    save_text(args.table, table)
    pr = metrics["pruned"]
    log.info("pruned %.0f %% of filters: error %.2f → %.2f %% (physical %.2f), params %d → %d, MACs %d → %d, latency ×%.2f",
             100 * cfg.prune_fraction, pr["error_unpruned"], pr["error_masked"], pr["error_physical"], pr["params_before"],
             pr["params_after"], pr["macs_before"], pr["macs_after"], pr["speedup"])


if __name__ == "__main__":
    main()
