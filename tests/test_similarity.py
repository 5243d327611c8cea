"""Perceptual hash, Hamming similarity and redundancy (cnnvis.similarity) and the similarity stage."""

from __future__ import annotations

import dataclasses
import json

import imagehash
import numpy as np
import pytest
import scipy.fftpack
from PIL import Image
from scipy.ndimage import gaussian_filter

from cnnvis import DataError
from cnnvis import similarity as S


def smooth_maps(n: int, size: int = 28, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.normal(size=(n, size, size)), (0, sigma, sigma))


def to_255(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=(-2, -1), keepdims=True)
    hi = x.max(axis=(-2, -1), keepdims=True)
    return np.rint((x - lo) / (hi - lo) * 255)


# --------------------------------------------------------------------------- parity with imagehash

KINDS = ("noise", "smooth", "ramp_x", "ramp_y", "stripes_x", "stripes_y", "mirror_x", "mirror_xy", "checkerboard",
         "constant", "square")
SIZES = ((32, 32), (28, 28), (64, 64), (20, 45))  # (H, W): no resize, up, down, neither square nor one direction


def images(kind: str, h: int, w: int, n: int = 12, seed: int = 0) -> np.ndarray:
    """n uint8 images [n, H, W] of one kind, drawn at random within the kind."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        if kind == "noise":
            a = rng.integers(0, 256, (h, w))
        elif kind == "smooth":
            a = to_255(gaussian_filter(rng.normal(size=(h, w)), rng.uniform(1.0, 4.0)))
        elif kind in ("ramp_x", "ramp_y"):  # constant along the other axis: DCT rows/columns exactly 0
            a = np.rint((x if kind == "ramp_x" else y) * rng.uniform(1.0, 255 / max(h, w))) + 0 * (x + y)
        elif kind in ("stripes_x", "stripes_y"):
            period, lo, hi = rng.integers(1, 6), rng.integers(0, 128), rng.integers(128, 256)
            a = np.where(((x if kind == "stripes_x" else y) // period) % 2 == 0, lo, hi)
        elif kind == "mirror_x":  # left-right symmetric: odd horizontal frequencies exactly 0
            half = rng.integers(0, 256, (h, (w + 1) // 2))
            a = np.concatenate([half, half[:, ::-1][:, w % 2 :]], axis=1)
        elif kind == "mirror_xy":
            q = rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2))
            a = np.concatenate([q, q[:, ::-1][:, w % 2 :]], axis=1)
            a = np.concatenate([a, a[::-1][h % 2 :]], axis=0)
        elif kind == "checkerboard":
            period = rng.integers(1, 6)
            a = ((x // period + y // period) % 2) * 255
        elif kind == "constant":  # every AC coefficient exactly 0
            a = np.full((h, w), rng.integers(0, 256))
        else:  # one bright square on black
            side = rng.integers(1, min(h, w) // 2 + 1)
            i, j = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            a = np.zeros((h, w))
            a[i : i + side, j : j + side] = 255
        out.append(a)
    return np.stack(out).astype(np.uint8)


def imagehash_reference(u8: np.ndarray, fn, **kw) -> np.ndarray:
    return np.stack([fn(Image.fromarray(m, mode="L"), **kw).hash.flatten() for m in u8])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", KINDS)
def test_bits_equal_imagehash(kind, size):
    """Every bit equals imagehash's, the ones from zero DCT coefficients included (ragged chunks of 5)."""
    u8 = images(kind, *size)
    px = u8.astype(np.float64)
    for method, fn in (("median", imagehash.phash), ("simple", imagehash.phash_simple)):
        ours = S.phash_bits(px, method, chunk=5)
        assert np.array_equal(ours, imagehash_reference(u8, fn)), method
        assert S.pack_bits(ours).tolist() == [int(str(fn(Image.fromarray(m, mode="L"))), 16) for m in u8]
    assert np.array_equal(S.phash_bits(px, "mean", chunk=5), S.imagehash_bits(px, "mean"))


@pytest.mark.parametrize(("hash_size", "highfreq_factor"), [(4, 4), (5, 4), (8, 2), (16, 4)])
def test_bits_equal_imagehash_at_other_hash_sizes(hash_size, highfreq_factor):
    kw = {"hash_size": hash_size, "highfreq_factor": highfreq_factor}
    for kind in ("noise", "stripes_x", "mirror_xy", "constant"):
        u8 = images(kind, 28, 28, n=7, seed=1)
        for method, fn in (("median", imagehash.phash), ("simple", imagehash.phash_simple)):
            ours = S.phash_bits(u8.astype(np.float64), method, chunk=3, **kw)
            assert np.array_equal(ours, imagehash_reference(u8, fn, **kw)), (kind, method)
        assert np.array_equal(S.phash_bits(u8, "mean", **kw), S.imagehash_bits(u8, "mean", **kw)), kind


