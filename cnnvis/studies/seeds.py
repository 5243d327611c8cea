"""Study of stage `seeds`: one dataset's per-seed results, across the pipeline's seeds (pandas).

Every per-seed stage (train-baseline, adjust-architecture, retrain,
prune-by-importance, train-encdec) ran once per seed of ``seeds.list``; this
study reads their metrics (``<dataset>/seeds/<seed>/*.json``) into one long
frame, a row per seed, model and metric, and gives per model and metric n,
mean, sample sd (n−1) and the 95 % t interval of the mean, with the per-seed
values kept. The width rule's decision is re-made per seed: each decision and
how many seeds made it. Comparisons across seeds are paired t-tests (seed s of
every model shares the data split, the subsets and, for the adjusted model and
its control, the baseline), plus Welch's t for adjusted vs control; beside them
the per-seed tests the stages ran (McNemar on every test image, the paired
bootstrap of the pruning curves), counted over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cnnvis import DataError
from cnnvis import stats as S
from cnnvis.report import ACROSS_SEEDS, md_table

FILES = ("baseline.json", "adjust.json", "adjusted.json", "prune.json", "encdec.json")
# (model, metric) pairs compared across seeds: (name, A, B, metric, lower is better)
COMPARISONS = (
    ("adjusted_vs_control", "adjusted", "control", "top1", False),
    ("adjusted_vs_baseline", "adjusted", "baseline", "top1", False),
    ("encdec_vs_resnet18", "encdec", "resnet18", "top1", False),
    ("importance_vs_l1_norm", "pruned (importance)", "pruned (l1_norm)", "error_avg", True),
    ("importance_vs_random", "pruned (importance)", "pruned (random)", "error_avg", True),
    ("l1_norm_vs_random", "pruned (l1_norm)", "pruned (random)", "error_avg", True),
)


def _test(doc: Mapping, model: str) -> Mapping:
    """The test-split metrics of one model of the retrain stage's per-seed file (its run records)."""
    runs = (doc.get("runs") or {}).get(model) or [{}]
    return runs[0].get("test") or {}


def seed_frame(docs: Mapping[int, Mapping[str, Mapping]]) -> pd.DataFrame:
    """Long frame (seed, model, metric, value) of every seed's files: top-1/top-5 of the baseline, adjusted,
    control, encoder-decoder and its ResNet-18; per pruning ranking the error at every sweep fraction
    (``error_at_<percent>``) and averaged over them (``error_avg``)."""
    rows = []

    def add(seed: int, model: str, metric: str, value: object) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((seed, model, metric, float(value)))

    for seed, files in docs.items():
        tests = {"baseline": (files.get("baseline.json") or {}).get("test") or {},
                 "adjusted": _test(files.get("adjusted.json") or {}, "after"),
                 "control": _test(files.get("adjusted.json") or {}, "control"),
                 "encdec": (files.get("encdec.json") or {}).get("test") or {},
                 "resnet18": ((files.get("encdec.json") or {}).get("resnet18") or {}).get("test") or {}}
        for model, test in tests.items():
            for metric in ("top1", "top5"):
                add(seed, model, metric, test.get(metric))
        summary = ((files.get("prune.json") or {}).get("sweep") or {}).get("summary") or {}
        for method, entry in summary.items():
            curve = entry.get("curve") or []
            for point in curve:
                add(seed, f"pruned ({method})", f"error_at_{round(100 * point['fraction'])}", point["error_mean"])
            if curve:
                add(seed, f"pruned ({method})", "error_avg", float(np.mean([p["error_mean"] for p in curve])))
    return pd.DataFrame(rows, columns=["seed", "model", "metric", "value"])


