"""Perceptual hashes of reconstructed feature maps, Hamming similarity, redundancy (paper 1 §IV).

Pipeline for one conv layer (reconstructions ``[N_probe, K, C, H, W]``):

1. grayscale with PIL's "L" weights, each map scaled to 0–255 by its own
   min/max and (by default) rounded to integers, as ``Image.convert("L")`` does;
2. a map that is flat — its value range at most ``dead_rel_tol`` × its own
   largest magnitude — is *dead* (a kernel that did not fire for that image:
   its deconvnet reconstruction is all zeros) and gets no fingerprint; dead
   maps are reported, never counted as duplicates. The test looks at the map
   alone, so a map's status does not depend on the other maps of the batch;
3. resize to 32×32 with PIL's Lanczos filter, the 2-D DCT-II with
   ``scipy.fftpack.dct`` along axis 0 then axis 1 (imagehash's calls, run on
   the whole batch), keep the 8×8 low-frequency block, threshold it into 64 bits;
4. similarity = 1 − Hamming/64 between every pair of kernels, per probe image,
   averaged over the images where both maps are alive (with the std).

Thresholds (``PhashMethod``):
- ``mean`` — the paper ("the average value is calculated"), read as the
  hackerfactor pHash it follows: the 8×8 block (DC included, so 64 bits)
  compared with the mean of its 63 AC coefficients (the DC term is left out of
  the mean because it dwarfs the others and would push every bit to 0);
- ``median`` — ``imagehash.phash``: the 8×8 block compared with its median;
- ``simple`` — ``imagehash.phash_simple``: a 1-D DCT along rows only, columns
  1–8 (DC column dropped), compared with their mean.

With ``quantize`` (the default) every step is the one imagehash takes on the
uint8 image of the map: the resize is PIL's 8-bit fixed-point resampling
(integer weights, rounded and clipped to uint8 after each pass), reproduced
exactly with float64 matrix products of integers, and the DCT is scipy's own,
so ``median`` and ``simple`` equal imagehash bit for bit for any map size,
including maps whose exact DCT has zero coefficients (stripes, symmetric and
constant images), where any other DCT route leaves ±1e-12 of rounding noise
that flips bits. Without ``quantize`` the resize uses PIL's Lanczos weights in
float64 and nothing is rounded.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.fftpack
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from cnnvis import DataError
from cnnvis.config import opt

log = logging.getLogger(__name__)

METHODS = ("mean", "median", "simple")
# PIL's ITU-R 601-2 luma transform for convert("L"): L = R*299/1000 + G*587/1000 + B*114/1000.
LUMA = np.array([0.299, 0.587, 0.114])
CHUNK = 256  # maps per batch: BLAS and pocketfft run at speed, the ~2 MB buffers stay in cache
# PIL's 8-bit resampling (Resample.c): weights in fixed point with 22 fractional bits, so that
# 255 × the weights' absolute sum fits an int32 accumulator.
PIL_PRECISION_BITS = 22


@dataclass(frozen=True)
class SimilarityConfig:
    """Section ``similarity`` of params.yaml."""

    method: str = opt("mean", choices=METHODS)  # mean = the paper; median = imagehash.phash; simple = phash_simple
    hash_size: int = opt(8, ge=2)  # fingerprint = hash_size² bits (64)
    highfreq_factor: int = opt(4, ge=1)  # maps are resized to hash_size·highfreq_factor (32 px)
    quantize: bool = opt(True)  # round the 0–255 map to integers as PIL's "L" conversion does
    dead_rel_tol: float = opt(1e-3, ge=0.0, lt=1.0)  # map dead if its range ≤ tol × its own largest |value|
    dead_kernel_fraction: float = opt(0.9, gt=0.0, le=1.0)  # kernel dead if dead in ≥ this share of probe images
    threshold: float = opt(0.9, gt=0.0, le=1.0)  # near-duplicate: mean similarity ≥ this (Hamming ≤ 6 of 64)
    max_probe_images: int | None = opt(None, ge=1)  # use only the first n probe images
    agreement_maps: int = opt(256, ge=0)  # maps re-hashed through imagehash to report agreement (0 = skip)

    @property
    def bits(self) -> int:
        return self.hash_size * self.hash_size


# --------------------------------------------------------------------------- fingerprints


def to_gray(maps: np.ndarray) -> np.ndarray:
    """[..., C, H, W] → [..., H, W] float32 with PIL's "L" weights (C = 1 or 3)."""
    maps = np.asarray(maps)
    c = maps.shape[-3]
    if c == 1:
        return maps[..., 0, :, :].astype(np.float32, copy=False)
    if c == 3:
        return np.einsum("...chw,c->...hw", maps.astype(np.float32, copy=False), LUMA.astype(np.float32))
    raise DataError(f"reconstructions have {c} channels; expected 1 (grayscale) or 3 (RGB)")


