"""Study of stage `table1`: paper 1's Table I across the selected datasets, from the retrain stage's rows.

The retrain stage writes one row per dataset and seed; the rows of a dataset
are joined over its seeds (pandas): each column's mean ± sample sd, its 95 % t
interval and the per-seed values; the width decision of every seed and how
many seeds made it; adjusted vs control tested across seeds (paired t, and
Welch's t) with every seed's own McNemar test counted beside it. The paper's
datasets come first, in the paper's order, with the paper's numbers from
reports/paper_reference.yaml (table p1_table1); the other datasets follow by
name. Only the table's own code: the stage re-renders when it changes, not
when the training code does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from cnnvis import DataError
from cnnvis import stats as S
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


COLUMNS = ("before", "after", "control")


def combine(per_seed: Mapping[int, dict], alpha: float = 0.05) -> dict:
    """One dataset's row over its seeds (``per_seed``: seed → the retrain stage's row of that seed)."""
    seeds = sorted(per_seed)
    frame = pd.DataFrame([(s, c, float(per_seed[s][c]["mean"])) for s in seeds for c in COLUMNS if per_seed[s].get(c)],
                         columns=["seed", "column", "value"])
    results = {}
    for r in S.summarize(frame, ["column"], "value").itertuples(index=False):
        values = frame[frame.column == r.column].value.round(3).tolist()
        results[r.column] = {"mean": round(r.mean, 3), "std": 0.0 if math.isnan(r.sd) else round(r.sd, 3),
                             "n": int(r.n), "ci95": None if math.isnan(r.ci_low) else [round(r.ci_low, 3),
                                                                                      round(r.ci_high, 3)],
                             "values": values}
    decisions: dict[str, list[int]] = {}
    for s in seeds:
        w = per_seed[s]["widths"]
        decisions.setdefault(f"{w['before']} → {w['after']} ({w['control']})", []).append(s)
    common = max(decisions, key=lambda k: len(decisions[k]))
    first = per_seed[next(s for s in seeds if s in decisions[common])]
    after = frame[frame.column == "after"].set_index("seed").value
    control = frame[frame.column == "control"].set_index("seed").value
    both = sorted(set(after.index) & set(control.index))
    tests = {}
    if (t := S.paired_t(after[both].tolist(), control[both].tolist(), ("adjusted", "control"), alpha=alpha)):
        tests["paired_t"] = t.as_dict()
    if (w := S.welch(after.tolist(), control.tolist(), ("adjusted", "control"), alpha=alpha)):
        tests["welch"] = w.as_dict()
    mcnemar = [(s, per_seed[s]["tests"]["mcnemar"]) for s in seeds if "mcnemar" in (per_seed[s].get("tests") or {})]
    if mcnemar:
        tests["mcnemar"] = {"per_seed": [{"seed": s, "p_value": m["p_value"], "verdict": m["verdict"]}
                                         for s, m in mcnemar],
                            "significant": sum(m["p_value"] < alpha for _, m in mcnemar), "n": len(mcnemar),
                            "verdict": mcnemar[0][1]["verdict"] if len(mcnemar) == 1 else None}
    return {**{k: first[k] for k in ("dataset", "name", "epochs", "widths", "parameters")}, "seeds": seeds,
            "decisions": {k: v for k, v in sorted(decisions.items(), key=lambda kv: -len(kv[1]))},
            "tests": tests, "alpha": alpha, **results}


def table1(rows: Mapping[str, Mapping[int, dict]], selected: Sequence[str], reference: Mapping,
           source: str = "paper_reference.yaml", seeds: Sequence[int] | None = None) -> Table1:
    """The rows of the ``selected`` datasets (``rows``: dataset → seed → row), each joined over ``seeds`` (all
    seeds there by default): the paper's datasets first (paper order), then the rest by name."""
    paper = paper_table1(reference, source)
    order = [d for d in paper if d in selected] + sorted(d for d in selected if d not in paper)
    for d in order:
        missing = [s for s in (seeds or ()) if s not in rows.get(d, {})] or ([] if rows.get(d) else [None])
        if missing:
            which = "" if missing[0] is None else f" of seed {missing[0]}"
            raise DataError(f"no Table I row of dataset {d}{which} in the rows directory; run "
                            f"`dvc repro retrain` for it first")
    return Table1(tuple(combine({s: r for s, r in rows[d].items() if seeds is None or s in seeds}) for d in order),
                  paper)


def _fmt(s: dict | None) -> str:
    if not s:
        return "—"
    if s["n"] < 2:
        return f"{s['mean']:.2f}"
    ci = f" [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]" if s.get("ci95") else ""
    return f"{s['mean']:.2f} ± {s['std']:.2f}{ci}"


def _verdict(r: dict) -> str:
    """Adjusted vs control: the paired t-test across seeds (n ≥ 2), else the one seed's McNemar test on every
    test image; with several seeds, how many seeds' own McNemar tests were significant."""
    tests = r.get("tests") or {}
    m = tests.get("mcnemar") or {}
    if "paired_t" in tests:
        own = f"; McNemar per seed: {m['significant']} of {m['n']} significant" if m else ""
        return tests["paired_t"]["verdict"] + own
    return m.get("verdict") or "—"


def _decisions(r: dict) -> str:
    n = len(r["seeds"])
    return "; ".join(f"{k} ({len(v)}/{n})" if n > 1 else k for k, v in (r.get("decisions") or {}).items()) or "—"


TABLE1_HEADERS = ("dataset", "n", "paper before", "paper after", "ours before", "ours after", "control",
                  "widths before → after (control), seeds", "parameters before → after", "guidance vs control")


def table1_markdown(t: Table1) -> str:
    """Paper 1 Table I with our numbers beside the paper's and the uniform-width control."""
    cells = []
    for r in t.rows:
        paper, n = t.paper.get(r["dataset"], {}), r["parameters"]
        cells.append((r["name"], len(r["seeds"]), paper.get("before", "—"), paper.get("after", "—"),
                      _fmt(r.get("before")), _fmt(r.get("after")), _fmt(r.get("control")),
                      _decisions(r), f"{n['before']:,} → {n['after']:,}",
                      _verdict(r)))
    epochs = "; ".join(f"{r['name']} {r['epochs']['before']} / {r['epochs']['after']}" for r in t.rows)
    return "\n".join([
        "# Table I — test accuracy (%) before and after the pHash-guided width adjustment", "",
        "Paper 1 §IV, Table I. *Ours*: mean ± sample sd over n seeds (`seeds.list`) [95 % t interval]. *Control*: the "
        "same parameter count as the adjusted model, reached by widening every conv layer by one shared factor (no "
        "pHash guidance), trained with the same recipe as the adjusted model. Widths are the conv layers' kernel "
        "counts; the width rule decides on each seed's baseline (how many seeds made each decision). Parameters: "
        "of the most frequent decision. *Guidance vs control*: paired t-test across seeds, and how many seeds' "
        "own McNemar tests (every test image) were significant; with one seed, that seed's McNemar test.", "",
        md_table(TABLE1_HEADERS, cells), "", "Epochs (before / after and control): " + epochs, ""])
