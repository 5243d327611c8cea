"""The results page: paper numbers beside ours, figures under their paper numbers.

Pure: plain dicts in (the parsed ``reports/paper_reference.yaml``, every metrics
JSON, the stage tables' text, figure sources), strings out (HTML, Markdown). The
``report`` stage reads the files and writes the strings; ``stages.collect`` uses
:func:`aggregate` for sweep tables.

The mapping from a paper table to our metrics is data (``ours`` in the reference
file), so a stage that has not run yet shows as "not run", never as a crash or a
silently shorter table.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from markdown_it import MarkdownIt

from cnnvis import ConfigError
from cnnvis import stats as S
from cnnvis.config import opt

MISSING = "not run"
BLOCK_START = "<!-- results:start -->"
BLOCK_END = "<!-- results:end -->"
# metrics keys that are curves or label lists, not results: left out of the summary
SKIP_KEYS = frozenset({"history", "classes", "confusion", "per_class"})
HEADING_SHIFT = 3  # levels a stage table's own headings move down on the page and in RESULTS.md


MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".svg": "image/svg+xml", ".webp": "image/webp"}  # figures embedded as data: URLs

@dataclass(frozen=True)
class ReportConfig:
    title: str = opt("cnnvis — four papers on seeing inside CNNs, reproduced")
    # base64 data URIs make index.html work wherever it is copied; False links the PNGs relatively
    embed_images: bool = opt(False)
    image_suffixes: tuple[str, ...] = opt((".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp"), min_length=1)
    decimals: int = opt(2, ge=0, le=6)
    # scalar metrics per file in the "all metrics" appendix (the rest is in the JSON)
    max_summary_rows: int = opt(60, ge=1)


# ---------------------------------------------------------------- data model


@dataclass
class Row:
    who: str  # "paper" | "ours"
    dataset: str
    label: str
    values: dict[str, float | None]
    seeds: str = "—"
    epochs: str = "—"
    key: str | None = None
    delta: dict[str, float] = field(default_factory=dict)  # ours − paper, same dataset and key only
    spread: dict[str, tuple[float | None, int]] = field(default_factory=dict)  # (std, n) over seeds


@dataclass
class Table:
    id: str
    paper: str
    title: str
    source: str
    unit: str
    columns: list[tuple[str, str]]
    rows: list[Row]
    note: str = ""
    stage_tables: list[str] = field(default_factory=list)

    @property
    def has_ours(self) -> bool:
        return any(r.who == "ours" and any(v is not None for v in r.values.values()) for r in self.rows)


@dataclass
class FigureEntry:
    paper: str
    number: str
    caption: str
    key: str  # the catalogue key(s), comma-separated
    images: list[tuple[str, str, str]]  # (dataset, file name, src)
    missing: list[str]  # datasets without a file
    expected: bool = True


# ---------------------------------------------------------------- lookups


def lookup(metrics: Mapping[str, Any], spec: str | Sequence[str]) -> tuple[Any, str] | None:
    """The first of ``spec`` (``file.json:dotted.key``) present in one dataset's metrics.

    Returns ``(value, file)`` or None when no candidate exists (a stage not run yet).
    """
    for candidate in [spec] if isinstance(spec, str) else spec:
        if ":" not in candidate:
            raise ConfigError(f"paper_reference: {candidate!r} must be '<metrics file>:<dotted key>'")
        fname, dotted = candidate.split(":", 1)
        node: Any = metrics.get(fname)
        for part in dotted.split(".") if node is not None else ():
            node = node.get(part) if isinstance(node, Mapping) else None
            if node is None:
                break
        if node is not None:
            return node, fname
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _run_info(doc: Mapping[str, Any] | None) -> tuple[str, str]:
    """(seeds, epochs) as written by the stage that produced a metrics file."""
    if not doc:
        return "—", "—"
    seeds = doc.get("seeds", doc.get("seed"))
    seeds_s = ", ".join(map(str, seeds)) if isinstance(seeds, list) else ("—" if seeds is None else str(seeds))
    epochs = doc.get("epochs")
    return seeds_s, "—" if epochs is None else str(epochs)


# ---------------------------------------------------------------- tables


def comparison_table(spec: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]]) -> Table:
    """One paper table: the paper's rows, then ours for every dataset in ``metrics``."""
    columns = list(spec["columns"].items())
    rows: list[Row] = []
    for pr in spec.get("paper_rows", []):
        rows.append(Row("paper", pr.get("dataset", "—"), pr["label"], {c: _number(pr.get(c)) for c, _ in columns},
                        seeds=str(pr.get("seeds", "—")), epochs=str(pr.get("epochs", "—")), key=pr.get("key")))
    ours = spec.get("ours", {})
    for ds, ds_metrics in metrics.items():
        for r in _our_rows(ours, ds, ds_metrics, columns):
            paper = next((p for p in rows if p.who == "paper" and p.dataset == ds and p.key == r.key), None)
            if paper is not None:
                r.delta = {c: r.values[c] - paper.values[c] for c, _ in columns
                           if r.values[c] is not None and paper.values[c] is not None}
            rows.append(r)
    return Table(spec["id"], spec["paper"], spec["title"], spec.get("source", ""), spec.get("unit", ""), columns, rows,
                 note=" ".join(str(spec.get("note", "")).split()), stage_tables=list(spec.get("stage_tables", [])))