def test_a_ramp_hashes_as_imagehash():
    """A horizontal ramp: all but the first row of the DCT block is exactly 0 (one bit set in imagehash)."""
    ramp = np.repeat(np.arange(0, 256, 8, dtype=np.uint8)[None], 32, 0)
    want = int(str(imagehash.phash(Image.fromarray(ramp, mode="L"))), 16)
    assert want == 0x8000000000000000
    assert int(S.pack_bits(S.phash_bits(ramp, "median"))) == want


def test_mean_method_is_the_hackerfactor_phash():
    """'mean' = 2-D DCT of the 32×32 pixels (scipy, as imagehash), 8×8 block, compared with the mean of its AC terms."""
    px = np.concatenate([to_255(smooth_maps(50, 32, seed=3)), images("mirror_x", 32, 32), images("constant", 32, 32)])
    ours = S.phash_bits(px, "mean")
    for p, bits in zip(px, ours, strict=True):
        block = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=0), axis=1)[:8, :8]
        assert np.array_equal(bits, (block > block.flatten()[1:].mean()).flatten())


def test_thresholds_round_as_imagehash_numpy_calls():
    """±1e17 among N(0, 1) coefficients: which small terms the sum absorbs depends on its order, so the mean (and
    the bits) are imagehash's only if the order is numpy's on imagehash's layout."""
    rng = np.random.default_rng(0)
    dct = rng.normal(size=(300, 8, 32))
    for d in dct:
        i, j = np.unravel_index(rng.choice(64, 2, replace=False), (8, 8))
        d[i, 1 + j] = (1e17, -1e17)
    low = dct[:, :, 1:9]  # phash_simple's dctlowfreq, a view of the same layout
    want = np.stack([(d > d.mean()).flatten() for d in low])
    assert np.array_equal(S._threshold(low, "simple"), want)
    sequential = np.stack([(d > np.cumsum(d.flatten())[-1] / 64).flatten() for d in low])
    assert not np.array_equal(sequential, want)  # another summation order does flip bits here
    block = dct[:, :, :8]
    want = np.stack([(d > np.median(d)).flatten() for d in block])
    assert np.array_equal(S._threshold(block, "median"), want)


def test_resize_is_pils_exactly():
    """The batched resize = PIL's Lanczos resize of each uint8 image ("L"), pixel for pixel; float weights = mode "F"."""
    rng = np.random.default_rng(0)
    for h, w in ((28, 28), (20, 45), (64, 64), (100, 37), (7, 9), (33, 31)):
        u8 = rng.integers(0, 256, (40, h, w)).astype(np.uint8)
        hasher = S._ChunkHasher(h, w, "median", 8, 4, True, len(u8))
        ours = hasher.resized(u8.astype(np.float64)).transpose(0, 2, 1)
        pil = np.stack([np.asarray(Image.fromarray(m, mode="L").resize((32, 32), Image.Resampling.LANCZOS))
                        for m in u8])
        assert np.array_equal(ours, pil), (h, w)
        impulses = np.eye(w, dtype=np.float32)[:, None, :]  # one row image per input sample
        pil_f = np.stack([np.asarray(Image.fromarray(r, mode="F").resize((32, 1), Image.Resampling.LANCZOS))[0]
                          for r in impulses], axis=1)
        assert np.array_equal(S.lanczos_matrix(w, 32).astype(np.float32), pil_f), w
    img = rng.random((28, 28)).astype(np.float32) * 255
    pil = np.asarray(Image.fromarray(img, mode="F").resize((32, 32), Image.Resampling.LANCZOS))
    r = S.lanczos_matrix(28, 32)
    assert np.allclose(r @ img @ r.T, pil, atol=1e-3)


def test_raw_float_maps_hash_as_imagehash():
    """From raw float maps, with the default quantize, every fingerprint equals imagehash's on the map's uint8 image."""
    recon = smooth_maps(120, seed=5).reshape(4, 30, 1, 28, 28).astype(np.float16)
    for method in S.METHODS:
        agree = S.agreement_with_imagehash(recon, S.SimilarityConfig(method=method), 120)
        assert agree["maps"] == 120
        assert agree["identical_fraction"] == 1.0 and agree["max_hamming"] == 0, agree
        unrounded = S.agreement_with_imagehash(recon, S.SimilarityConfig(method=method, quantize=False), 120)
        assert unrounded["bit_agreement"] > 0.98, unrounded  # no uint8 rounding of the map and of the resize


def test_hash_is_invariant_to_gain_and_offset():
    maps = smooth_maps(10, seed=2)[:, None]
    cfg = S.SimilarityConfig()
    a, _, _ = S.hash_maps(maps, cfg)
    b, _, _ = S.hash_maps(3.0 * maps - 7.0, cfg)
    assert np.array_equal(a, b)