def _ranges(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-map min and max of [..., H, W] (NaN if the map holds a NaN)."""
    flat = gray.reshape(*gray.shape[:-2], -1)
    return flat.min(-1), flat.max(-1)


def _check_finite(lo: np.ndarray, hi: np.ndarray, what: str = "maps") -> None:
    """Raise DataError naming how many maps (and the first one's index) hold NaN or inf, from their min/max [...]."""
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    if bad.any():
        first = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
        where = ", ".join(str(int(i)) for i in first)
        raise DataError(f"{int(bad.sum())} of {bad.size} {what} contain NaN or inf (the first at index [{where}]); "
                        "a fingerprint of such a map is meaningless")


def dead_mask(lo: np.ndarray, hi: np.ndarray, dead_rel_tol: float) -> np.ndarray:
    """A map is dead when it is flat on its own scale: its value range is ≤ ``dead_rel_tol`` × its
    largest magnitude max(|lo|, |hi|) — all zeros, a constant, or a constant with rounding noise
    (float16 rounds to within 4.9e-4 relative). Each map is judged alone, whatever else is in the batch."""
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    return hi64 - lo64 <= dead_rel_tol * np.maximum(np.abs(lo64), np.abs(hi64))


def scale_to_255(gray: np.ndarray, *, dead_rel_tol: float, quantize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Min-max scale each map [..., H, W] to 0–255 (float64; dead maps all 0); also the dead mask [...]."""
    gray = np.asarray(gray, dtype=np.float32)
    lo, hi = _ranges(gray)
    _check_finite(lo, hi)
    dead = dead_mask(lo, hi, dead_rel_tol)
    return _scale(gray, lo, hi, dead, quantize), dead


def _scale(gray: np.ndarray, lo: np.ndarray, hi: np.ndarray, dead: np.ndarray, quantize: bool,
           out: np.ndarray | None = None) -> np.ndarray:
    """(gray − lo) · 255/(hi − lo) per map, float64 (the DCT's precision, as imagehash's scipy route)."""
    gain = np.where(dead, 0.0, 255.0 / np.where(dead, 1.0, hi.astype(np.float64) - lo))
    if out is None:
        out = np.empty(gray.shape, dtype=np.float64)
    np.subtract(gray, lo[..., None, None], out=out)
    out *= gain[..., None, None]
    if quantize:
        np.rint(out, out=out)  # PIL's convert("L") rounds to the nearest integer
    return out


def _lanczos3(x: float) -> float:
    """PIL's Lanczos kernel: sinc(x)·sinc(x/3) on [−3, 3), with PIL's operations in PIL's order."""
    if not -3.0 <= x < 3.0:
        return 0.0
    return _sinc(x) * _sinc(x / 3)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x  # libm's sin, as PIL's C code (numpy's vectorized sin may differ in the last bit)


@functools.lru_cache(maxsize=32)
def lanczos_matrix(n_in: int, n_out: int) -> np.ndarray:
    """R [n_out, n_in] (read-only) with R @ x = PIL's Lanczos resize of a 1-D signal x in float mode "F"
    (PIL rounds that mode's output to float32; R keeps PIL's float64 weights).

    PIL resamples separably, horizontally then vertically; each output sample is the weighted
    sum of the inputs within 3·max(1, n_in/n_out) of its centre, the weights normalized to sum 1.
    """
    r = np.zeros((n_out, n_in))
    if n_in == n_out:  # PIL returns a copy for an unchanged size
        np.fill_diagonal(r, 1.0)
    else:
        scale = n_in / n_out
        filterscale = max(scale, 1.0)
        support, inv = 3.0 * filterscale, 1.0 / filterscale
        for i in range(n_out):
            centre = (i + 0.5) * scale
            first = max(int(centre - support + 0.5), 0)  # int() truncates toward zero, as C's cast
            stop = min(int(centre + support + 0.5), n_in)
            w = [_lanczos3((j - centre + 0.5) * inv) for j in range(first, stop)]
            total = 0.0
            for v in w:  # left to right, as PIL sums them
                total += v
            r[i, first:stop] = [v / total for v in w] if total != 0.0 else w
    r.flags.writeable = False
    return r


@functools.lru_cache(maxsize=32)
def _pil_8bit_weights(n_in: int, n_out: int) -> np.ndarray:
    """PIL's weights for mode "L" [n_out, n_in] (read-only): the float weights rounded half away from
    zero to multiples of 2^-22, the integers PIL's fixed point holds, divided by 2^22."""
    k = lanczos_matrix(n_in, n_out) * float(1 << PIL_PRECISION_BITS)
    k = np.trunc(k + np.where(k < 0, -0.5, 0.5)) / float(1 << PIL_PRECISION_BITS)
    k.flags.writeable = False
    return k


def _to_u8(acc: np.ndarray) -> np.ndarray:
    """PIL's 8-bit output of its accumulator, in place: (Σ pixel·weight + 2^21) >> 22 clipped to 0–255,
    here with the weights already divided by 2^22."""
    acc += 0.5
    np.floor(acc, out=acc)
    return np.clip(acc, 0.0, 255.0, out=acc)


class _ChunkHasher:
    """Hashes chunks of up to ``chunk`` maps [n, H, W] (float64, 0–255) into bits [n, hash_size²],
    reusing its buffers: fresh multi-megabyte arrays for every chunk cost more in page faults
    than the arithmetic.

    Resize: PIL resizes horizontally, then vertically, skipping a pass whose size does not change.
    ``quantized``: the maps hold integers 0–255 and the resize is PIL's of that uint8 ("L") image,
    rounded after each pass as PIL does. Every product and partial sum is then a multiple of
    2^-22 below 2^10, exact in float64, so the BLAS summation order changes nothing.
    DCT: imagehash's ``scipy.fftpack.dct`` calls on the batch. Every 1-D transform is pocketfft's
    on the same numbers, so batching changes no bit (checked by the tests); the second pass of
    phash is needed only for the first hash_size rows.
    """

    def __init__(self, h: int, w: int, method: str, hash_size: int, highfreq_factor: int, quantized: bool,
                 chunk: int) -> None:
        side = hash_size * highfreq_factor
        rows = hash_size if method == "simple" else side  # output rows y that the DCT reads
        weights = _pil_8bit_weights if quantized else lanczos_matrix
        self.h, self.w, self.side, self.rows = h, w, side, rows
        self.method, self.hash_size, self.quantized = method, hash_size, quantized
        self.horizontal = weights(w, side)  # [side, W]
        self.vertical_t = weights(h, side)[:rows].T  # [H, rows]
        # transposed layout [n, x, y]: the vertical pass is one GEMM, the image columns contiguous
        self.wide = np.empty((chunk, side, h))
        self.small = np.empty((chunk, side, rows))
        self.low = np.empty((chunk, side, hash_size)) if method != "simple" else None

    def resized(self, x: np.ndarray) -> np.ndarray:
        """Maps [n, H, W] → their resize, transposed [n, side (x), rows (y)] (a view of a buffer)."""
        n, side, rows = len(x), self.side, self.rows
        wide, small = self.wide[:n], self.small[:n]
        if self.w != side:
            np.matmul(self.horizontal, x.transpose(0, 2, 1), out=wide)
            if self.quantized:
                _to_u8(wide)
        else:
            np.copyto(wide, x.transpose(0, 2, 1))
        if self.h != side:
            np.matmul(wide.reshape(n * side, self.h), self.vertical_t, out=small.reshape(n * side, rows))
            if self.quantized:
                _to_u8(small)
        else:
            np.copyto(small, wide[:, :, :rows])
        return small

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, hs = len(x), self.hash_size
        small = self.resized(x)
        if self.method == "simple":  # phash_simple: dct(pixels) along axis 1, rows < hs, columns 1..hs
            coef = scipy.fftpack.dct(small, axis=1, overwrite_x=True)[:, 1 : hs + 1]  # [n, u, y]
            return _threshold(coef.transpose(0, 2, 1), self.method)
        # phash: dct(dct(pixels, axis=0), axis=1)[:hs, :hs]
        cols = scipy.fftpack.dct(small, axis=2, overwrite_x=True)  # [n, x, v]
        low = self.low[:n]
        np.copyto(low, cols[:, :, :hs])
        block = scipy.fftpack.dct(low, axis=1, overwrite_x=True)[:, :hs]  # [n, u, v]
        return _threshold(block.transpose(0, 2, 1), self.method)  # [n, v, u]: imagehash's dct[v, u]


def _threshold(block: np.ndarray, method: str) -> np.ndarray:
    """DCT coefficients [n, hash_size, hash_size] (each map's ``dctlowfreq`` in imagehash) → bits [n, hash_size²].

    Each threshold is computed as imagehash's numpy call computes it, so it rounds alike: a median
    is (a + b)/2 of the two middle values whatever finds them; a mean is numpy's pairwise sum of
    the row-major coefficients (the layout of imagehash's 2-D view, checked by the tests).
    """
    n, b = len(block), block.shape[1] * block.shape[2]
    flat = np.ascontiguousarray(block).reshape(n, b)
    if method == "median":
        srt = np.sort(flat, axis=1)  # faster than np.partition here (numpy's SIMD sort)
        thr = (srt[:, (b - 1) // 2] + srt[:, b // 2]) * 0.5
    elif method == "simple":
        thr = flat.mean(1)
    else:  # the mean of the AC coefficients (hackerfactor); the DC bit stays in the hash
        thr = flat[:, 1:].mean(1)
    return flat > thr[:, None]


def phash_bits(pixels: np.ndarray, method: str = "mean", *, hash_size: int = 8, highfreq_factor: int = 4,
               chunk: int = CHUNK, quantize: bool = True) -> np.ndarray:
    """Fingerprint bits of grayscale maps [..., H, W] with values in 0–255 → bool [..., hash_size²].

    ``quantize``: the maps are hashed as the uint8 images PIL would hold (rounded to the nearest
    integer, clipped to 0–255), bit for bit as imagehash does; otherwise as floats, unrounded.
    Bit order is imagehash's (``ImageHash.hash.flatten()``, row-major).
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r}; allowed: {', '.join(METHODS)}")
    pixels = np.asarray(pixels)
    lead, (h, w) = pixels.shape[:-2], pixels.shape[-2:]
    flat = np.ascontiguousarray(pixels, dtype=np.float64).reshape(-1, h, w)
    _check_finite(*_ranges(flat), what="images")
    if quantize:
        flat = np.clip(np.rint(flat), 0.0, 255.0)
    hasher = _ChunkHasher(h, w, method, hash_size, highfreq_factor, quantize, max(1, min(chunk, len(flat))))
    out = np.empty((len(flat), hash_size * hash_size), dtype=bool)
    for s in range(0, len(flat), chunk):
        out[s : s + chunk] = hasher(flat[s : s + chunk])
    return out.reshape(*lead, hash_size * hash_size)


def hash_maps(maps: np.ndarray, cfg: SimilarityConfig, *, chunk: int = CHUNK,
              return_pixels: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Raw maps [..., C, H, W] → (bits [..., B] bool, dead [...], 0–255 pixels [..., H, W] or None).

    Chunked so that 10⁵ maps never materialize a float64 copy; dead maps get all-zero bits.
    Raises DataError if a map holds NaN or inf.
    """
    gray = to_gray(maps)
    lead, (h, w) = gray.shape[:-2], gray.shape[-2:]
    lo, hi = _ranges(gray)
    _check_finite(lo, hi)
    dead = dead_mask(lo, hi, cfg.dead_rel_tol)
    g, lo_f, hi_f, dead_f = gray.reshape(-1, h, w), lo.reshape(-1), hi.reshape(-1), dead.reshape(-1)
    chunk = max(1, min(chunk, len(g)))
    hasher = _ChunkHasher(h, w, cfg.method, cfg.hash_size, cfg.highfreq_factor, cfg.quantize, chunk)
    bits = np.empty((len(g), cfg.bits), dtype=bool)
    pixels = np.empty((len(g), h, w), dtype=np.float64) if return_pixels else None
    buf = None if return_pixels else np.empty((chunk, h, w))
    for s in range(0, len(g), chunk):
        sl = slice(s, s + chunk)
        px = _scale(g[sl], lo_f[sl], hi_f[sl], dead_f[sl], cfg.quantize,
                    out=pixels[sl] if pixels is not None else buf[: len(g[sl])])
        bits[sl] = hasher(px)
    bits[dead_f] = False
    return (bits.reshape(*lead, cfg.bits), dead,
            None if pixels is None else pixels.reshape(*lead, h, w))


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool [..., 64] → uint64 [...]; bit 0 is the most significant (int(str(imagehash), 16))."""
    if bits.shape[-1] != 64:
        raise ValueError(f"pack_bits needs 64-bit fingerprints, got {bits.shape[-1]} bits")
    packed = np.packbits(bits, axis=-1)  # [..., 8] uint8, big-endian bit order
    return np.ascontiguousarray(packed).view(">u8")[..., 0].astype(np.uint64)


# --------------------------------------------------------------------------- Hamming

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 → uint8 (numpy's bitwise_count, else a byte lookup table)."""
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8).reshape(*x.shape, 8)].sum(-1, dtype=np.uint8)


def pairwise_hamming(fp: np.ndarray, other: np.ndarray | None = None, *, block: int = 64) -> np.ndarray:
    """Hamming distances between fingerprints: uint64 [..., K] (× [..., L]) → uint8 [..., K, L].

    XOR + popcount, ``block`` rows at a time into preallocated buffers (the
    XOR buffer stays in cache; no temporaries of the full K×L size).
    """
    a = np.asarray(fp, dtype=np.uint64)
    b = a if other is None else np.asarray(other, dtype=np.uint64)
    lead = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    a = np.broadcast_to(a, (*lead, a.shape[-1]))
    b = np.broadcast_to(b, (*lead, b.shape[-1]))
    k, m = a.shape[-1], b.shape[-1]
    out = np.empty((*lead, k, m), dtype=np.uint8)
    buf = np.empty((*lead, min(block, k), m), dtype=np.uint64)
    for s in range(0, k, block):
        e = min(s + block, k)
        x = buf[..., : e - s, :]
        np.bitwise_xor(a[..., s:e, None], b[..., None, :], out=x)
        if hasattr(np, "bitwise_count"):
            np.bitwise_count(x, out=out[..., s:e, :])
        else:
            out[..., s:e, :] = popcount(x)
    return out


# --------------------------------------------------------------------------- one layer


@dataclass(frozen=True)
class LayerSimilarity:
    """Similarity of the K kernels of one layer, over N probe images."""

    mean: np.ndarray  # [K, K] mean similarity over the images where both maps are alive (NaN if none)
    std: np.ndarray  # [K, K] its std across those images
    count: np.ndarray  # [K, K] number of images where both maps are alive
    dead_maps: np.ndarray  # [N, K] bool
    fingerprints: np.ndarray  # [N, K] uint64 (0 where dead)

    @property
    def num_kernels(self) -> int:
        return self.mean.shape[0]


def fingerprints(recon: np.ndarray, cfg: SimilarityConfig, *,
                 return_pixels: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reconstructions [N, K, C, H, W] → (bits [N, K, B] bool, dead [N, K], pixels [N, K, H, W] 0–255 or None).

    ``return_pixels=False`` keeps ``hash_maps`` chunked (no float64 copy of every map).
    Raises DataError if a map holds NaN or inf, naming how many and the first one's [n, k]."""
    recon = np.asarray(recon)
    if recon.ndim != 5:
        raise DataError(f"reconstructions: expected [N_probe, K, C, H, W], got shape {recon.shape}")
    return hash_maps(recon, cfg, return_pixels=return_pixels)


def layer_similarity(recon: np.ndarray, cfg: SimilarityConfig) -> LayerSimilarity:
    """pHash similarity matrix of one layer's reconstructions [N, K, C, H, W]."""
    if cfg.max_probe_images is not None:
        recon = recon[: cfg.max_probe_images]
    bits, dead, _ = fingerprints(recon, cfg, return_pixels=False)
    nbits = bits.shape[-1]
    if nbits == 64:
        fp = pack_bits(bits)
        ham = pairwise_hamming(fp).astype(np.float64)  # [N, K, K]
    else:  # other hash sizes: count differing bits directly
        fp = np.zeros(bits.shape[:2], dtype=np.uint64)
        ham = (bits[:, :, None, :] != bits[:, None, :, :]).sum(-1).astype(np.float64)
    sim = 1.0 - ham / nbits
    alive = ~dead
    both = alive[:, :, None] & alive[:, None, :]  # [N, K, K]
    count = both.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(both, sim, 0.0).sum(0) / count
        var = np.where(both, (sim - mean) ** 2, 0.0).sum(0) / count
    mean = np.where(count > 0, mean, np.nan)
    std = np.where(count > 0, np.sqrt(var), np.nan)
    return LayerSimilarity(mean=mean, std=std, count=count, dead_maps=dead, fingerprints=fp)


# --------------------------------------------------------------------------- redundancy


@dataclass(frozen=True)
class Redundancy:
    """What the adjust rule reads about one layer."""

    num_kernels: int
    dead_kernels: tuple[int, ...]
    mean_similarity: float  # mean over alive pairs i < j of the image-averaged similarity
    pair_std: float  # std of that over pairs
    image_spread: float  # mean over pairs of the std across probe images
    fraction_above: float  # share of alive pairs with mean similarity ≥ threshold
    groups: tuple[tuple[int, ...], ...]  # near-duplicate groups (size ≥ 2), largest first
    distinct: int  # connected components among alive kernels (a singleton counts as one)
    threshold: float

    def as_dict(self) -> dict:
        return {"num_kernels": self.num_kernels, "dead_kernels": list(self.dead_kernels),
                "alive_kernels": self.num_kernels - len(self.dead_kernels),
                "mean_similarity": self.mean_similarity, "pair_std": self.pair_std,
                "image_spread": self.image_spread, "fraction_above": self.fraction_above,
                "threshold": self.threshold, "distinct": self.distinct,
                "duplicate_groups": [list(g) for g in self.groups]}


def dead_kernels(ls: LayerSimilarity, fraction: float) -> np.ndarray:
    """bool [K]: kernels whose map is dead in at least ``fraction`` of the probe images."""
    return ls.dead_maps.mean(0) >= fraction


def duplicate_groups(mean: np.ndarray, alive: np.ndarray, threshold: float) -> tuple[list[list[int]], int]:
    """Connected components of the graph "mean similarity ≥ threshold" among alive kernels.

    Returns (groups of size ≥ 2 sorted largest first, number of components incl. singletons).
    """
    idx = np.flatnonzero(alive)
    if len(idx) == 0:
        return [], 0
    sub = np.nan_to_num(mean[np.ix_(idx, idx)], nan=0.0)
    adj = sub >= threshold
    np.fill_diagonal(adj, False)
    n, labels = connected_components(csr_matrix(adj), directed=False)
    groups = [sorted(idx[labels == c].tolist()) for c in range(n)]
    groups = [g for g in groups if len(g) >= 2]
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups, int(n)


def redundancy(ls: LayerSimilarity, cfg: SimilarityConfig) -> Redundancy:
    """Summary of one layer: mean similarity, share of near-duplicate pairs, groups, dead kernels."""
    dead = dead_kernels(ls, cfg.dead_kernel_fraction)
    alive = ~dead
    iu = np.triu_indices(ls.num_kernels, k=1)
    pair_ok = alive[iu[0]] & alive[iu[1]] & (ls.count[iu] > 0)
    vals = ls.mean[iu][pair_ok]
    spread = ls.std[iu][pair_ok]
    groups, distinct = duplicate_groups(ls.mean, alive, cfg.threshold)
    nan = float("nan")
    return Redundancy(
        num_kernels=ls.num_kernels,
        dead_kernels=tuple(np.flatnonzero(dead).tolist()),
        mean_similarity=float(vals.mean()) if len(vals) else nan,
        pair_std=float(vals.std()) if len(vals) else nan,
        image_spread=float(spread.mean()) if len(spread) else nan,
        fraction_above=float((vals >= cfg.threshold).mean()) if len(vals) else nan,
        groups=tuple(tuple(g) for g in groups),
        distinct=distinct,
        threshold=cfg.threshold,
    )


# --------------------------------------------------------------------------- parity with imagehash


def imagehash_bits(pixels: np.ndarray, method: str, *, hash_size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """imagehash's per-image route on uint8-able maps [M, H, W] (0–255) → bool [M, hash_size²].

    ``median`` → ``imagehash.phash``, ``simple`` → ``imagehash.phash_simple``;
    ``mean`` has no imagehash function (it is computed from PIL's resized
    pixels with scipy's DCT, exactly imagehash.phash with the paper's threshold).
    """
    import imagehash
    from PIL import Image

    side = hash_size * highfreq_factor
    out = []
    for p in np.asarray(pixels):
        img = Image.fromarray(np.clip(np.rint(p), 0, 255).astype(np.uint8), mode="L")
        if method == "median":
            h = imagehash.phash(img, hash_size=hash_size, highfreq_factor=highfreq_factor).hash
        elif method == "simple":
            h = imagehash.phash_simple(img, hash_size=hash_size, highfreq_factor=highfreq_factor).hash
        else:
            small = np.asarray(img.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64)
            block = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=0), axis=1)[:hash_size, :hash_size]
            h = block > block.flatten()[1:].mean()
        out.append(np.asarray(h, dtype=bool).flatten())
    return np.stack(out) if out else np.zeros((0, hash_size * hash_size), dtype=bool)


def agreement_with_imagehash(recon: np.ndarray, cfg: SimilarityConfig, max_maps: int, seed: int = 0) -> dict:
    """Our fused route vs imagehash's per-image route on the same raw float maps.

    Up to ``max_maps`` alive maps (a seeded sample) are hashed both ways.
    Returns the share of identical fingerprints, of agreeing bits, and the mean
    Hamming distance between the two fingerprints of one map.
    """
    bits, dead, pixels = fingerprints(recon, cfg)
    b = bits.reshape(-1, bits.shape[-1])[~dead.reshape(-1)]
    p = pixels.reshape(-1, *pixels.shape[-2:])[~dead.reshape(-1)]
    if len(b) == 0 or max_maps == 0:
        return {"maps": 0}
    pick = np.random.default_rng(seed).permutation(len(b))[:max_maps]
    ref = imagehash_bits(p[pick], cfg.method, hash_size=cfg.hash_size, highfreq_factor=cfg.highfreq_factor)
    diff = (b[pick] != ref).sum(1)
    return {"maps": int(len(pick)), "identical_fraction": float((diff == 0).mean()),
            "bit_agreement": float(1.0 - diff.mean() / b.shape[-1]), "mean_hamming": float(diff.mean()),
            "max_hamming": int(diff.max()), "method": cfg.method}


def redundancy_from_dict(d: dict) -> Redundancy:
    """Inverse of ``Redundancy.as_dict`` (the adjust stage reads similarity.json)."""
    nan = float("nan")
    return Redundancy(num_kernels=int(d["num_kernels"]), dead_kernels=tuple(d["dead_kernels"]),
                      mean_similarity=nan if d["mean_similarity"] is None else float(d["mean_similarity"]),
                      pair_std=nan if d["pair_std"] is None else float(d["pair_std"]),
                      image_spread=nan if d["image_spread"] is None else float(d["image_spread"]),
                      fraction_above=nan if d["fraction_above"] is None else float(d["fraction_above"]),
                      groups=tuple(tuple(g) for g in d["duplicate_groups"]), distinct=int(d["distinct"]),
                      threshold=float(d["threshold"]))
