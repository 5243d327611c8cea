"""Part of stage `visualize`: feature synthesis (paper 2) and activation views (paper 3 §3.1).

Called by ``stages/visualize.py`` as ``run(model, spec, images_u8, labels, params, fig_dir)``;
writes its figures (and the volume file) into ``fig_dir`` and returns metrics.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import nrrd
import numpy as np
import torch
from torch import Tensor, nn

from cnnvis import activations as Act
from cnnvis import data as D
from cnnvis import synthesis as S
from cnnvis.config import to_dict
from cnnvis.io import atomic_path, save_figure
from cnnvis.plotting import activations as PA
from cnnvis.plotting import synthesis as PS
from stages._common import Params

PARAMS = ("synthesis", "activations")
VOLUME_FILE = "p3_volume.nrrd"
OUTPUTS_EXTRA = (VOLUME_FILE,)
FIGURES = ("p2_fig02_kernels_maps.png", "p2_actmax_classes.png", "p2_actmax_channels.png", "p2_inversion.png",
           "p3_activation_grid.png", "p3_volume.png", "p3_kmeans.png", "p3_pca.png")

log = logging.getLogger("cnnvis.visualize.synthesis")


def write_volume(path: Path, vol: np.ndarray, header: dict) -> None:
    """The NRRD volume, byte-reproducible: pynrrd's '# on <date>' header comment is dropped."""
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), vol, header, index_order="C")
        raw = tmp.read_bytes()
        head, sep, body = raw.partition(b"\n\n")  # the header ends at the first blank line
        tmp.write_bytes(re.sub(rb"(?m)^# on [^\n]*\n", b"", head) + sep + body)


def _settings(cfg: S.SynthesisConfig) -> str:
    return (f"{cfg.steps} steps, step {cfg.lr:g}, L2 decay {cfg.l2_decay:g}, blur σ={cfg.blur_sigma:g} every "
            f"{cfg.blur_every or '—'}, gradient clipped below percentile {cfg.clip_percentile:g}")


