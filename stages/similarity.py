"""Stage `similarity`: pHash similarity of the deconvnet reconstructions of every conv layer (paper 1 §IV).

    python -m stages.similarity --dataset fashion_mnist \
        --recon data/visualize/fashion_mnist/reconstructions.npz \
        --metrics reports/metrics/fashion_mnist/similarity.json \
        --arrays data/similarity/fashion_mnist/similarity.npz \
        --figures reports/figures/fashion_mnist/similarity

Figures (paper 1): Fig 9 (first conv layer's maps), Fig 10 (its similarity
matrix), Fig 11a (its maps with duplicate groups outlined), Fig 11b (last conv
layer's maps, groups outlined), Fig 12 (its matrix); and one maps + one matrix
figure per conv layer.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cnnvis import DataError
from cnnvis import similarity as S
from cnnvis.config import to_dict
from cnnvis.io import atomic_path, save_figure, save_json
from stages._common import Params, add_common_args, stage_main

PARAMS = ("similarity",)
FIGURE_KINDS = ("maps", "groups", "matrix")
INPUTS = ("--recon",)
OUTPUTS = ("--metrics", "--arrays", "--figures")

log = logging.getLogger("cnnvis.similarity")


def load_reconstructions(path: Path) -> tuple[list[str], list[np.ndarray], dict]:
    """The visualize stage's npz → (layer names, [N, K_i, C, H, W] per layer, probe info)."""
    if not path.exists():
        raise DataError(f"{path}: missing; run the visualize stage first (dvc repro visualize)")
    try:
        z = np.load(path, allow_pickle=False)
        layers = [str(n) for n in z["layers"]]
        recons = [z[f"recon_{i}"] for i in range(len(layers))]
        probe = {"labels": z["probe_labels"].tolist() if "probe_labels" in z else None,
                 "indices": z["probe_indices"].tolist() if "probe_indices" in z else None}
    except KeyError as e:
        raise DataError(f"{path}: no array {e}; expected keys layers, recon_<i>, probe_labels, probe_indices "
                        "(rerun the visualize stage)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable npz ({type(e).__name__}); delete it and rerun the visualize stage") from None
    return layers, recons, probe


def analyse(layers: list[str], recons: list[np.ndarray], cfg: S.SimilarityConfig
            ) -> tuple[list[S.LayerSimilarity], list[S.Redundancy], list[np.ndarray]]:
    sims, reds, pixels = [], [], []
    for name, rec in zip(layers, recons, strict=True):
        if cfg.max_probe_images is not None:
            rec = rec[: cfg.max_probe_images]
        ls = S.layer_similarity(rec, cfg)
        red = S.redundancy(ls, cfg)
        _, _, px = S.fingerprints(rec[:1], cfg)
        sims.append(ls)
        reds.append(red)
        pixels.append(px[0])
        log.info("%s: %d kernels, mean similarity %.3f, %.1f %% pairs ≥ %.2f, %d groups, %d dead", name,
                 red.num_kernels, red.mean_similarity, 100 * red.fraction_above, cfg.threshold, len(red.groups),
                 len(red.dead_kernels))
    return sims, reds, pixels


def layer_figures(name: str, ls: S.LayerSimilarity, red: S.Redundancy, pixels: np.ndarray, cfg: S.SimilarityConfig,
                  *, probe_label: str, model_tag: str, kinds: Iterable[str] = FIGURE_KINDS) -> dict[str, object]:
    """The figures of one layer of the given ``kinds``: maps (plain), groups (maps outlined), matrix."""
    from cnnvis.plotting.similarity import maps_grid_figure, similarity_matrix_figure

    what = f"{model_tag}: deconvnet reconstructions of the {red.num_kernels} feature maps of {name} ({probe_label})"
    silent = np.flatnonzero(ls.dead_maps[0]).tolist()  # ``pixels`` shows probe image 0
    draw = {
        "maps": lambda: maps_grid_figure(pixels, title=what, outline=False, dead=red.dead_kernels, silent=silent),
        "groups": lambda: maps_grid_figure(pixels, title=what, groups=red.groups, dead=red.dead_kernels,
                                           silent=silent),
        "matrix": lambda: similarity_matrix_figure(
            ls.mean, title=f"{model_tag}: pHash similarity of the feature maps of {name}", threshold=cfg.threshold,
            groups=red.groups, dead=red.dead_kernels, method=cfg.method, n_images=ls.dead_maps.shape[0]),
    }
    return {kind: draw[kind]() for kind in kinds}


def write_layer_figures(directory: Path, layers: list[str], sims: list[S.LayerSimilarity], reds: list[S.Redundancy],
                        pixels: list[np.ndarray], cfg: S.SimilarityConfig, *, probe_label: str, model_tag: str,
                        paper: dict[int, dict[str, str]]) -> None:
    """Each figure of every layer once: under the paper's name where it has one (``paper[layer
    index][kind] = name``), else maps_<layer>.png (groups outlined) and matrix_<layer>.png; the
    plain maps figure only as a paper figure."""
    for i, name in enumerate(layers):
        names = {"groups": f"maps_{name}", "matrix": f"matrix_{name}", **paper.get(i, {})}
        figs = layer_figures(name, sims[i], reds[i], pixels[i], cfg, probe_label=probe_label, model_tag=model_tag,
                             kinds=names)
        for kind, fig in figs.items():
            save_figure(directory / f"{names[kind]}.png", fig)


def layer_record(name: str, index: int, ls: S.LayerSimilarity, red: S.Redundancy) -> dict:
    return {"name": name, "index": index, **red.as_dict(),
            "dead_map_fraction": float(ls.dead_maps.mean()), "probe_images": int(ls.dead_maps.shape[0])}


@stage_main("similarity")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--recon", required=True, type=Path, help="reconstructions.npz of the visualize stage")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--arrays", required=True, type=Path, help="npz of the similarity matrices and fingerprints")
    p.add_argument("--figures", required=True, type=Path, help="directory of this stage's figures")
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS, args.dataset)
    cfg = params.section("similarity", S.SimilarityConfig)

    t0 = time.perf_counter()
    layers, recons, probe = load_reconstructions(args.recon)
    sims, reds, pixels = analyse(layers, recons, cfg)
    seconds = time.perf_counter() - t0
    agreement = S.agreement_with_imagehash(recons[-1][: cfg.max_probe_images], cfg, cfg.agreement_maps)

    first_label = f"probe image 0, class {probe['labels'][0]}" if probe["labels"] else "probe image 0"
    with atomic_path(args.figures, directory=True) as tmp:
        write_layer_figures(tmp, layers, sims, reds, pixels, cfg, probe_label=first_label, model_tag="baseline",
                            paper={0: {"maps": "p1_fig09", "groups": "p1_fig11a", "matrix": "p1_fig10"},
                                   len(layers) - 1: {"groups": "p1_fig11b", "matrix": "p1_fig12"}})

    arrays = {"layers": np.array(layers)}
    for i, ls in enumerate(sims):
        arrays.update({f"mean_{i}": ls.mean, f"std_{i}": ls.std, f"count_{i}": ls.count,
                       f"dead_maps_{i}": ls.dead_maps, f"fingerprints_{i}": ls.fingerprints})
    with atomic_path(args.arrays) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    save_json(args.metrics, {
        "dataset": args.dataset, "config": to_dict(cfg), "probe": probe,
        "layers": [layer_record(n, i, sims[i], reds[i]) for i, n in enumerate(layers)],
        "imagehash_agreement": agreement, "seconds": round(seconds, 3),
    })


if __name__ == "__main__":
    main()