@dataclass(frozen=True)
class SeedsStudy:
    dataset: str
    seeds: tuple[int, ...]
    frame: pd.DataFrame  # long: seed, model, metric, value
    summary: pd.DataFrame  # model, metric, n, mean, sd, ci_low, ci_high
    decisions: tuple[dict, ...]  # {widths, seeds, count}, most frequent first
    tests: dict  # name → Comparison.as_dict() across seeds
    per_seed_tests: dict  # name → [{seed, p_value, verdict}] of the stages' own tests
    alpha: float

    def metrics(self) -> dict:
        """The aggregate as metrics; the pruning error at each fraction stays in the table and the figure (the
        per-seed prune.json has the curves), so that `dvc exp show` gets one column per ranking, not 10."""
        summary: dict[str, dict] = {}
        for r in self.summary.itertuples(index=False):
            if r.metric.startswith("error_at_"):
                continue
            values = self.frame[(self.frame.model == r.model) & (self.frame.metric == r.metric)]
            summary.setdefault(r.model, {})[r.metric] = {
                "n": int(r.n), "mean": _round(r.mean), "std": _round(r.sd), "ci95_low": _round(r.ci_low),
                "ci95_high": _round(r.ci_high), "values": [_round(v) for v in values.value],
                "seeds": [int(s) for s in values.seed]}
        return {"dataset": self.dataset, "seeds": list(self.seeds), "n": len(self.seeds), "summary": summary,
                "decisions": list(self.decisions), "tests": self.tests, "per_seed_tests": self.per_seed_tests}

    def markdown(self) -> str:
        n = len(self.seeds)
        wide = self.frame.pivot_table(index=["model", "metric"], columns="seed", values="value", sort=False)
        rows = []
        for r in self.summary.itertuples(index=False):
            per_seed = wide.loc[(r.model, r.metric)] if (r.model, r.metric) in wide.index else pd.Series(dtype=float)
            ci = "—" if math.isnan(r.ci_low) else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"
            spread = f"{r.mean:.2f}" if math.isnan(r.sd) else f"{r.mean:.2f} ± {r.sd:.2f}"
            rows.append((r.model, r.metric, int(r.n), spread, ci,
                         ", ".join("—" if math.isnan(per_seed.get(s, math.nan)) else f"{per_seed[s]:.2f}"
                                   for s in self.seeds)))
        decisions = [(str(d["widths"]), d["count"], f"{d['count']}/{n}", ", ".join(map(str, d["seeds"])))
                     for d in self.decisions]
        tests = [(ACROSS_SEEDS.get(name, name), t["test"], t["n"], f"{t['difference']:+.2f}", f"{t['p_value']:.2g}",
                  t["verdict"]) for name, t in self.tests.items()]
        own = []
        for name, entries in self.per_seed_tests.items():
            a, b, neither = S.tally(entries, self.alpha)
            own.append((name, entries[0]["test"], len(a), len(b), len(neither),
                        "; ".join(f"seed {e['seed']}: {e['difference']:+.2f}, p={e['p_value']:.2g}" for e in entries)))
        return "\n".join([
            f"# {self.dataset}: results across {n} seed{'s' * (n != 1)} ({', '.join(map(str, self.seeds))})", "",
            "Per model and metric: mean ± sample sd (n−1) over the seeds, the 95 % t interval of the mean, and "
            "every seed's value (top-1/top-5 in %, pruning errors in % at a removed fraction, `error_avg` averaged "
            "over the sweep's fractions). A lone seed has no spread (—).", "",
            md_table(("model", "metric", "n", "mean ± sd", "95 % CI", f"per seed ({', '.join(map(str, self.seeds))})"),
                     rows), "",
            "## The width rule's decision per seed", "",
            "The adjust-architecture stage re-made the decision on each seed's baseline.", "",
            md_table(("widths", "seeds making it", "share", "which seeds"), decisions), "",
            f"## Comparisons across seeds (α = {self.alpha:g})", "",
            "Paired t: seed s of A against seed s of B (same split, subsets and baseline); positive differences "
            "favour A (for an error: B's minus A's). Welch's t ignores the pairing." if tests else
            "Fewer than 2 seeds: nothing is tested across seeds (the per-seed tests below still apply).", "",
            *([md_table(("comparison", "test", "n", "difference", "p", "verdict"), tests), ""] if tests else []),
            "## The stages' own tests, per seed", "",
            f"Each seed's test as its stage ran it, counted by its outcome at α = {self.alpha:g}: A better, B better "
            "(p < α, the sign of the difference), or not distinguishable; per seed the difference (positive favours "
            "A) and p.", "",
            md_table(("comparison (A vs B)", "test", "A better", "B better", "neither", "per seed"), own), ""])

    def figures(self) -> Iterator[tuple[str, plt.Figure]]:
        from cnnvis.plotting.seeds import seed_figures

        return seed_figures(self.frame, self.summary, self.seeds, self.dataset)


