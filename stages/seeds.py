"""Stage `seeds`: one dataset's per-seed results across the pipeline's seeds (``seeds.list``).

    python -m stages.seeds --dataset fashion_mnist --per-seed reports/metrics/fashion_mnist/seeds \
        --metrics reports/metrics/fashion_mnist/seeds.json --table reports/tables/fashion_mnist/seeds.md \
        --figures reports/figures/fashion_mnist/across_seeds

Reads every seed's metrics (``--per-seed``: ``<seed>/*.json`` of train-baseline,
adjust-architecture, retrain, prune-by-importance and train-encdec) and writes,
per model and metric, n, mean, sample sd and the 95 % t interval with every
seed's value; the width decisions and their frequency; paired t-tests across
seeds with their verdicts, beside the stages' own per-seed tests
(cnnvis.studies.seeds). A seed of ``seeds.list`` without results is an error,
never a narrower spread.
"""

from __future__ import annotations

from pathlib import Path

from cnnvis import DataError
from cnnvis.io import read_json_files, save_figures, save_json, save_text
from cnnvis.studies.seeds import seeds_study
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    cfg = ctx.section("seeds")
    study = seeds_study(ctx.dataset, ctx.inputs["per_seed"], tuple(cfg["list"]), alpha=cfg.get("alpha", 0.05))
    return {"metrics": study.metrics(), "table": study.markdown(), "figures": study.figures()}


def load_seeds(directory: Path) -> dict[int, dict[str, dict]]:
    """seed → {file name → metrics} of ``<directory>/<seed>/*.json``."""
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory of per-seed results")
    return {int(d.name): read_json_files(d) for d in sorted(directory.iterdir()) if d.is_dir() and d.name.isdigit()}


STAGE = Stage(
    "seeds", __doc__, run,
    params={"seeds": None},
    inputs={"per_seed": Input(load_seeds, "directory of <seed>/*.json, the per-seed stages' metrics",
                              made_by="train-baseline")},
    outputs={"metrics": Output(save_json), "table": Output(save_text, help="the Markdown tables"),
             "figures": Output(save_figures, directory=True, help="directory of the across-seed figures")},
)
main = STAGE.main

if __name__ == "__main__":
    main()
