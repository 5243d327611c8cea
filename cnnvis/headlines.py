"""The README's headlines, generated from a finished run's metrics: the measured means with their spread and
every comparison's verdict as the seeds stage's tests gave it, so no verdict in the README is written by hand.

Read from ``reports/metrics/<dataset>/seeds.json`` (the seeds stage: per-model summaries over the seeds, the
width rule's decisions, the tests across seeds and each seed's own tests) and, for the encoder-decoder's
translation control, the primary seed's ``encdec.json``. A comparison the run did not test is left out, never
guessed. `python -m stages.readme` writes the lines between ``HEADLINES_START`` and ``HEADLINES_END``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cnnvis.report import _seeds
from cnnvis.stats import tally

HEADLINES_START = "<!-- headlines:start -->"
HEADLINES_END = "<!-- headlines:end -->"

RANKINGS = {"pruned (importance)": "gradient importance", "pruned (l1_norm)": "L1 norm", "pruned (random)": "random"}


def _spread(entry: Mapping[str, Any] | None) -> str | None:
    """``mean ± sd % (95 % CI [lo, hi]; seeds …: v, …)``; a lone seed without spread or interval."""
    if not entry:
        return None
    per_seed = f"{_seeds(entry['seeds'])}: {', '.join(f'{v:.2f}' for v in entry['values'])}"
    if entry["n"] < 2 or entry.get("std") is None:
        return f"{entry['mean']:.2f} % (one seed, {per_seed})"
    return (f"{entry['mean']:.2f} ± {entry['std']:.2f} % (95 % CI [{entry['ci95_low']:.2f}, {entry['ci95_high']:.2f}]; "
            f"{per_seed})")


def _per_seed(entries: list[dict[str, Any]] | None) -> str | None:
    """How each seed's own test came out, by outcome: ``<test> in each seed: A better in seeds …; …``."""
    if not entries:
        return None
    a, b, neither = tally(entries)
    parts = [f"{entries[0]['a']} better in {_seeds(a)}" if a else "", f"{entries[0]['b']} better in {_seeds(b)}" if b else "",
             f"not distinguishable in {_seeds(neither)}" if neither else ""]
    return (f"each seed's own {entries[0]['test']} test (n={entries[0]['n']}): " + "; ".join(p for p in parts if p)
            + " (p = " + ", ".join(f"{e['p_value']:.2g}" for e in entries) + ")")


def _per_seed_named(per_seed: Mapping[str, list], *words: str) -> list[dict[str, Any]] | None:
    """The per-seed test whose name contains every one of ``words`` (the seeds stage names them in prose)."""
    return next((v for k, v in per_seed.items() if all(w in k for w in words)), None)


def headlines(metrics: Mapping[str, Mapping[str, Any]], primary_seed: int) -> list[str]:
    """Markdown bullets, per dataset of ``metrics`` ({dataset: {file name: parsed JSON}}, the dataset's own files
    and the primary seed's), of what the run measured and what its tests said."""
    out: list[str] = []
    for ds, files in metrics.items():
        seeds = files.get("seeds.json")
        if not seeds:
            out.append(f"- {ds}: the seeds stage has not run; no headline without it.")
            continue
        summary, tests, per_seed = seeds.get("summary", {}), seeds.get("tests", {}), seeds.get("per_seed_tests", {})
        top1 = {model: (entry.get("top1") or None) for model, entry in summary.items()}
        out.append(f"- **{ds}**, {seeds['n']} training {_seeds(seeds['seeds'])}; means ± sample sd over the seeds, every "
                   f"verdict a test's at α = {seeds.get('alpha', 0.05)}:")
        if top1.get("baseline"):
            out.append(f"  - Paper 1's CNN, test top-1: {_spread(top1['baseline'])}.")
        decisions = seeds.get("decisions") or []
        if decisions:
            chosen = "; ".join(f"{d['widths']} in {d['count']} of {seeds['n']} ({_seeds(d['seeds'])})" for d in decisions)
            out.append(f"  - The pHash width rule, re-made on each seed's baseline, chose the widths {chosen}.")
        if top1.get("adjusted") and top1.get("control"):
            line = f"  - Adjusted {_spread(top1['adjusted'])} vs the uniform-width control {_spread(top1['control'])}"
            verdicts = [tests[k]["verdict"] for k in ("adjusted_vs_control",) if k in tests]
            mcnemar = _per_seed(_per_seed_named(per_seed, "adjusted", "control"))
            out.append(line + "".join(f": {v}" for v in verdicts) + (f"; {mcnemar}" if mcnemar else "") + ".")
        if "adjusted_vs_baseline" in tests:
            out.append(f"  - Adjusted vs the baseline: {tests['adjusted_vs_baseline']['verdict']}.")
        rankings = [(name, (summary.get(model) or {}).get("error_avg")) for model, name in RANKINGS.items()]
        if any(e for _, e in rankings):
            means = ", ".join(f"{name} {_spread(e)}" for name, e in rankings if e)
            out.append(f"  - Filter pruning, error averaged over the sweep's removed fractions (lower is better): {means}.")
            for key, a, b in (("importance_vs_random", "importance", "random"), ("importance_vs_l1_norm", "importance", "l1_norm"),
                              ("l1_norm_vs_random", "l1_norm", "random")):
                if key in tests:
                    bootstrap = _per_seed(_per_seed_named(per_seed, f"{a} vs {b}"))
                    out.append(f"    - {a} vs {b}: {tests[key]['verdict']}" + (f"; {bootstrap}" if bootstrap else "") + ".")
        if top1.get("encdec") and top1.get("resnet18"):
            line = (f"  - Paper 4's encoder-decoder {_spread(top1['encdec'])} vs its ResNet-18 trunk as a plain classifier "
                    f"{_spread(top1['resnet18'])}")
            out.append(line + (f": {tests['encdec_vs_resnet18']['verdict']}" if "encdec_vs_resnet18" in tests else "") + ".")
        translation = (files.get("encdec.json") or {}).get("translation") or {}
        for row in translation.get("rows", [])[:1]:
            out.append(f"  - Its class maps under a {row['shift_px']}-px shift of the input (seed {primary_seed}, "
                       f"{translation['informative_images']} images): Pearson r {row['follow_r']:.2f} with the map shifted "
                       f"alike vs {row['stay_r']:.2f} with the unshifted map; the shifted map fits better on "
                       f"{100 * row['follow_wins']:.1f} % of the images.")
    return out


def between(text: str) -> tuple[int, int] | None:
    """The span of ``text`` strictly between the headlines markers, or None without both."""
    m = re.search(re.escape(HEADLINES_START) + r"(.*?)" + re.escape(HEADLINES_END), text, flags=re.S)
    return None if m is None else m.span(1)


def with_headlines(text: str, lines: list[str]) -> str | None:
    """``text`` with its headlines block replaced by ``lines``; None when it has no markers."""
    span = between(text)
    if span is None:
        return None
    return text[:span[0]] + "\n" + "\n".join(lines) + "\n" + text[span[1]:]