def test_rgb_maps_use_pil_luma():
    rgb = np.random.default_rng(0).random((2, 3, 4, 4)).astype(np.float32)
    u8 = (rgb * 255).round().astype(np.uint8)
    pil = np.stack([np.asarray(Image.fromarray(m.transpose(1, 2, 0), mode="RGB").convert("L")) for m in u8])
    assert np.abs(S.to_gray(u8.astype(np.float32)) - pil).max() <= 0.5 + 1e-4


# --------------------------------------------------------------------------- dead and non-finite maps


def test_dead_is_judged_per_map_not_against_the_brightest():
    """One map 10⁹ times brighter than the rest changes neither the others' dead flags nor their bits."""
    maps = smooth_maps(40, seed=4)[:, None].astype(np.float32)
    maps[0] *= 1e6
    maps[1:] *= 1e-3
    maps[5] = 0.0  # silent
    maps[6] = 3.0  # constant
    maps[7] = np.float16(3.0) + np.float16(np.spacing(np.float16(3.0))) * (maps[7] > 0)  # 3.0 and the next float16
    cfg = S.SimilarityConfig()
    bits, dead, _ = S.hash_maps(maps, cfg)
    assert np.flatnonzero(dead).tolist() == [5, 6, 7]
    alone = np.concatenate([S.hash_maps(m[None], cfg)[0] for m in maps])
    assert np.array_equal(bits, alone)
    recon = maps.reshape(4, 10, 1, 28, 28)  # [N, K, C, H, W]: the same maps, 10 kernels per probe image
    ls = S.layer_similarity(recon, cfg)
    assert np.array_equal(ls.dead_maps, dead.reshape(4, 10))


def test_dead_mask_is_relative_to_the_map_itself():
    lo = np.array([0.0, 5.0, -1e-9, 1000.0, -2.0])
    hi = np.array([0.0, 5.004, 1e-9, 1002.0, -2.0])  # ranges vs 1e-3 × max |value|: 0, ≤, >, >, 0
    assert S.dead_mask(lo, hi, 1e-3).tolist() == [True, True, False, False, True]


def test_non_finite_maps_are_rejected_naming_count_and_index():
    maps = smooth_maps(20, seed=1)[:, None].astype(np.float32)
    maps[7, 0, 3, 4] = np.nan
    maps[12, 0, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"2 of 20 maps contain NaN or inf \(the first at index \[7\]\)"):
        S.hash_maps(maps, S.SimilarityConfig())
    recon = recon_with(n=3, k=5).astype(np.float32)
    recon[1, 3, 0, 10, 10] = -np.inf
    with pytest.raises(DataError, match=r"1 of 15 maps .* index \[1, 3\]"):
        S.fingerprints(recon, S.SimilarityConfig())
    px = np.zeros((3, 32, 32))
    px[2, 5, 5] = np.nan
    with pytest.raises(DataError, match=r"1 of 3 images .* index \[2\]"):
        S.phash_bits(px, "median")


# --------------------------------------------------------------------------- Hamming


def test_popcount_and_pairwise_hamming_equal_naive():
    rng = np.random.default_rng(0)
    bits = rng.random((3, 70, 64)) < 0.5
    fp = S.pack_bits(bits)
    naive = (bits[:, :, None, :] != bits[:, None, :, :]).sum(-1)
    assert np.array_equal(S.pairwise_hamming(fp, block=16), naive)  # 70 rows: a ragged last block
    assert np.array_equal(S.popcount(fp), bits.sum(-1))
    x = np.array([0, 1, 2**64 - 1, 0x8000000000000001], dtype=np.uint64)
    assert S.popcount(x).tolist() == [0, 1, 64, 2]


# --------------------------------------------------------------------------- one layer