def _value(node: Any) -> tuple[float | None, tuple[float | None, int] | None]:
    """A metric leaf: a number, or a summary over seeds {mean, std, n} (value, (std, n))."""
    if isinstance(node, Mapping) and "mean" in node:
        return _number(node["mean"]), (_number(node.get("std")), int(node.get("n") or 0))
    return _number(node), None


def _info(m: Mapping[str, Any], spec: Mapping[str, Any], fname: str | None, spreads: list) -> tuple[str, str]:
    """(seeds, epochs) of one of our rows: the spec's own paths, else what the metrics file says."""
    seeds, epochs = _run_info(m.get(fname) if fname else None)
    for key in ("seeds", "epochs"):
        found = lookup(m, spec[key]) if key in spec else None
        if found is not None:
            v = found[0]
            text = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
            seeds, epochs = (text, epochs) if key == "seeds" else (seeds, text)
    if seeds == "—" and spreads:
        seeds = f"{max(n for _, n in spreads)} seeds"
    return seeds, epochs


def _our_rows(ours: Mapping[str, Any], ds: str, m: Mapping[str, Any], columns: list[tuple[str, str]]) -> list[Row]:
    if "rows_from" in ours:
        found = lookup(m, ours["rows_from"])
        if found is None:
            return [Row("ours", ds, MISSING, dict.fromkeys((c for c, _ in columns), None))]
        items, fname = found
        if isinstance(items, Mapping):  # {name: {...}} → rows carrying their name
            items = [{"name": k, **v} for k, v in items.items() if isinstance(v, Mapping)]
        names = lookup(m, ours["class_names"]) if "class_names" in ours else None
        seeds, epochs = _info(m, ours, fname, [])
        out = []
        for item in items if isinstance(items, list) else []:
            item = dict(item)
            c = item.get("class")
            # class indices shown as names when the spec names a list of them (e.g. baseline.json:classes)
            item["class_name"] = (names[0][c] if names and isinstance(c, int) and 0 <= c < len(names[0]) else c)
            fmt = _SafeFormat(item)
            out.append(Row("ours", ds, str(ours.get("label", "{name}")).format_map(fmt),
                           {c: _number(item.get(ours["values"][c])) for c, _ in columns},
                           seeds=seeds, epochs=epochs,
                           key=str(ours["key"]).format_map(fmt) if "key" in ours else None))
        return out
    out = []
    for spec in ours.get("rows", []):
        values, spread, files = {}, {}, []
        for c, _ in columns:
            found = lookup(m, spec["values"][c]) if c in spec.get("values", {}) else None
            values[c], s = _value(found[0]) if found else (None, None)
            if s is not None:
                spread[c] = s
            if found:
                files.append(found[1])
        seeds, epochs = _info(m, spec, files[0] if files else None, list(spread.values()))
        out.append(Row("ours", ds, spec["label"] if files else f"{spec['label']} ({MISSING})", values,
                       seeds=seeds, epochs=epochs, key=spec.get("key"), spread=spread))
    return out


class _SafeFormat(dict):
    def __missing__(self, key: str) -> str:
        return f"{{{key}}}"


