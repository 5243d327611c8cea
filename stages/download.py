"""Stage `download`: find, verify and store one dataset as npz shards.

    python -m stages.download --dataset fashion_mnist --out data/raw/fashion_mnist

Sources, in order: ``dataset.<name>.source_dir``, the system copy (Debian's
dataset-fashion-mnist), torchvision's download into ``--download-root``.
"""

from __future__ import annotations

from pathlib import Path

from cnnvis import data as D
from cnnvis.config import DatasetConfig
from cnnvis.io import save_json
from stages._runner import Context, Output, Stage


def run(ctx: Context) -> None:
    ds = D.acquire(ctx.section("dataset.{dataset}"), ctx.path("download_root") / ctx.dataset, progress=ctx.progress)
    D.save_npz(ctx.out["out"], ds)
    save_json(ctx.out["out"] / "meta.json", D.meta(ds))


STAGE = Stage(
    "download", __doc__, run,
    params={"dataset.{dataset}": DatasetConfig},
    outputs={"out": Output(directory=True, help="data/raw/<dataset>: train.npz, test.npz, meta.json")},
    scratch={"download_root": Path("data/downloads")},
)
main = STAGE.main

if __name__ == "__main__":
    main()
