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

PARAMS = ("dataset",)
INPUTS = ("--rows",)
OUTPUTS = ("--table",)
PAPER_ORDER = ("mnist", "cifar10", "cifar100")


def _fmt(s: dict | None) -> str:
    if not s:
        return "—"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"


def table1_markdown(rows: list[dict]) -> str:
    """Paper 1 Table I with our numbers beside the paper's and the uniform-width control."""
    lines = [
        "# Table I — test accuracy (%) before and after the pHash-guided width adjustment",
        "",
        "Paper 1 §IV, Table I. *Ours*: mean ± std over n seeds (`adjust.seeds`). *Control*: the same parameter count "
        "as the adjusted model, reached by widening every conv layer by one shared factor (no pHash guidance), "
        "trained with the same recipe as the adjusted model. Widths are the conv layers' kernel counts.",
        "",
        "| dataset | n | paper before | paper after | ours before | ours after | control | widths before → after (control) "
        "| parameters before → after | guidance vs control |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = r.get("paper") or {}
        after, control = r.get("after"), r.get("control")
        if after and control:
            diff = after["mean"] - control["mean"]
            spread = max(after["std"], control["std"])
            verdict = ("adjusted wins" if diff > 0 else "control wins" if diff < 0 else "tie") + f" by {abs(diff):.2f}"
            if r["seeds"] and len(r["seeds"]) > 1 and abs(diff) <= spread:
                verdict += " (within one std)"
            elif len(r["seeds"]) == 1:
                verdict += " (n=1: no spread)"
        else:
            verdict = "—"
        w = r["widths"]
        lines.append(
            f"| {r['name']} | {len(r['seeds'])} | {paper.get('before', '—')} | {paper.get('after', '—')} | "
            f"{_fmt(r.get('before'))} | {_fmt(after)} | {_fmt(control)} | "
            f"{w['before']} → {w['after']} ({w['control']}) | "
            f"{r['parameters']['before']:,} → {r['parameters']['after']:,} | {verdict} |")
    lines += ["", "Epochs (before / after and control): " + "; ".join(
        f"{r['name']} {r['epochs']['before']} / {r['epochs']['after']}" for r in rows), ""]
    return "\n".join(lines)


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
