"""Stage `train-baseline`: train the configured model on one dataset.

    python -m stages.train_baseline --dataset fashion_mnist --seed 0 --data data/raw/fashion_mnist \
        --out data/models/fashion_mnist/seeds/0/baseline.pt --metrics reports/metrics/fashion_mnist/seeds/0/baseline.json \
        --live reports/live/fashion_mnist/seeds/0/baseline

Resumable: after every epoch the full training state goes to ``--resume-dir``
(scratch, keyed by a digest of the code, the data and the config); a killed run
restarts from its last finished epoch and gives the same result.
"""

from __future__ import annotations

from pathlib import Path

from cnnvis.config import ModelConfig, TrainConfig
from cnnvis.data import load_npz
from cnnvis.io import save_json
from cnnvis.studies.training import fit
from stages._epochs import epochs
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    model_cfg, train_cfg = ctx.section("model"), ctx.section("train")
    with epochs(ctx, "baseline", model_cfg, train_cfg, live=ctx.out.get("live")) as session:
        trained = fit(ctx.inputs["data"], model_cfg, train_cfg, ctx.hardware, tag="baseline", epochs=session)
        session.summary = {"test_top1": trained.metrics["test"]["top1"], "test_top5": trained.metrics["test"]["top5"]}
    return {"out": trained.checkpoint(), "metrics": trained.metrics}


STAGE = Stage(
    "train-baseline", __doc__, run,
    params={"model": ModelConfig, "train": TrainConfig},
    inputs={"data": Input(load_npz, "data/raw/<dataset> of the download stage", made_by="download")},
    outputs={"out": Output(lambda p, c: c.save(p), help="the checkpoint"), "metrics": Output(save_json),
             "live": Output(directory=True, required=False, help="DVCLive directory for the learning curves")},
    scratch={"resume_dir": Path("data/resume")}, seeded=("train.seed",),
)
main = STAGE.main

if __name__ == "__main__":
    main()
