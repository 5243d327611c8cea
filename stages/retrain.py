"""Stage `retrain`: train the adjusted architecture and its uniform-width control with the baseline recipe.

    python -m stages.retrain --dataset fashion_mnist --seed 0 --data data/raw/fashion_mnist \
        --adjusted data/models/fashion_mnist/seeds/0/adjusted.yaml \
        --baseline-metrics reports/metrics/fashion_mnist/seeds/0/baseline.json \
        --recon data/visualize/fashion_mnist/reconstructions.npz \
        --out data/models/fashion_mnist/seeds/0/adjusted.pt --control-out data/models/fashion_mnist/seeds/0/control.pt \
        --metrics reports/metrics/fashion_mnist/seeds/0/adjusted.json \
        --rows reports/tables/table1_rows/fashion_mnist/0.json \
        --figures reports/figures/fashion_mnist/seeds/0/adjusted

One seed (``--seed``, the pipeline's seed list runs it once per seed): the adjusted
model and its uniform-width control, beside the baseline of the same seed
(cnnvis.studies.retrain); every training resumes from ``--resume-dir`` and logs
its learning curves to DVCLive (``--live``: one folder per model).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cnnvis.adjust import AdjustConfig
from cnnvis.config import ModelConfig, TrainConfig
from cnnvis.data import load_npz
from cnnvis.io import load_json, save_figures, save_json
from cnnvis.similarity import SimilarityConfig
from cnnvis.studies.adjust import load_probes
from cnnvis.studies.retrain import Adjusted, retrain_study
from cnnvis.studies.training import Trained, fit
from stages._epochs import epochs
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    raw = ctx.inputs["data"]

    live = ctx.out.get("live")

    def train(tag: str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Trained:
        with epochs(ctx, tag, model_cfg, train_cfg, live=live and live / tag) as session:
            return fit(raw, model_cfg, train_cfg, ctx.hardware, tag=tag, epochs=session)

    study = retrain_study(raw, ctx.inputs["adjusted"], ctx.inputs["baseline_metrics"], ctx.inputs["recon"],
                          ctx.section("train"), ctx.section("similarity"), ctx.section("adjust"), train=train,
                          baseline_source=str(ctx.path("baseline_metrics")))
    return {"out": study.adjusted.checkpoint(), "control_out": study.control.checkpoint(),
            "metrics": study.metrics(ctx.dataset), "rows": study.row(ctx.dataset), "figures": study.figures()}


STAGE = Stage(
    "retrain", __doc__, run,
    params={"train": TrainConfig, "similarity": SimilarityConfig, "adjust": AdjustConfig},
    inputs={"data": Input(load_npz, "data/raw/<dataset> of the download stage", made_by="download"),
            "adjusted": Input(lambda p: Adjusted.from_doc(yaml.safe_load(p.read_text()), str(p)),
                              "adjusted.yaml: the new widths", made_by="adjust-architecture"),
            "baseline_metrics": Input(load_json, "baseline.json", made_by="train-baseline"),
            "recon": Input(load_probes, "reconstructions.npz (its probe images)", made_by="visualize")},
    outputs={"out": Output(lambda p, c: c.save(p), help="the adjusted model's checkpoint"),
             "control_out": Output(lambda p, c: c.save(p), help="the control's checkpoint"),
             "metrics": Output(save_json), "rows": Output(save_json, help="this dataset's Table I row (JSON)"),
             "figures": Output(save_figures, directory=True, help="directory of Fig 13 / 14"),
             "live": Output(directory=True, required=False,
                            help="DVCLive directory: learning curves of the adjusted model and the control")},
    scratch={"resume_dir": Path("data/resume")}, seeded=("train.seed",),
)
main = STAGE.main

if __name__ == "__main__":
    main()
