"""Stage `prune-by-importance`: filter importance, its validation, and pruning (paper 3 §3.2).

    python -m stages.prune_by_importance --dataset fashion_mnist --seed 0 \
        --checkpoint data/models/fashion_mnist/seeds/0/adjusted.pt --data data/raw/fashion_mnist \
        --reference reports/paper_reference.yaml \
        --out data/models/fashion_mnist/seeds/0/pruned.pt --metrics reports/metrics/fashion_mnist/seeds/0/prune.json \
        --table reports/tables/fashion_mnist/seeds/0/pruning_per_class.md --figures reports/figures/fashion_mnist/seeds/0/prune

Filters are ranked on one set of images and scored on the test split (each a
seeded subset of at most ``prune.max_images`` images). ``prune.rank_split``:
``heldout`` (default) ranks on the validation images that training set aside
(the checkpoint's own train.val_size and seed, split as ``cnnvis.data.prepare``
does: never trained on; without them on the training images, and the metrics'
``ranking`` and the table say so); ``test`` ranks on the scored test images,
paper 3's same-set variant. Ranking images: importance ‖∂y_c/∂W_f‖ of every
filter for every input and class, its float64 finite-difference check, the
§3.2.2 probes. Test images: paper 3's per-class table (paper rows from
``--reference``, table p3_pruning; the caption names the model, its seed and
epochs from the checkpoint, and the ranking images), the threshold sweep against
random and L1-norm rankings, and the model pruned at ``prune.prune_fraction``,
masked and physically smaller, with parameters, MACs and CPU latency before and
after. One table per dataset (foreach).
"""

from __future__ import annotations

import yaml

from cnnvis import ConfigError
from cnnvis.config import ModelConfig, TrainConfig, parse
from cnnvis.data import load_npz
from cnnvis.io import save_figures, save_json, save_text
from cnnvis.models import load_checkpoint
from cnnvis.pruning import PruneConfig
from cnnvis.studies.prune import paper_rows, prune_study
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    from cnnvis.plotting.importance import prune_figures

    (model, state), raw = ctx.inputs["checkpoint"], ctx.inputs["data"]
    if len(raw.classes) != state["spec"]["num_classes"]:
        raise ConfigError(f"{ctx.path('checkpoint')}: trained for {state['spec']['num_classes']} classes but "
                          f"{ctx.path('data')} has {len(raw.classes)}; give the checkpoint of this dataset")
    model_cfg = parse(ModelConfig, state["model"], "checkpoint.model")
    train_cfg = parse(TrainConfig, state["train"], "checkpoint.train") if "train" in state else None
    study = prune_study(model, model_cfg, state["spec"], raw, ctx.section("prune"), train_cfg=train_cfg,
                        tag=state.get("tag"), progress=ctx.progress)
    source = str(ctx.path("checkpoint"))
    return {"out": study.checkpoint(ctx.dataset, source=source), "metrics": study.metrics(ctx.dataset, checkpoint=source),
            "table": study.table(ctx.inputs["reference"]), "figures": prune_figures(study)}


STAGE = Stage(
    "prune-by-importance", __doc__, run,
    params={"prune": PruneConfig},
    inputs={"checkpoint": Input(load_checkpoint, "the adjusted (retrained) model, or the baseline", made_by="retrain"),
            "data": Input(load_npz, "data/raw/<dataset> of the download stage", made_by="download"),
            "reference": Input(lambda p: paper_rows(yaml.safe_load(p.read_text())),
                               "reports/paper_reference.yaml (committed): paper 3's rows of table p3_pruning")},
    outputs={"out": Output(lambda p, c: c.save(p), help="the pruned checkpoint"), "metrics": Output(save_json),
             "table": Output(save_text, help="paper 3's per-class table (Markdown)"),
             "figures": Output(save_figures, directory=True, help="directory of this stage's figures")},
    seeded=("prune.seed",),  # the model is the seed's (its checkpoint); the subsets and random rankings follow it
)
main = STAGE.main

if __name__ == "__main__":
    main()
