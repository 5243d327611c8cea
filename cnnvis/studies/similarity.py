"""Study of stage `similarity`: pHash redundancy of every conv layer's deconvnet reconstructions (paper 1 §IV)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from cnnvis import DataError
from cnnvis import similarity as S
from cnnvis.config import to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconstructions:
    """The visualize stage's per-kernel reconstructions of every conv layer for the probe images."""

    layers: tuple[str, ...]
    recons: tuple[np.ndarray, ...]  # per layer [N_probe, K_i, C, H, W] float16
    labels: np.ndarray | None  # [N_probe] int64 class of each probe image
    indices: np.ndarray | None  # [N_probe] int64 index into the test split

    @classmethod
    def from_arrays(cls, z: dict[str, np.ndarray]) -> Reconstructions:
        try:
            layers = tuple(str(n) for n in z["layers"])
            recons = tuple(z[f"recon_{i}"] for i in range(len(layers)))
        except KeyError as e:
            raise DataError(f"reconstructions: no array {e}; expected layers, recon_<i>, probe_labels, probe_indices "
                            "(rerun the visualize stage)") from None
        return cls(layers, recons, z.get("probe_labels"), z.get("probe_indices"))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"layers": np.array(self.layers), **{f"recon_{i}": r for i, r in enumerate(self.recons)}}
        if self.labels is not None:
            out |= {"probe_labels": self.labels, "probe_indices": self.indices}
        return out

    @property
    def probe(self) -> dict:
        return {"labels": None if self.labels is None else self.labels.tolist(),
                "indices": None if self.indices is None else self.indices.tolist()}


@dataclass(frozen=True)
class LayerStudy:
    """One layer: its similarity, the redundancy the adjust rule reads, and probe image 0's hashed pixels."""

    name: str
    index: int
    similarity: S.LayerSimilarity
    redundancy: S.Redundancy
    pixels: np.ndarray  # [K, H, W] 0–255, probe image 0

    def record(self) -> dict:
        ls = self.similarity
        return {"name": self.name, "index": self.index, **self.redundancy.as_dict(),
                "dead_map_fraction": float(ls.dead_maps.mean()), "probe_images": int(ls.dead_maps.shape[0])}


def layer_study(name: str, index: int, recon: np.ndarray, cfg: S.SimilarityConfig) -> LayerStudy:
    ls = S.layer_similarity(recon, cfg)
    red = S.redundancy(ls, cfg)
    _, _, px = S.fingerprints(recon[:1], cfg)
    log.info("%s: %d kernels, mean similarity %.3f, %.1f %% pairs ≥ %.2f, %d groups, %d dead", name,
             red.num_kernels, red.mean_similarity, 100 * red.fraction_above, cfg.threshold, len(red.groups),
             len(red.dead_kernels))
    return LayerStudy(name, index, ls, red, px[0])


@dataclass(frozen=True)
class SimilarityStudy:
    layers: tuple[LayerStudy, ...]
    probe: dict
    agreement: dict  # our vectorized pHash vs imagehash on the last layer's maps
    seconds: float  # the similarity computation alone (the fused pHash route)
    config: S.SimilarityConfig

    def metrics(self, dataset: str) -> dict:
        return {"dataset": dataset, "config": to_dict(self.config), "probe": self.probe,
                "layers": [layer.record() for layer in self.layers],
                "imagehash_agreement": self.agreement, "seconds": round(self.seconds, 3)}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"layers": np.array([layer.name for layer in self.layers])}
        for i, layer in enumerate(self.layers):
            ls = layer.similarity
            out |= {f"mean_{i}": ls.mean, f"std_{i}": ls.std, f"count_{i}": ls.count,
                    f"dead_maps_{i}": ls.dead_maps, f"fingerprints_{i}": ls.fingerprints}
        return out


def similarity_study(rec: Reconstructions, cfg: S.SimilarityConfig) -> SimilarityStudy:
    t0 = time.perf_counter()
    cut = (lambda r: r[: cfg.max_probe_images]) if cfg.max_probe_images is not None else (lambda r: r)
    layers = tuple(layer_study(name, i, cut(r), cfg) for i, (name, r) in enumerate(zip(rec.layers, rec.recons,
                                                                                           strict=True)))
    seconds = time.perf_counter() - t0
    agreement = S.agreement_with_imagehash(rec.recons[-1][: cfg.max_probe_images], cfg, cfg.agreement_maps)
    return SimilarityStudy(layers, rec.probe, agreement, seconds, cfg)
