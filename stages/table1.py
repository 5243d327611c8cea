"""Stage `table1`: paper 1's Table I across every selected dataset, from the retrain stage's row files.

    python -m stages.table1 --rows reports/tables/table1_rows --table reports/tables/table1.md

`retrain` runs once per dataset (foreach) and writes its own row
(``reports/tables/table1_rows/<dataset>.json``); a foreach stage cannot write
one file for all datasets, so this non-foreach stage joins the rows of the
datasets selected in params.yaml (paper order first). It depends on the rows
directory, which DVC links to every retrain@<dataset> out inside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnvis.io import load_json, save_text
from stages._common import Params, add_common_args, stage_main
from stages.retrain import PAPER_ORDER, table1_markdown

PARAMS = ("dataset",)
INPUTS = ("--rows",)
OUTPUTS = ("--table",)


@stage_main("table1")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", required=True, type=Path, help="directory of <dataset>.json rows (retrain stage)")
    p.add_argument("--table", required=True, type=Path, help="the Markdown table to write")
    add_common_args(p)
    args = p.parse_args(argv)
    params = Params.load(args.params, PARAMS)
    selected = list(params.raw("dataset") or {})
    order = [d for d in PAPER_ORDER if d in selected] + sorted(d for d in selected if d not in PAPER_ORDER)
    save_text(args.table, table1_markdown([load_json(args.rows / f"{d}.json") for d in order]))


if __name__ == "__main__":
    main()