def run(model, spec: dict, images_u8: Tensor, labels: Tensor, params: Params, fig_dir: Path) -> dict:
    scfg = params.section("synthesis", S.SynthesisConfig)
    acfg = params.section("activations", Act.ActivationsConfig)
    fig_dir = Path(fig_dir)
    mean, std, classes = spec["mean"], spec["std"], list(spec["classes"])
    shape = tuple(images_u8.shape[1:])
    metrics: dict = {"synthesis_config": to_dict(scfg), "activations_config": to_dict(acfg), "timings": {}}
    t0 = time.perf_counter()

    # ---- activation maximization per class and per channel (paper 2 eq. (2)–(3))
    res = S.maximize(model, torch.arange(len(classes)), scfg, image_shape=shape, mean=mean, std=std)
    save_figure(fig_dir / "p2_actmax_classes.png",
                PS.actmax_classes(D.denormalize(res.images, mean, std), classes, res.initial, res.final,
                                  settings=_settings(scfg)), dpi=110)
    metrics["actmax_classes"] = {"initial_logit_mean": float(res.initial.mean()), "final_logit_mean": float(res.final.mean()),
                                 "final_logit": {c: float(v) for c, v in zip(classes, res.final, strict=True)}}
    layer_name, layer_mod = Act.resolve_layer(model, scfg.channel_layer)
    n_ch = min(scfg.max_channels, layer_mod.out_channels)
    resc = S.maximize(model, torch.arange(n_ch), scfg, image_shape=shape, mean=mean, std=std, layer=layer_name)
    save_figure(fig_dir / "p2_actmax_channels.png",
                PS.actmax_channels(D.denormalize(resc.images, mean, std), list(range(n_ch)), resc.initial, resc.final,
                                   layer=layer_name, settings=_settings(scfg)), dpi=110)
    metrics["actmax_channels"] = {"layer": layer_name, "channels": n_ch,
                                  "increased_fraction": float((resc.final > resc.initial).float().mean()),
                                  "final_mean": float(resc.final.mean())}
    metrics["timings"]["actmax_s"] = round(time.perf_counter() - t0, 2)

    # ---- feature inversion (paper 2 eq. (4)): one test image per class, first ones
    t0 = time.perf_counter()
    idx = [int(torch.nonzero(labels == c)[0]) for c in range(len(classes)) if bool((labels == c).any())]
    idx = idx[: scfg.inversion_images]
    x0 = D.normalize(images_u8[idx], mean, std)
    recon, inv_metrics = [], {}
    for layer in scfg.inversion_layers:
        inv = S.invert(model, x0, layer, scfg, mean=mean, std=std)
        recon.append((inv.layer, D.denormalize(inv.images, mean, std), inv.rel_error))
        inv_metrics[inv.layer] = {"rel_error_mean": float(inv.rel_error.mean()),
                                  "rel_error_start_mean": float(inv.history[0].mean())}
    save_figure(fig_dir / "p2_inversion.png",
                PS.inversion(D.denormalize(x0, mean, std), recon, labels=[classes[int(labels[i])] for i in idx],
                             settings=f"{scfg.inversion_steps} Adam steps, λ_TV={scfg.tv_weight:g} (β={scfg.tv_beta:g}), "
                                      f"λ_α={scfg.alpha_weight:g} (α={scfg.alpha:g})"), dpi=110)
    metrics["inversion"] = inv_metrics
    metrics["timings"]["inversion_s"] = round(time.perf_counter() - t0, 2)

    # ---- activations of one layer for one image (paper 3 §3.1, paper 2 Fig 2)
    t0 = time.perf_counter()
    i = min(acfg.image_index, len(images_u8) - 1)
    x = D.normalize(images_u8[i : i + 1], mean, std)
    image = D.denormalize(x, mean, std)[0].numpy()
    label = classes[int(labels[i])]
    lname, module = Act.resolve_layer(model, acfg.layer)
    maps = Act.layer_outputs(model, x, lname, rectify=acfg.rectify)[0].numpy()
    save_figure(fig_dir / "p3_activation_grid.png", PA.activation_grid(image, maps, layer=lname, label=label), dpi=110)
    if isinstance(module, nn.Conv2d):
        kernels = Act.layer_kernels(model, lname).numpy()
        save_figure(fig_dir / "p2_fig02_kernels_maps.png",
                    PA.kernels_and_maps(image, kernels, maps, layer=lname, label=label), dpi=110)
    else:  # a non-conv layer has no kernels; the other figures still come
        log.warning("kernels figure skipped: activations.layer = %s is a %s, not a Conv2d", lname,
                    type(module).__name__)

    vol = Act.volume(torch.from_numpy(maps))
    write_volume(fig_dir / VOLUME_FILE, vol, Act.nrrd_header(vol, layer=lname))
    map_order = Act.pca_order(vol.reshape(len(vol), -1))
    save_figure(fig_dir / "p3_volume.png", PA.volume_render(vol, vol[map_order], layer=lname, volume_file=VOLUME_FILE),
                dpi=100)

    rows, column = Act.vertical_slice(vol, acfg.slice_column)
    ks = [k for k in acfg.kmeans_clusters if k <= len(rows)]
    orderings = [Act.kmeans_order(rows, k, seed=acfg.seed, n_init=acfg.kmeans_n_init) for k in ks]
    save_figure(fig_dir / "p3_kmeans.png", PA.kmeans_orderings(rows, orderings, layer=lname, column=column), dpi=110)
    slice_order = Act.pca_order(rows)
    save_figure(fig_dir / "p3_pca.png",
                PA.pca_orderings(rows, slice_order, maps, map_order, layer=lname, column=column), dpi=110)
    metrics["activations"] = {"layer": lname, "image_index": i, "label": label, "slice_column": column,
                              "dead_filters": int((np.abs(maps).reshape(len(maps), -1).max(1) == 0).sum()),
                              "kmeans_clusters_found": {str(o.k): int(len(np.unique(o.labels))) for o in orderings},
                              "pca_map_order": map_order.tolist(), "pca_slice_order": slice_order.tolist()}
    metrics["timings"]["activations_s"] = round(time.perf_counter() - t0, 2)
    return metrics
