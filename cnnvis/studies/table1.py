"""Study of stage `table1`: paper 1's Table I across the selected datasets, from the retrain stage's rows.

The paper's datasets come first, in the paper's order, with the paper's numbers
from reports/paper_reference.yaml (table p1_table1); the other datasets follow
by name. Only the table's own code: the stage re-renders when it changes, not
when the training code does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cnnvis import DataError
from cnnvis.paper_reference import paper_numbers
from cnnvis.report import md_table

TABLE_ID = "p1_table1"  # in reports/paper_reference.yaml


@dataclass(frozen=True)
class Table1:
    rows: tuple[dict, ...]  # the retrain rows of the selected datasets, in table order
    paper: Mapping[str, Mapping]  # dataset → the paper's numbers (before, after)


def paper_table1(reference: Mapping, source: str = "paper_reference.yaml") -> dict[str, dict[str, float]]:
    """The paper's Table I (table p1_table1 of reports/paper_reference.yaml): dataset → {before, after}, in the
    paper's order."""
    tables = reference.get("tables") if isinstance(reference, Mapping) else None
    table = next((t for t in tables or () if isinstance(t, Mapping) and t.get("id") == TABLE_ID), {})
    datasets = {r["label"]: r["dataset"] for r in table.get("paper_rows") or () if isinstance(r, Mapping)}
    numbers = paper_numbers(reference, TABLE_ID, tuple(datasets), ("before", "after"), source=source)
    return {datasets[label]: v for label, v in numbers.items()}


def table1(rows: Mapping[str, dict], selected: Sequence[str], reference: Mapping,
           source: str = "paper_reference.yaml") -> Table1:
    """The rows of the ``selected`` datasets: the paper's datasets first (paper order), then the rest by name."""
    paper = paper_table1(reference, source)
    order = [d for d in paper if d in selected] + sorted(d for d in selected if d not in paper)
    missing = [d for d in order if d not in rows]
    if missing:
        raise DataError(f"no Table I row of dataset {missing[0]} in the rows directory; run "
                        f"`dvc repro retrain@{missing[0]}` first")
    return Table1(tuple(rows[d] for d in order), paper)


def _fmt(s: dict | None) -> str:
    if not s:
        return "—"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"


def _verdict(r: dict) -> str:
    """Adjusted vs control, from the tests the retrain stage ran (Welch across seeds where n ≥ 2 per group, else
    McNemar on the first seed's per-image predictions)."""
    tests = r.get("tests") or {}
    test = tests.get("welch") or tests.get("mcnemar")
    return test["verdict"] if test else "—"


TABLE1_HEADERS = ("dataset", "n", "paper before", "paper after", "ours before", "ours after", "control",
                  "widths before → after (control)", "parameters before → after", "guidance vs control")


def table1_markdown(t: Table1) -> str:
    """Paper 1 Table I with our numbers beside the paper's and the uniform-width control."""
    cells = []
    for r in t.rows:
        paper, w, n = t.paper.get(r["dataset"], {}), r["widths"], r["parameters"]
        cells.append((r["name"], len(r["seeds"]), paper.get("before", "—"), paper.get("after", "—"),
                      _fmt(r.get("before")), _fmt(r.get("after")), _fmt(r.get("control")),
                      f"{w['before']} → {w['after']} ({w['control']})", f"{n['before']:,} → {n['after']:,}",
                      _verdict(r)))
    epochs = "; ".join(f"{r['name']} {r['epochs']['before']} / {r['epochs']['after']}" for r in t.rows)
    return "\n".join([
        "# Table I — test accuracy (%) before and after the pHash-guided width adjustment", "",
        "Paper 1 §IV, Table I. *Ours*: mean ± std over n seeds (`adjust.seeds`). *Control*: the same parameter count "
        "as the adjusted model, reached by widening every conv layer by one shared factor (no pHash guidance), "
        "trained with the same recipe as the adjusted model. Widths are the conv layers' kernel counts.", "",
        md_table(TABLE1_HEADERS, cells), "", "Epochs (before / after and control): " + epochs, ""])
