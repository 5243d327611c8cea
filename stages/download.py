"""Stage `download`: find, verify and store one dataset as npz shards.

    python -m stages.download --dataset fashion_mnist --out data/raw/fashion_mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnvis import data as D
from cnnvis.config import DatasetConfig
from cnnvis.io import atomic_path, save_json
from stages._common import Params, add_common_args, progress_factory, stage_main

PARAMS = ("dataset.{dataset}",)
INPUTS: tuple[str, ...] = ()
OUTPUTS = ("--out",)
SCRATCH = ("--download-root",)


@stage_main("download")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--download-root", type=Path, default=Path("data/downloads"),
                   help="where a download lands before conversion (not a DVC output)")
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS, args.dataset)
    cfg = params.section(f"dataset.{args.dataset}", DatasetConfig)
    ds = D.acquire(cfg, args.download_root / args.dataset, progress=progress_factory(params.hardware))
    with atomic_path(args.out, directory=True) as tmp:
        D.save_npz(tmp, ds)
        save_json(tmp / "meta.json", {  # normalization statistics come later, from the training split (prepare)
            "dataset": ds.name, "source": ds.source, "classes": list(ds.classes),
            "image_shape_hwc": list(ds.shape), "train": len(ds.train.labels), "test": len(ds.test.labels),
        })


if __name__ == "__main__":
    main()