def _round(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def _decisions(docs: Mapping[int, Mapping[str, Mapping]]) -> tuple[dict, ...]:
    made: dict[tuple, list[int]] = {}
    for seed, files in docs.items():
        widths = (files.get("adjust.json") or {}).get("widths")
        if widths is not None:
            made.setdefault(tuple(widths), []).append(seed)
    return tuple({"widths": list(w), "seeds": s, "count": len(s)}
                 for w, s in sorted(made.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _per_seed_tests(docs: Mapping[int, Mapping[str, Mapping]]) -> dict:
    out: dict[str, list] = {}
    for seed, files in docs.items():
        mcnemar = ((files.get("adjusted.json") or {}).get("adjusted_vs_control") or {}).get("mcnemar")
        found = {"pHash-adjusted widths vs uniform-width control, test top-1": mcnemar} if mcnemar else {}
        found |= {f"filter pruning, {k.replace('_vs_', ' vs ')}, error over the sweep": t for k, t in
                  (((files.get("prune.json") or {}).get("sweep") or {}).get("tests") or {}).items()}
        for name, t in found.items():
            out.setdefault(name, []).append({"seed": seed, "test": t["test"], "n": t["n"], "a": t["a"], "b": t["b"],
                                             "p_value": t["p_value"], "difference": t["difference"],
                                             "verdict": t["verdict"]})
    return out


def seeds_study(dataset: str, docs: Mapping[int, Mapping[str, Mapping]], expected: tuple[int, ...],
                alpha: float = 0.05) -> SeedsStudy:
    """``docs``: seed → {file name → metrics} of every seed's directory; ``expected``: the seeds of
    ``seeds.list``, each of which must be there (a seed left out would silently narrow the spread)."""
    missing = [s for s in expected if s not in docs]
    if missing:
        raise DataError(f"no results of seed {missing[0]} for {dataset}; run `dvc repro` (the per-seed stages "
                        f"of seed {missing[0]}) first")
    docs = {s: docs[s] for s in expected}
    frame = seed_frame(docs)
    if frame.empty:
        raise DataError(f"{dataset}: no per-seed metrics found; run the per-seed stages first")
    summary = S.summarize(frame, ["model", "metric"], "value")
    wide = frame.pivot_table(index="seed", columns=["model", "metric"], values="value")
    tests = {}
    for name, a, b, metric, lower in COMPARISONS:
        if (a, metric) not in wide or (b, metric) not in wide:
            continue
        pair = wide[[(a, metric), (b, metric)]].dropna()
        va, vb = pair[(a, metric)].tolist(), pair[(b, metric)].tolist()
        # for an error, B − A: a positive difference (and "better") always favours A
        t = S.paired_t(vb, va, (a, b), alpha=alpha) if lower else S.paired_t(va, vb, (a, b), alpha=alpha)
        if t is not None:
            tests[name] = t.as_dict()
        if name == "adjusted_vs_control" and (w := S.welch(va, vb, (a, b), alpha=alpha)) is not None:
            tests[f"{name}_welch"] = w.as_dict()
    return SeedsStudy(dataset, tuple(expected), frame, summary, _decisions(docs), tests, _per_seed_tests(docs), alpha)