def stage_times(metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Wall time per stage output: ``stage_seconds`` (whole stage, written by every stage's wrapper; else a
    stage's own ``seconds``) and ``train_seconds`` when written."""
    rows = []
    for ds, files in metrics.items():
        for fname, doc in sorted(files.items()):
            if not isinstance(doc, Mapping):
                continue
            sec = _number(doc.get("stage_seconds", doc.get("seconds")))
            train = _number(doc.get("train_seconds"))
            if sec is None and train is None:
                continue
            rows.append({"dataset": ds, "stage": fname.removesuffix(".json"), "seconds": sec, "train_seconds": train,
                         "threads": doc.get("threads")})
    return rows


def flatten_scalars(doc: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted scalar leaves of a metrics document, curves and label lists left out."""
    out: list[tuple[str, Any]] = []
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            if k in SKIP_KEYS:
                continue
            out.extend(flatten_scalars(v, f"{prefix}{k}."))
    elif isinstance(doc, (str, int, float, bool)) or doc is None:
        out.append((prefix.rstrip("."), doc))
    return out


def records(value: Any, decimals: int = 3) -> tuple[list[str], list[list[str]]]:
    """A metrics sub-tree as a table: a list of records, {name: record} or {name: [records]}.

    Records are flat mappings of scalars; the outer names become the first column.
    """
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{decimals}f}"
        return "—" if v is None else str(v)

    rows: list[tuple[str | None, Mapping[str, Any]]] = []
    if isinstance(value, list):
        rows = [(None, r) for r in value if isinstance(r, Mapping)]
    elif isinstance(value, Mapping):
        for name, v in value.items():
            if isinstance(v, Mapping):
                rows.append((str(name), {k: x for k, x in v.items() if not isinstance(x, (Mapping, list))}))
            elif isinstance(v, list):
                rows += [(str(name), r) for r in v if isinstance(r, Mapping)]
            else:
                rows.append((str(name), {"value": v}))
    keys: list[str] = []
    for _, r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (Mapping, list))]
    named = any(n is not None for n, _ in rows)
    headers = (["name"] if named else []) + keys
    return headers, [([n or ""] if named else []) + [cell(r.get(k)) for k in keys] for n, r in rows]


def beyond_tables(specs: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The "beyond the papers" results named in the reference file, per dataset; absent ones marked not run."""
    out = []
    for spec in specs:
        per_ds = []
        for ds, m in metrics.items():
            found = lookup(m, spec["from"])
            headers, rows = records(found[0]) if found else ([], [])
            per_ds.append({"dataset": ds, "headers": headers, "rows": rows, "found": found is not None})
        out.append({"title": spec["title"], "source": spec["from"], "caption": " ".join(str(spec.get("caption", "")).split()),
                    "datasets": per_ds})
    return out


def parse_stage_table(name: str, text: str) -> str:
    """A stage's own table file (Markdown or CSV) as HTML."""
    if name.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return "<p><em>empty table</em></p>"
        env = jinja2.Environment(autoescape=True)
        return env.from_string(
            "<table><thead><tr>{% for h in rows[0] %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>"
            "{% for r in rows[1:] %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>"
        ).render(rows=rows)
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for tok in tokens:  # a stage table's own "# Title" sits below the page's h3
        if tok.type in ("heading_open", "heading_close"):
            tok.tag = f"h{min(6, int(tok.tag[1]) + HEADING_SHIFT)}"
    return md.renderer.render(tokens, md.options, {})


# ---------------------------------------------------------------- figures


def figure_entries(catalogue: Sequence[Mapping[str, Any]], figures: Mapping[str, Sequence[tuple[str, str]]]
                   ) -> tuple[list[FigureEntry], list[tuple[str, str, str]]]:
    """Figures under their paper numbers, and the files no catalogue entry claims.

    ``figures`` maps dataset → [(file path under the dataset's folder, src)]. A
    file belongs to the entry whose key is the longest prefix of its base name,
    or of its path for a key with a folder (so ``p1_fig05a`` wins over a shorter
    key, and ``encdec/fig6`` claims ``encdec/fig6_correct.png``).
    """
    keyed = []
    for entry in catalogue:
        keys = entry["key"] if isinstance(entry["key"], list) else [entry["key"]]
        keyed += [(k, entry) for k in keys]
    keyed.sort(key=lambda kv: -len(kv[0]))
    entries = {id(e): FigureEntry(e["paper"], str(e["number"]), e["caption"],
                                  ", ".join(e["key"]) if isinstance(e["key"], list) else str(e["key"]), [], [],
                                  bool(e.get("expected", True))) for e in catalogue}
    unclaimed: list[tuple[str, str, str]] = []
    for ds, files in figures.items():
        for name, src in sorted(files):
            # a key with a folder ("prune/importance_grid") matches the path, any other the file name
            owner = next((e for k, e in keyed if (name if "/" in k else _basename(name)).startswith(k)), None)
            if owner is None:
                unclaimed.append((ds, name, src))
            else:
                entries[id(owner)].images.append((ds, name, src))
    out = list(entries.values())
    for fe in out:
        have = {ds for ds, _, _ in fe.images}
        fe.missing = [ds for ds in figures if ds not in have] if fe.expected else []
    return out, unclaimed


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# ---------------------------------------------------------------- Markdown


def _fmt(v: float | None, decimals: int) -> str:
    return "—" if v is None else f"{v:.{decimals}f}"


def _md_escape(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """The one Markdown table renderer of the project; ``align``: one of "l", "r" per column (default all left)."""
    marks = {"l": "---|", "r": "---:|"}
    lines = ["| " + " | ".join(map(_md_escape, headers)) + " |",
             "|" + "".join(marks[a] for a in (align or "l" * len(headers)))]
    lines += ["| " + " | ".join(map(_md_escape, r)) + " |" for r in rows]
    return "\n".join(lines)


def table_cells(t: Table, decimals: int) -> tuple[list[str], list[list[str]]]:
    """Header and cells of a comparison table, shared by the Markdown and the HTML."""
    headers = ["", "Dataset", "Setting"] + [label for _, label in t.columns] + ["Seed(s)", "Epochs"]
    rows = []
    for r in t.rows:
        cells = []
        for c, _ in t.columns:
            s = _fmt(r.values[c], decimals)
            if c in r.spread and r.values[c] is not None:
                s = mean_std(r.values[c], r.spread[c][0] if r.spread[c][1] > 1 else None, r.spread[c][1], decimals)
            if c in r.delta:
                s += f", Δ {r.delta[c]:+.{decimals}f}"
            cells.append(s)
        rows.append([r.who, r.dataset, r.label, *cells, r.seeds, r.epochs])
    return headers, rows


FAITHFULNESS_SHOWN = (("deletion", "black"), ("insertion", "blur"))  # the pairs the findings list name


ACROSS_SEEDS = {  # the seeds stage's comparisons, as a sentence names them
    "adjusted_vs_control": "pHash-adjusted widths vs uniform-width control, test top-1",
    "adjusted_vs_control_welch": "pHash-adjusted widths vs uniform-width control, test top-1 (unpaired)",
    "adjusted_vs_baseline": "pHash-adjusted widths vs the baseline, test top-1",
    "encdec_vs_resnet18": "encoder-decoder vs its ResNet-18 trunk as a classifier, test top-1",
    "importance_vs_l1_norm": "filter pruning by gradient importance vs by L1 norm, error averaged over the fractions",
    "importance_vs_random": "filter pruning by gradient importance vs random, error averaged over the fractions",
    "l1_norm_vs_random": "filter pruning by L1 norm vs random, error averaged over the fractions",
}


def _seeds(seeds: list[int]) -> str:
    return f"seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}"


def findings(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One sentence per comparison a stage tested, each the test's own verdict (n, effect, test, p): across seeds
    (the seeds stage: adjusted vs control and vs the baseline, encoder-decoder vs ResNet-18, the pruning rankings)
    with how often each seed's own test (McNemar, paired bootstrap) was significant; each attribution method
    against random maps (visualize). Nothing is said of a comparison no stage tested."""
    out = []
    for ds, files in metrics.items():
        seeds = files.get("seeds.json") or {}
        for name, test in (seeds.get("tests") or {}).items():
            out.append(f"{ds}, {ACROSS_SEEDS.get(name, name)}, across {seeds['n']} seeds: {test['verdict']}.")
        for name, entries in (seeds.get("per_seed_tests") or {}).items():
            a, b, neither = S.tally(entries)
            counts = [f"{entries[0]['a']} better in {_seeds(a)}" if a else "",
                      f"{entries[0]['b']} better in {_seeds(b)}" if b else "",
                      f"not distinguishable in {_seeds(neither)}" if neither else ""]
            out.append(f"{ds}, {name}, each seed's own {entries[0]['test']} test (n={entries[0]['n']} per seed, "
                       f"α=0.05): {'; '.join(c for c in counts if c)} (p = "
                       + ", ".join(f"{e['p_value']:.2g}" for e in entries) + ").")
        if not seeds:  # a run outside the seeds stage: the one seed's own tests
            adjusted = files.get("adjusted.json") or {}
            for name, test in (adjusted.get("adjusted_vs_control") or {}).items():
                out.append(f"{ds}, pHash-adjusted widths vs uniform-width control ({name}): {test['verdict']}.")
            sweep = (files.get("prune.json") or {}).get("sweep") or {}
            for test in (sweep.get("tests") or {}).values():
                out.append(f"{ds}, filter pruning, error averaged over the sweep's fractions: {test['verdict']}.")
        faith = (files.get("visualize.json") or {}).get("faithfulness") or {}
        methods = faith.get("methods") or {}
        for method, entry in methods.items():
            for metric, baseline in FAITHFULNESS_SHOWN:
                cell = entry.get(metric, {}).get(baseline) or {}
                test, control = cell.get("vs_random"), (methods.get("random", {}).get(metric, {}).get(baseline) or {})
                if test and control:
                    out.append(f"{ds}, {method}, {metric} AUC ({baseline} baseline, '{faith.get('sign')}' sign rule): "
                               f"{cell['auc']['mean']:.3f} vs {control['auc']['mean']:.3f} for random maps, paired "
                               f"difference {test['mean_difference']:+.3f} ({int(100 * test['confidence'])} % CI "
                               f"[{test['ci_low']:+.3f}, {test['ci_high']:+.3f}], Wilcoxon signed-rank): "
                               f"{test['verdict']}.")
    return out


def results_markdown_block(tables: Sequence[Table], papers: Mapping[str, Any], decimals: int,
                           found: Sequence[str] = ()) -> str:
    """The tables part of RESULTS.md, the same text the README's results block holds, after the findings."""
    parts = []
    if found:
        parts.append("### Findings, as the tests state them\n\nEach line is generated from a test a stage ran "
                     "(its n, effect and p-value); α = 0.05.\n\n" + "\n".join(f"- {f}" for f in found))
    for t in tables:
        short = papers.get(t.paper, {}).get("short", t.paper.upper())
        headers, rows = table_cells(t, decimals)
        parts.append(f"### {short} {t.title}\n\n{t.unit}; paper: {t.source}. "
                     f"Δ: ours − paper on the same dataset; ± sample std over n seeds.\n\n{md_table(headers, rows)}")
        if t.note:
            parts.append(f"_{t.note}_")
    return "\n\n".join(parts) + "\n"


def render_markdown(ctx: Mapping[str, Any]) -> str:
    """RESULTS.md: provenance, then the results block between the README markers."""
    cfg: ReportConfig = ctx["config"]
    prov = ctx["provenance"]
    lines = [f"# {cfg.title} — results", "",
             "Generated by the `report` stage (`dvc repro report`); do not edit by hand. "
             "The full page with every figure is `reports/index.html`.", "",
             md_table(["Provenance", ""], [(k, v) for k, v in prov.items()]), ""]
    times = ctx.get("stage_times", [])
    if times:
        lines += ["Time per stage:", "",
                  md_table(["Dataset", "Stage", "Stage seconds", "Training seconds", "Threads"],
                           [(t["dataset"], t["stage"], _fmt(t["seconds"], 1), _fmt(t["train_seconds"], 1),
                             t["threads"] if t["threads"] is not None else "—") for t in times]), ""]
    lines += ["## Paper tables, paper beside ours", "", BLOCK_START,
              results_markdown_block(ctx["tables"], ctx["papers"], cfg.decimals, ctx.get("findings", ())).rstrip("\n"),
              BLOCK_END, ""]
    raw = ctx.get("stage_tables_text", {})
    claimed = [(p, raw[p]) for t in ctx["tables"] for name in t.stage_tables for p in raw if p.rsplit("/", 1)[-1] == name]
    if claimed:
        lines += ["## The stages' own tables", ""]
        lines += [f"### `reports/tables/{p}`\n\n{stage_table_markdown(p, text).strip()}\n" for p, text in claimed]
    lines += ["## Beyond the papers", ""]
    for b in ctx.get("beyond_results", []):
        lines += [f"### {b['title']}", "", f"{b['caption']} (`{b['source']}`)", ""]
        for d in b["datasets"]:
            lines += [f"{d['dataset']}:", "", md_table(d["headers"], d["rows"]) if d["rows"] else f"_{MISSING}_", ""]
    beyond = [(p, raw[p]) for p, _ in ctx["beyond_tables"]]
    lines += [f"### `reports/tables/{p}`\n\n{stage_table_markdown(p, text).strip()}\n" for p, text in beyond] or [
        "No extra tables yet.", ""]
    return "\n".join(lines)


def stage_table_markdown(name: str, text: str) -> str:
    """A stage's table file as Markdown (CSV converted, Markdown verbatim)."""
    if name.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        return md_table(rows[0], rows[1:]) if rows else "_empty table_"
    lines, fenced = [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        m = None if fenced else re.match(r"(#{1,6}) ", line)
        lines.append("#" * min(6, len(m.group(1)) + HEADING_SHIFT) + line[len(m.group(1)):] if m else line)
    return "\n".join(lines)


def extract_block(text: str) -> str | None:
    """The text between the results markers, or None when the markers are absent."""
    m = re.search(re.escape(BLOCK_START) + r"\n?(.*?)\n?" + re.escape(BLOCK_END), text, flags=re.S)
    return None if m is None else m.group(1)


def replace_block(text: str, block: str) -> str | None:
    """``text`` with the results block replaced by ``block``; None when it has no markers."""
    if extract_block(text) is None:
        return None
    start = text.index(BLOCK_START) + len(BLOCK_START)
    end = text.index(BLOCK_END, start)
    return text[:start] + "\n" + block.strip("\n") + "\n" + text[end:]


# ---------------------------------------------------------------- HTML

_HTML = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ cfg.title }}</title>
<style>
:root { --fg:#1d2330; --muted:#5b6475; --line:#dde2ea; --accent:#2a6fdb; --paper:#fff7e6; --ours:#eef5ff; }
* { box-sizing:border-box; }
body { margin:0; font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:#fafbfc; }
header { background:#1d2330; color:#fff; padding:2rem 1.5rem 1.5rem; }
header h1 { margin:0 0 .3rem; font-size:1.6rem; } header p { margin:0; color:#c9d1e0; }
main { max-width:1150px; margin:0 auto; padding:1rem 1.5rem 4rem; }
nav.toc { background:#fff; border:1px solid var(--line); border-radius:8px; padding:.8rem 1.2rem; margin:1.2rem 0; }
nav.toc ol { margin:.3rem 0; padding-left:1.3rem; } nav.toc a { color:var(--accent); text-decoration:none; }
h2 { border-bottom:2px solid var(--line); padding-bottom:.3rem; margin-top:2.5rem; }
h3 { margin-top:1.8rem; }
table { border-collapse:collapse; margin:.6rem 0 1rem; background:#fff; font-size:.92rem; }
caption { text-align:left; font-weight:600; padding:.2rem 0; }
th, td { border:1px solid var(--line); padding:.35rem .6rem; text-align:left; vertical-align:top; }
th { background:#f0f3f8; } td.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.paper td { background:var(--paper); } tr.ours td { background:var(--ours); }
.meta, .note, figcaption { color:var(--muted); font-size:.9rem; }
.missing { color:#a33; }
.figs { display:flex; flex-wrap:wrap; gap:1rem; }
figure { margin:0; background:#fff; border:1px solid var(--line); border-radius:8px; padding:.6rem; max-width:100%; }
figure img { max-width:100%; height:auto; display:block; }
details { margin:.5rem 0 1rem; } summary { cursor:pointer; color:var(--accent); }
code { background:#eef0f4; padding:0 .25rem; border-radius:3px; }
</style>
<script>
// Marks every image loaded/broken so a headless browser can check the page (tests/test_browser.py).
function cnnvisMark() {
  document.querySelectorAll("img").forEach(function (img) {
    img.dataset.state = img.complete ? (img.naturalWidth > 0 ? "loaded" : "broken") : "pending";
  });
  document.body.dataset.imagesChecked = "yes";
}
window.addEventListener("load", cnnvisMark);
</script>
</head>
<body>
<header>
<h1>{{ cfg.title }}</h1>
<p>Each paper's tables with our numbers beside them, each figure under its paper number. Datasets: {{ datasets | join(", ") or "none" }}.</p>
</header>
<main>
<nav class="toc"><strong>Contents</strong>
<ol>
<li><a href="#provenance">Provenance</a></li>
<li><a href="#tables">Paper tables, paper beside ours</a>
<ol>{% for t in tables %}<li><a href="#{{ t.id }}">{{ papers[t.paper].short }} {{ t.title }}</a></li>{% endfor %}</ol></li>
<li><a href="#figures">Figures by paper</a>
<ol>{% for p, fes in figures_by_paper %}<li><a href="#figures-{{ p }}">{{ papers[p].short if p in papers else p }}</a></li>{% endfor %}</ol></li>
<li><a href="#beyond">Beyond the papers</a></li>
<li><a href="#metrics">All metrics</a></li>
</ol></nav>

<section id="provenance"><h2>Provenance</h2>
<table class="prov">{% for k, v in provenance.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
{% if stage_times %}
<h3>Time per stage</h3>
<table id="stage-times"><thead><tr><th>Dataset</th><th>Stage</th><th>Stage seconds</th><th>Training seconds</th><th>Threads</th></tr></thead><tbody>
{% for t in stage_times %}<tr><td>{{ t.dataset }}</td><td>{{ t.stage }}</td><td class="num">{{ fmt(t.seconds, 1) }}</td><td class="num">{{ fmt(t.train_seconds, 1) }}</td><td class="num">{{ t.threads if t.threads is not none else "—" }}</td></tr>{% endfor %}
</tbody></table>
{% else %}<p class="meta">No stage recorded its time yet.</p>{% endif %}
</section>

{% if findings %}<section id="findings"><h2>Findings, as the tests state them</h2>
<p>Each line is generated from a test a stage ran (its n, effect and p-value); α = 0.05.</p>
<ul>{% for f in findings %}<li>{{ f }}</li>{% endfor %}</ul></section>{% endif %}
<section id="tables"><h2>Paper tables, paper beside ours</h2>
<p class="meta">Rows shaded yellow are the paper's, blue are ours. Δ: ours − paper on the same dataset; ± sample std over n seeds. "{{ missing }}" marks a stage that has not produced this metric yet.</p>
{% for t in tables %}
<h3 id="{{ t.id }}">{{ papers[t.paper].short }} {{ t.title }}</h3>
<p class="meta">{{ t.unit }} · source: {{ t.source }}</p>
{% set hr = cells(t) %}
<table class="comparison" data-table="{{ t.id }}"><thead><tr>{% for h in hr[0] %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in hr[1] %}<tr class="{{ row[0] }}">{% for c in row %}<td{% if loop.index > 3 and loop.index <= 3 + t.columns|length %} class="num"{% endif %}>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
{% for name in t.stage_tables %}{% for path, html in stage_tables_for(name) %}
<details open><summary>The stage's own table: <code>{{ path }}</code></summary>{{ html | safe }}</details>
{% endfor %}{% endfor %}
{% endfor %}
</section>

<section id="figures"><h2>Figures by paper</h2>
{% for p, fes in figures_by_paper %}
<h3 id="figures-{{ p }}">{{ papers[p].short if p in papers else p }} — {{ papers[p].title if p in papers else "other figures" }}</h3>
{% for fe in fes %}
<div class="figentry" data-figure="{{ fe.key }}">
<h4>{{ fe.number }}</h4>
<p class="meta">{{ fe.caption }}</p>
{% if fe.images %}<div class="figs">{% for ds, name, src in fe.images %}
<figure><img src="{{ src }}" alt="{{ fe.number }} ({{ ds }}): {{ name }}" loading="eager"><figcaption>{{ fe.number }} — {{ ds }} — <code>{{ name }}</code></figcaption></figure>
{% endfor %}</div>{% endif %}
{% if fe.missing %}<p class="missing">Missing for {{ fe.missing | join(", ") }}: no file in <code>reports/figures/&lt;dataset&gt;/</code> named {% for k in fe.key.split(", ") %}<code>{{ k }}*</code>{{ " or " if not loop.last }}{% endfor %} yet.</p>{% endif %}
{% if not fe.images and not fe.expected %}<p class="meta">Not reproduced as a picture (the paper's is a drawing).</p>{% endif %}
</div>
{% endfor %}
{% endfor %}
</section>

<section id="beyond"><h2>Beyond the papers</h2>
<p class="meta">Sanity checks, controls and baselines the papers do not report: the stages' tables not shown above and figures outside the papers' numbering.</p>
{% for b in beyond_results %}
<h3 id="beyond-{{ loop.index }}">{{ b.title }}</h3>
<p class="meta">{{ b.caption }} · <code>{{ b.source }}</code></p>
{% for d in b.datasets %}{% if d.rows %}
<table class="beyond" data-beyond="{{ b.source }}"><caption>{{ d.dataset }}</caption><thead><tr>{% for h in d.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for r in d.rows %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>
{% else %}<p class="missing">{{ d.dataset }}: {{ missing }}.</p>{% endif %}{% endfor %}
{% endfor %}
{% for path, html in beyond_tables %}<h3>{{ path }}</h3>{{ html | safe }}{% endfor %}
{% if beyond_figures %}<div class="figs">{% for ds, name, src in beyond_figures %}
<figure><img src="{{ src }}" alt="{{ ds }}: {{ name }}" loading="eager"><figcaption>{{ ds }} — <code>{{ name }}</code></figcaption></figure>
{% endfor %}</div>{% endif %}
</section>

<section id="metrics"><h2>All metrics</h2>
<p class="meta">Scalar values of every <code>reports/metrics/&lt;dataset&gt;/*.json</code> (curves and per-class lists are in the files).</p>
{% for ds, files in summary.items() %}{% for fname, items in files.items() %}
<details><summary>{{ ds }} / {{ fname }}</summary><table>{% for k, v in items %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table></details>
{% endfor %}{% endfor %}
</section>
</main>
</body>
</html>
""")


def build_context(config: ReportConfig, reference: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]],
                  stage_tables: Mapping[str, str], figures: Mapping[str, Sequence[tuple[str, str]]],
                  provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Everything both renderers need, computed once.

    ``metrics``: dataset → {file name: parsed JSON}; ``stage_tables``: path
    relative to reports/tables → text; ``figures``: dataset → [(file name, src)].
    """
    if not isinstance(reference, Mapping) or "tables" not in reference or "papers" not in reference:
        raise ConfigError("paper_reference.yaml: needs top-level 'papers' and 'tables' (see its header)")
    tables = [comparison_table(spec, metrics) for spec in reference["tables"]]
    entries, unclaimed = figure_entries(reference.get("figures", []), figures)
    papers = reference["papers"]
    by_paper: dict[str, list[FigureEntry]] = {p: [] for p in papers}
    for fe in entries:
        by_paper.setdefault(fe.paper, []).append(fe)
    beyond_figs = []
    for ds, name, src in unclaimed:  # p1_xyz.png without a catalogue entry still goes under its paper
        prefix = _basename(name).split("_", 1)[0]
        if prefix in papers:
            by_paper[prefix].append(FigureEntry(prefix, f"{papers[prefix]['short']} (other)", "A figure of this paper "
                                                "without a catalogue entry in paper_reference.yaml.", name,
                                                [(ds, name, src)], []))
        else:
            beyond_figs.append((ds, name, src))
    claimed = {n for t in tables for n in t.stage_tables}
    rendered = {path: parse_stage_table(path, text) for path, text in sorted(stage_tables.items())}
    summary = {ds: {f: flatten_scalars(doc)[: config.max_summary_rows] for f, doc in sorted(files.items())}
               for ds, files in metrics.items()}
    return {
        "config": config, "cfg": config, "papers": papers, "tables": tables, "provenance": dict(provenance),
        "stage_times": stage_times(metrics), "datasets": list(metrics),
        "figures_by_paper": [(p, fes) for p, fes in by_paper.items() if fes],
        "stage_tables": rendered, "stage_tables_text": dict(sorted(stage_tables.items())),
        "beyond_tables": [(p, h) for p, h in rendered.items() if p.rsplit("/", 1)[-1] not in claimed],
        "beyond_figures": beyond_figs, "summary": summary,
        "beyond_results": beyond_tables(reference.get("beyond", []), metrics), "findings": findings(metrics),
    }


def render_html(ctx: Mapping[str, Any]) -> str:
    cfg: ReportConfig = ctx["config"]
    return _HTML.render(
        **ctx, missing=MISSING,
        fmt=_fmt, cells=lambda t: table_cells(t, cfg.decimals),
        stage_tables_for=lambda name: [(p, h) for p, h in ctx["stage_tables"].items() if p.rsplit("/", 1)[-1] == name],
    )


# ---------------------------------------------------------------- sweeps


def aggregate(rows: Sequence[Mapping[str, Any]], group_by: Sequence[str], values: Sequence[str]) -> list[dict[str, Any]]:
    """Mean, sample std (n−1) and n of ``values`` per group; missing values are skipped, not zeros."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(g) for g in group_by), []).append(r)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        agg: dict[str, Any] = dict(zip(group_by, key, strict=True))
        agg["runs"] = len(members)
        for v in values:
            xs = [x for x in (_number(m.get(v)) for m in members) if x is not None]
            agg[f"{v}.n"] = len(xs)
            agg[f"{v}.mean"] = statistics.fmean(xs) if xs else None
            agg[f"{v}.std"] = statistics.stdev(xs) if len(xs) > 1 else None
        out.append(agg)
    return out


def mean_std(mean: float | None, std: float | None, n: int, decimals: int = 2) -> str:
    """'91.23 ± 0.40 (n=3)' — a claim with its spread and count."""
    if mean is None:
        return "—"
    spread = f" ± {std:.{decimals}f}" if std is not None else ""
    return f"{mean:.{decimals}f}{spread} (n={n})"