def recon_with(dup_pairs=(), dead=(), n=4, k=8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = gaussian_filter(rng.normal(size=(n, k, 28, 28)), (0, 0, 2, 2))
    for a, b in dup_pairs:
        r[:, b] = 2.0 * r[:, a] + 1.0  # same picture after min-max scaling
    for d in dead:
        r[:, d] = 0.0
    return r[:, :, None].astype(np.float16)


def test_duplicates_grouped_dead_maps_excluded():
    cfg = S.SimilarityConfig(threshold=0.95)
    ls = S.layer_similarity(recon_with(dup_pairs=[(0, 3), (3, 5)], dead=[6, 7]), cfg)
    assert ls.mean[0, 3] == 1.0 and ls.mean[3, 5] == 1.0 and ls.mean[0, 5] == 1.0
    assert np.isnan(ls.mean[6, 7]) and ls.count[6, 7] == 0  # two dead maps are not duplicates
    assert ls.dead_maps[:, 6:].all() and not ls.dead_maps[:, :6].any()
    r = S.redundancy(ls, cfg)
    assert r.dead_kernels == (6, 7)
    assert r.groups == ((0, 3, 5),)
    assert r.distinct == 4  # {0,3,5}, 1, 2, 4
    assert S.redundancy_from_dict(json.loads(json.dumps(r.as_dict()))) == r


def test_mean_and_spread_over_images():
    r = recon_with(n=2, k=3)
    r[0, 1] = r[0, 0]  # kernels 0 and 1 identical in image 0 only
    ls = S.layer_similarity(r, S.SimilarityConfig())
    bits, _, _ = S.fingerprints(r, S.SimilarityConfig())
    s1 = 1 - (bits[1, 0] != bits[1, 1]).sum() / 64
    assert ls.mean[0, 1] == pytest.approx((1.0 + s1) / 2)
    assert ls.std[0, 1] == pytest.approx(abs(1.0 - s1) / 2)
    assert np.allclose(ls.mean, ls.mean.T, equal_nan=True)


def test_a_map_dead_in_one_image_only_counts_where_alive():
    r = recon_with(n=3, k=4)
    r[1, 2] = 0.0
    ls = S.layer_similarity(r, S.SimilarityConfig())
    assert ls.count[2, 0] == 2 and ls.count[0, 1] == 3
    assert S.redundancy(ls, S.SimilarityConfig()).dead_kernels == ()  # dead in 1/3 < 0.9 of images


def test_duplicate_groups_are_connected_components():
    mean = np.full((6, 6), 0.5)
    for a, b in ((0, 1), (1, 2), (4, 5)):
        mean[a, b] = mean[b, a] = 0.95
    groups, n = S.duplicate_groups(mean, np.ones(6, bool), 0.9)
    assert groups == [[0, 1, 2], [4, 5]] and n == 3
    alive = np.array([True, False, True, True, True, True])  # a dead bridge breaks the chain
    groups, n = S.duplicate_groups(mean, alive, 0.9)
    assert groups == [[4, 5]] and n == 4


def test_bad_reconstructions_raise_one_clear_error():
    cfg = S.SimilarityConfig()
    with pytest.raises(DataError, match=r"\[N_probe, K, C, H, W\]"):
        S.layer_similarity(np.zeros((2, 3, 28, 28)), cfg)
    bad = recon_with().astype(np.float32)
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        S.layer_similarity(bad, cfg)


# --------------------------------------------------------------------------- stage


def write_params(path, **similarity):
    import yaml

    cfg = dataclasses.asdict(S.SimilarityConfig(**similarity))
    path.write_text(yaml.safe_dump({"similarity": cfg, "hardware": {"device": "cpu"}}))


def test_similarity_stage_writes_metrics_arrays_figures(tmp_path):
    from stages import similarity as stage

    npz = tmp_path / "recon.npz"
    np.savez(npz, layers=np.array(["features.conv1", "features.conv2"]), recon_0=recon_with(dup_pairs=[(0, 1)], k=8),
             recon_1=recon_with(dead=[2], k=12, seed=1), probe_labels=np.arange(4), probe_indices=np.arange(4))
    params = tmp_path / "params.yaml"
    write_params(params, threshold=0.95, agreement_maps=16)
    out = tmp_path / "out"
    stage.main(["--dataset", "synthetic", "--recon", str(npz), "--metrics", str(out / "similarity.json"),
                "--arrays", str(out / "similarity.npz"), "--figures", str(out / "figs"), "--params", str(params)])
    m = json.loads((out / "similarity.json").read_text())
    assert [layer["name"] for layer in m["layers"]] == ["features.conv1", "features.conv2"]
    assert m["layers"][0]["duplicate_groups"] == [[0, 1]]
    assert m["layers"][1]["dead_kernels"] == [2]
    assert m["imagehash_agreement"]["maps"] == 16
    names = {p.name for p in (out / "figs").iterdir()}
    assert names == {"p1_fig09.png", "p1_fig10.png", "p1_fig11a.png", "p1_fig11b.png", "p1_fig12.png"}  # each once
    z = np.load(out / "similarity.npz")
    assert z["mean_1"].shape == (12, 12) and z["fingerprints_0"].dtype == np.uint64


def test_similarity_stage_missing_key_is_one_line(tmp_path, capsys):
    from stages import similarity as stage

    npz = tmp_path / "recon.npz"
    np.savez(npz, layers=np.array(["a"]))
    params = tmp_path / "params.yaml"
    write_params(params)
    with pytest.raises(SystemExit) as e:
        stage.main(["--dataset", "x", "--recon", str(npz), "--metrics", str(tmp_path / "m.json"),
                    "--arrays", str(tmp_path / "a.npz"), "--figures", str(tmp_path / "f"), "--params", str(params)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "recon_0" in err
