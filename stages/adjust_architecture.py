"""Stage `adjust-architecture`: paper 1's rule turns each conv layer's redundancy into a new width.

    python -m stages.adjust_architecture --dataset fashion_mnist --data data/raw/fashion_mnist \
        --baseline data/models/fashion_mnist/seeds/0/baseline.pt \
        --baseline-metrics reports/metrics/fashion_mnist/seeds/0/baseline.json \
        --recon data/visualize/fashion_mnist/reconstructions.npz \
        --out data/models/fashion_mnist/seeds/0/adjusted.yaml --metrics reports/metrics/fashion_mnist/seeds/0/adjust.json \
        --ablation reports/tables/fashion_mnist/seeds/0/adjust_ablation.md

Growth candidates are trained briefly (``adjust.search_epochs`` on
``adjust.search_train_images``); the baseline and every candidate are measured
on ``adjust.probe_images`` probe images (the visualize stage's, then more test
images). The decision log holds every step's width, judged redundancy with its
range and proxy validation accuracy, and the ablation rows; the ablation table
re-judges the same trainings with one setting changed per row.
"""

from __future__ import annotations

from cnnvis.adjust import AdjustConfig
from cnnvis.data import load_npz
from cnnvis.io import load_json, save_json, save_text
from cnnvis.models import load_checkpoint
from cnnvis.similarity import SimilarityConfig, redundancy_from_dict
from cnnvis.studies.adjust import adjust_study, load_probes
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    model, state = ctx.inputs["baseline"]
    study = adjust_study(ctx.inputs["data"], model, state, ctx.inputs["baseline_metrics"], ctx.inputs.get("similarity"),
                         ctx.inputs["recon"], ctx.section("similarity"), ctx.section("adjust"), ctx.hardware)
    return {"out": study.adjusted_text(ctx.dataset), "metrics": study.log(ctx.dataset),
            "ablation": study.ablation_markdown(ctx.dataset)}


STAGE = Stage(
    "adjust-architecture", __doc__, run,
    params={"similarity": SimilarityConfig, "adjust": AdjustConfig},
    inputs={"data": Input(load_npz, "data/raw/<dataset> of the download stage", made_by="download"),
            "baseline": Input(load_checkpoint, "the trained baseline checkpoint", made_by="train-baseline"),
            "baseline_metrics": Input(load_json, "baseline.json (its learning curve)", made_by="train-baseline"),
            "similarity": Input(lambda p: [redundancy_from_dict(layer) for layer in load_json(p)["layers"]],
                                "similarity.json of the same baseline, reported beside the stage's own measurement",
                                required=False, made_by="similarity"),
            "recon": Input(load_probes, "reconstructions.npz (its probe images)", made_by="visualize")},
    outputs={"out": Output(save_text, help="adjusted architecture (YAML)"),
             "metrics": Output(save_json, help="decision log (JSON)"),
             "ablation": Output(save_text, required=False, help="the width rule's ablation table (Markdown; its "
                                                                "rows are in the decision log either way)")},
)
main = STAGE.main

if __name__ == "__main__":
    main()
