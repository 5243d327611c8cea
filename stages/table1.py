"""Stage `table1`: paper 1's Table I across every selected dataset, from the retrain stage's row files.

    python -m stages.table1 --rows reports/tables/table1_rows --reference reports/paper_reference.yaml \
        --table reports/tables/table1.md

`retrain` runs once per dataset and seed (matrix) and writes its own row
(``reports/tables/table1_rows/<dataset>/<seed>.json``); a matrix stage cannot
write one file for all of them, so this stage joins the rows of the datasets
selected in params.yaml (the paper's first, in its order) over the seeds of
``seeds.list`` with the paper's numbers (``--reference``, table p1_table1). It
depends on the rows directory, which DVC links to every retrain out inside it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cnnvis.io import load_json, save_text
from cnnvis.studies.table1 import table1, table1_markdown
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    t = table1(ctx.inputs["rows"], list(ctx.section("dataset") or {}), ctx.inputs["reference"],
               source=str(ctx.path("reference")), seeds=ctx.section("seeds")["list"])
    return {"table": table1_markdown(t)}


def load_rows(directory: Path) -> dict[str, dict[int, dict]]:
    """dataset → seed → row, from ``<dataset>/<seed>.json``."""
    rows: dict[str, dict[int, dict]] = {}
    for f in sorted(directory.glob("*/*.json")):
        if f.stem.isdigit():
            rows.setdefault(f.parent.name, {})[int(f.stem)] = load_json(f)
    return rows


STAGE = Stage(
    "table1", __doc__, run,
    params={"dataset": None, "seeds": None},
    inputs={"rows": Input(load_rows, "directory of <dataset>/<seed>.json rows", made_by="retrain"),
            "reference": Input(lambda p: yaml.safe_load(p.read_text()), "the papers' numbers (a committed file)")},
    outputs={"table": Output(save_text, help="the Markdown table to write")},
    per_dataset=False,
)
main = STAGE.main

if __name__ == "__main__":
    main()
