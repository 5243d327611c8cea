"""Perceptual-hash throughput: cnnvis.similarity's vectorized route vs imagehash's per-image route.

    python -m benchmarks.phash [--maps 100000] [--fingerprints 8192] [--threads 1]

Prints fingerprints/s for 28×28 float maps (scale to 0–255, Lanczos resize to
32×32 and 2-D DCT fused, threshold) and pairwise Hamming comparisons/s
(uint64 XOR + popcount), each with the ratio against imagehash (PIL image per
map + ``imagehash.phash``; ``ImageHash.__sub__`` per pair). Targets (issue 4):
≥ 100k fingerprints/s and ≥ 0.5 G comparisons/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", type=int, default=100_000, help="28×28 maps to fingerprint")
    p.add_argument("--reference-maps", type=int, default=2000, help="maps for the (slow) imagehash route")
    p.add_argument("--fingerprints", type=int, default=8192, help="all-pairs Hamming among this many fingerprints")
    p.add_argument("--reference-pairs", type=int, default=200_000, help="pairs for imagehash's per-pair route")
    p.add_argument("--threads", type=int, default=1, help="BLAS/torch threads (1 = one core)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    import imagehash
    from PIL import Image

    from cnnvis import similarity as S

    cfg = S.SimilarityConfig(method="median")
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(args.maps, 1, 28, 28)).astype(np.float32)

    def ours() -> np.ndarray:
        px, _ = S.scale_to_255(S.to_gray(maps), dead_rel_tol=0.0, quantize=True)
        return S.pack_bits(S.phash_bits(px, "median"))

    ours()  # warm the cached resize/DCT matrices
    t_ours = _best(ours, args.repeat)
    fps_ours = args.maps / t_ours

    ref_px, _ = S.scale_to_255(S.to_gray(maps[: args.reference_maps]), dead_rel_tol=0.0, quantize=True)
    ref_u8 = ref_px.astype(np.uint8)

    def reference() -> list:
        return [imagehash.phash(Image.fromarray(m, mode="L")) for m in ref_u8]

    t_ref = _best(reference, 1)
    fps_ref = args.reference_maps / t_ref

    fp = S.pack_bits(rng.random((args.fingerprints, 64)) < 0.5)

    def hamming_all() -> int:
        total = 0
        for s in range(0, len(fp), 512):  # row blocks keep the XOR buffer in cache
            total += int(S.popcount(fp[s : s + 512, None] ^ fp[None, :]).sum(dtype=np.int64))
        return total

    t_ham = _best(hamming_all, args.repeat)
    cmp_ours = args.fingerprints**2 / t_ham  # every entry of the K×K matrix is computed

    hashes = [imagehash.ImageHash(b.reshape(8, 8)) for b in rng.random((1000, 64)) < 0.5]
    pairs = rng.integers(0, len(hashes), size=(args.reference_pairs, 2))

    def hamming_ref() -> int:
        return sum(hashes[i] - hashes[j] for i, j in pairs)

    t_href = _best(hamming_ref, 1)
    cmp_ref = args.reference_pairs / t_href

    # same bits on identical 32×32 inputs, as the test asserts
    px32 = rng.integers(0, 256, size=(256, 32, 32)).astype(np.float64)
    exact = bool((S.phash_bits(px32, "median") == S.imagehash_bits(px32, "median")).all())

    print(f"threads: {args.threads}")
    print(f"fingerprints, 28x28 float maps: {fps_ours:,.0f}/s ({args.maps:,} maps in {t_ours:.3f} s); "
          f"imagehash.phash per image: {fps_ref:,.0f}/s -> ratio {fps_ours / fps_ref:.1f}x "
          f"[target >= 100,000/s: {'PASS' if fps_ours >= 1e5 else 'FAIL'}]")
    print(f"pairwise Hamming: {cmp_ours / 1e9:.2f} G comparisons/s ({args.fingerprints:,}^2 in {t_ham:.3f} s); "
          f"ImageHash.__sub__ per pair: {cmp_ref:,.0f}/s -> ratio {cmp_ours / cmp_ref:,.0f}x "
          f"[target >= 0.5 G/s: {'PASS' if cmp_ours >= 5e8 else 'FAIL'}]")
    print(f"bit-exact with imagehash.phash on identical 32x32 inputs: {exact}")


if __name__ == "__main__":
    main()
