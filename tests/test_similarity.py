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


@pytest.mark.parametrize("kind", ["noise", "smooth"])
def test_bits_equal_imagehash_on_identical_32px_inputs(kind):
    rng = np.random.default_rng(1)
    px = rng.integers(0, 256, (200, 32, 32)).astype(np.float64) if kind == "noise" else to_255(smooth_maps(200, 32))
    for method, fn in (("median", imagehash.phash), ("simple", imagehash.phash_simple)):
        ours = S.phash_bits(px, method)
        ref = np.stack([fn(Image.fromarray(p.astype(np.uint8), mode="L")).hash.flatten() for p in px])
        assert np.array_equal(ours, ref), method
        packed = S.pack_bits(ours)
        hexes = [int(str(fn(Image.fromarray(p.astype(np.uint8), mode="L"))), 16) for p in px[:20]]
        assert packed[:20].tolist() == hexes


def test_mean_method_is_the_hackerfactor_phash():
    """'mean' = 2-D DCT of the 32×32 pixels (scipy, as imagehash), 8×8 block, compared with the mean of its AC terms."""
    px = to_255(smooth_maps(50, 32, seed=3))
    ours = S.phash_bits(px, "mean")
    for p, bits in zip(px, ours, strict=True):
        block = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=0), axis=1)[:8, :8]
        assert np.array_equal(bits, (block > block.flatten()[1:].mean()).flatten())
    assert np.array_equal(ours, S.imagehash_bits(px, "mean"))


def test_matrices_are_the_libraries_operators():
    x = np.random.default_rng(0).normal(size=(32, 5))
    assert np.allclose(S.dct_matrix(32) @ x, scipy.fftpack.dct(x, axis=0))
    img = np.random.default_rng(1).random((28, 28)).astype(np.float32) * 255
    pil = np.asarray(Image.fromarray(img, mode="F").resize((32, 32), Image.Resampling.LANCZOS))
    r = S.lanczos_matrix(28, 32)
    assert np.allclose(r @ img @ r.T, pil, atol=1e-3)


def test_raw_float_maps_agree_with_imagehash_route():
    recon = smooth_maps(120, seed=5).reshape(4, 30, 1, 28, 28).astype(np.float16)
    for method in S.METHODS:
        agree = S.agreement_with_imagehash(recon, S.SimilarityConfig(method=method), 120)
        assert agree["maps"] == 120
        assert agree["bit_agreement"] > 0.99, agree  # the fused route skips PIL's uint8 rounding after the resize
        assert agree["max_hamming"] <= 6, agree


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
