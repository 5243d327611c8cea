"""``cnnvis phash``: perceptual-hash similarity of a set of images or feature maps, as data and a figure."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from cnnvis.cli import _figures, _inputs
from cnnvis.cli._inputs import UsageError
from cnnvis.io import atomic_path

MARKER = "similarity.npz"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cnnvis.similarity import METHODS

    p = sub.add_parser(
        "phash", help="perceptual-hash similarity of a set of images or feature maps",
        description="Fingerprint every image (or map) with a 64-bit perceptual hash and compare all pairs: similarity "
                    "= 1 − Hamming distance / bits, 1 for identical fingerprints, about 0.5 for unrelated ones. Each "
                    "image or map is converted to grayscale with PIL's luma weights, min-max scaled to 0–255, resized "
                    "to 32 × 32 (Lanczos) and its 8 × 8 lowest DCT frequencies thresholded. A constant image or map "
                    "(dead) has no fingerprint: its row and column are NaN.",
        epilog="\n".join([
            "thresholds (--method): mean = the 8 × 8 block against the mean of its AC coefficients (the paper's",
            "  pHash); median = imagehash.phash; simple = imagehash.phash_simple.",
            "",
            "output (--out DIR): similarity.npz with similarity [M, M] (NaN for dead items), names, dead, bits",
            "[M, hash_size²] and metadata (a JSON string: settings, near-duplicate groups, versions); for 5-D maps",
            "also std and count (over the probe images); similarity.png: the matrix.",
            "",
            "examples:",
            "  cnnvis phash --images photos/ --out photo_similarity/",
            "  cnnvis phash --maps explained/maps.npz --out map_similarity/",
            "  cnnvis phash --maps data/visualize/fashion_mnist/reconstructions.npz --key recon_1 --out conv2_kernels/",
        ]), formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, metavar="DIR",
                     help="directory of PNG/JPEG images (not recursive); each is hashed at its own size")
    src.add_argument("--maps", type=Path, metavar="FILE",
                     help="an .npz holding maps: a 4-D array [N, C, H, W] (C = 1 or 3; e.g. maps.npz of cnnvis "
                          "explain) gives one fingerprint per map; a 5-D array [N, K, C, H, W] (K maps of one layer "
                          "for each of N images, e.g. per-kernel reconstructions) compares the K maps, averaged over "
                          "the N images")
    p.add_argument("--key", default="maps", metavar="NAME", help="which array of --maps to read (default: maps)")
    p.add_argument("--method", choices=METHODS, default="mean", help="hash threshold (default: mean; see below)")
    p.add_argument("--hash-size", type=_inputs.positive_int, default=8, metavar="N",
                   help="the fingerprint has N² bits (default 8: 64 bits)")
    p.add_argument("--threshold", type=float, default=0.9, metavar="S",
                   help="pairs with similarity ≥ S are near-duplicates, grouped in the metadata (default 0.9)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output directory (created; written completely or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier output of this command")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> str:
    from cnnvis.config import parse
    from cnnvis.similarity import SimilarityConfig, duplicate_groups, hash_maps, layer_similarity

    if args.maps is None and args.key != "maps":
        raise UsageError("--key: applies to --maps only")
    cfg = parse(SimilarityConfig, {"method": args.method, "hash_size": args.hash_size, "threshold": args.threshold},
                "phash")
    _inputs.check_out(args.out, MARKER, args.overwrite)
    extra: dict[str, np.ndarray] = {}
    if args.images is not None:
        files = _inputs.image_files(args.images)
        names = [p.name for p in files]
        hashed = [hash_maps(_inputs.read_image(p).astype(np.float32)[None], cfg)[:2] for p in
                  _inputs.progress(files, total=len(files), desc="phash", unit="img")]
        bits = np.concatenate([b for b, _ in hashed])
        dead = np.concatenate([d for _, d in hashed])
        source, kind = str(args.images), "images"
    else:
        arrays = _read_npz(args.maps)
        if args.key not in arrays:
            raise UsageError(f"--key {args.key}: {args.maps} has no such array; it holds {', '.join(sorted(arrays)[:12])}")
        maps = arrays[args.key]
        if maps.ndim not in (4, 5) or maps.shape[-3] not in (1, 3) or not np.issubdtype(maps.dtype, np.number):
            raise UsageError(f"--maps {args.maps}: array {args.key} has shape {maps.shape} ({maps.dtype}); expected numbers "
                             "[N, C, H, W] or [N, K, C, H, W] with C = 1 or 3")
        if not np.isfinite(maps).all():
            raise UsageError(f"--maps {args.maps}: array {args.key} contains NaN or inf; recompute it")
        source, kind = f"{args.maps}:{args.key}", f"{maps.ndim}-D maps"
        if maps.ndim == 4:
            bits, dead = hash_maps(maps[:, None], cfg)[:2]  # [N, 1, …]: each map is dead or alive on its own range
            bits, dead = bits[:, 0], dead[:, 0]
            files = arrays.get("files")
            names = [str(f) for f in files] if files is not None and len(files) == len(maps) else \
                [str(i) for i in range(len(maps))]
        else:
            from cnnvis.similarity import dead_kernels

            ls = layer_similarity(maps, cfg)
            names = [f"map {k}" for k in range(ls.num_kernels)]
            dead = dead_kernels(ls, cfg.dead_kernel_fraction)
            bits = None
            extra = {"std": ls.std, "count": ls.count, "dead_per_image": ls.dead_maps}
            sim = np.where(dead[:, None] | dead[None, :], np.nan, ls.mean)
    if bits is not None:
        ham = (bits[:, None, :] != bits[None, :, :]).sum(-1)
        sim = 1.0 - ham / bits.shape[-1]
        sim[dead, :] = np.nan
        sim[:, dead] = np.nan
        extra["bits"] = bits
    groups, _ = duplicate_groups(sim, ~dead, cfg.threshold)
    meta = {"command": "phash", "source": source, "kind": kind, "method": cfg.method, "hash_size": cfg.hash_size,
            "bits": cfg.bits, "highfreq_factor": cfg.highfreq_factor, "quantize": cfg.quantize,
            "dead_rel_tol": cfg.dead_rel_tol, "threshold": cfg.threshold,
            "near_duplicate_groups": [[names[i] for i in g] for g in groups],
            "dead": [names[i] for i in np.flatnonzero(dead)], "versions": _inputs.versions()}
    with atomic_path(args.out, directory=True) as tmp:
        np.savez(tmp / MARKER, similarity=sim, names=np.array(names), dead=dead, metadata=_inputs.metadata_array(meta),
                 **extra)
        fig = _figures.similarity(sim, names, f"pHash similarity ({cfg.method}, {cfg.bits} bits) of {source}")
        fig.savefig(tmp / "similarity.png", dpi=100)
    return (f"{len(names)} items, {len(groups)} near-duplicate group(s) at ≥ {cfg.threshold:g}, {int(dead.sum())} dead; "
            f"{args.out / MARKER}, {args.out / 'similarity.png'}")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UsageError(f"--maps {path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise UsageError(f"--maps {path}: not a readable .npz of numeric arrays ({type(e).__name__})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UsageError(f"--maps {path}: a single array (.npy), not an .npz; save it with np.savez(FILE, maps=array)")
    names = z.zip.namelist()
    if not names or not all(n.endswith(".npy") for n in names):
        z.close()
        raise UsageError(f"--maps {path}: a zip file but not an .npz of arrays; save one with np.savez(FILE, maps=array)")
    try:
        with z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise UsageError(f"--maps {path}: not a readable .npz of numeric arrays ({type(e).__name__})") from None
