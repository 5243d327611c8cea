r"""Stage `train-encdec`: paper 4's encoder-decoder, its maps during training, Table 1.

    python -m stages.train_encdec --dataset fashion_mnist --seed 0 --data data/raw/fashion_mnist \
        --reference reports/paper_reference.yaml \
        --out data/models/fashion_mnist/seeds/0/encdec.pt --metrics reports/metrics/fashion_mnist/seeds/0/encdec.json \
        --snapshots data/arrays/fashion_mnist/seeds/0/encdec_snapshots.npz \
        --table reports/tables/fashion_mnist/seeds/0/table1_encdec.md --figures reports/figures/fashion_mnist/seeds/0/encdec \
        --live reports/live/fashion_mnist/seeds/0/encdec

Trains the encoder-decoder (section `encdec`, recipe `encdec.train`) while
recording the class maps of fixed probe test images at `encdec.snapshot_epochs`
(Figs 3-5), then measures on the test set what section 5 only eyeballs (when
maps settle, same-class similarity, confidence vs sharpness; Figs 6-8) and,
for Table 1, trains the plain ResNet-18 with the same trunk, data and recipe.
The paper's Table 1 numbers come from --reference (table p4_table1).

Resumable: after every epoch of either training the state (with the probe maps
recorded so far) goes to ``--resume-dir`` (scratch, keyed by a digest of the
code, the data and the config); a killed run continues from its last epoch.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cnnvis.data import load_npz
from cnnvis.encdec import EncDecConfig
from cnnvis.io import save_figures, save_json, save_npz, save_text
from cnnvis.paper_reference import paper_numbers
from cnnvis.studies.encdec import TABLE1_COLUMNS, TABLE1_ID, TABLE1_PAPER_ROWS, encdec_study
from stages._epochs import epochs
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    from cnnvis.plotting.encdec import encdec_figures

    cfg = ctx.section("encdec")
    paper = paper_numbers(ctx.inputs["reference"], TABLE1_ID, tuple(TABLE1_PAPER_ROWS), TABLE1_COLUMNS,
                          source=str(ctx.path("reference")))
    live = ctx.out.get("live")  # DVCLive curves of both trainings, one folder each
    with epochs(ctx, "encdec", cfg, live=live and live / "encdec") as enc, \
            epochs(ctx, "encdec-resnet18", cfg, live=live and live / "resnet18") as res:
        study = encdec_study(ctx.inputs["data"], cfg, ctx.hardware, epochs=(enc, res))
    return {"out": study.checkpoint(), "metrics": study.metrics(), "snapshots": study.snapshots.arrays(study.classes),
            "table": study.table1(paper), "figures": encdec_figures(study)}


STAGE = Stage(
    "train-encdec", __doc__, run,
    params={"encdec": EncDecConfig},
    inputs={"data": Input(load_npz, "data/raw/<dataset> of the download stage", made_by="download"),
            "reference": Input(lambda p: yaml.safe_load(p.read_text()), "the papers' numbers (a committed file)",
                               made_by="git")},
    outputs={"out": Output(lambda p, c: c.save(p), help="the encoder-decoder's checkpoint"),
             "metrics": Output(save_json), "snapshots": Output(save_npz, help="npz of the probe maps per snapshot"),
             "table": Output(save_text, help="Table 1 in Markdown"),
             "figures": Output(save_figures, directory=True, help="directory of this stage's figures"),
             "live": Output(directory=True, required=False, help="DVCLive directory: learning curves of both models")},
    scratch={"resume_dir": Path("data/resume")}, seeded=("encdec.train.seed",),
)
main = STAGE.main

if __name__ == "__main__":
    main()
