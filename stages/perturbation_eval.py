r"""Stage `perturbation-eval`: paper 4's section 5.3 on every trained model of a dataset.

    python -m stages.perturbation_eval --dataset fashion_mnist --data data/raw/fashion_mnist \
        --reference reports/paper_reference.yaml \
        --baseline data/models/fashion_mnist/seeds/0/baseline.pt --encdec data/models/fashion_mnist/seeds/0/encdec.pt \
        --metrics reports/metrics/fashion_mnist/perturbation.json \
        --table reports/tables/fashion_mnist/perturbation.md --figures reports/figures/fashion_mnist/perturbation

Each model flag (--baseline, --adjusted, --pruned, --encdec) is optional; a
given path must exist, unless --skip-missing is passed too (runs outside DVC,
where a model stage has not run yet: flags naming a missing file are dropped).
Every perturbation is applied once to the uint8 test images, with one seed, and
the same perturbed images go to every model. The paper's grayscale number comes
from --reference (table p4_perturbation).
"""

from __future__ import annotations

import yaml

import cnnvis.encdec  # noqa: F401  (registers "encdec" in cnnvis.models.MODELS for load_checkpoint)
from cnnvis.data import load_npz
from cnnvis.io import save_figures, save_json, save_text
from cnnvis.models import load_checkpoint
from cnnvis.paper_reference import paper_numbers
from cnnvis.perturb import PerturbConfig
from cnnvis.studies.perturb import PAPER_ID, PAPER_KEY, perturbation_study
from stages._runner import Context, Input, Output, Stage

MODELS = {"baseline": "train-baseline", "adjusted": "retrain", "pruned": "prune-by-importance",
          "encdec": "train-encdec"}  # model flag → the stage that trains it


def run(ctx: Context) -> dict:
    from cnnvis.plotting.perturb import perturbation_figures

    paper = paper_numbers(ctx.inputs["reference"], PAPER_ID, (PAPER_KEY,), ("top1",),
                          source=str(ctx.path("reference")))[PAPER_KEY]["top1"]
    study = perturbation_study(ctx.inputs["data"], {m: ctx.inputs[m] for m in MODELS if m in ctx.inputs},
                               ctx.section("perturb"))
    return {"metrics": study.metrics(paper), "table": study.table(paper), "figures": perturbation_figures(study)}


STAGE = Stage(
    "perturbation-eval", __doc__, run,
    params={"perturb": PerturbConfig},
    inputs={"data": Input(load_npz, "data/raw/<dataset> of the download stage", made_by="download"),
            "reference": Input(lambda p: yaml.safe_load(p.read_text()), "the papers' numbers (a committed file)",
                               made_by="git"),
            **{m: Input(load_checkpoint, f"checkpoint of the {m} model", required=False, made_by=stage, skippable=True)
               for m, stage in MODELS.items()}},
    outputs={"metrics": Output(save_json), "table": Output(save_text, help="the stage's table in Markdown"),
             "figures": Output(save_figures, directory=True, help="directory of this stage's figures")},
)


main = STAGE.main


if __name__ == "__main__":
    main()
