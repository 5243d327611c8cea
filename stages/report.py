"""Stage `report`: one static page and RESULTS.md from every metrics file, table and figure.

    python -m stages.report --metrics reports/metrics --runs reports/runs --tables reports/tables \
        --figures reports/figures --reference reports/paper_reference.yaml \
        --html reports/index.html --markdown reports/RESULTS.md

Reads only the datasets selected in params.yaml; of the per-seed files (``…/seeds/<seed>/…``) those of
the primary seed (the first of ``seeds.list``: every seed is in the seeds stage's tables). Stages that have not run yet
show as "not run" / "missing", so the page can be built at any point of the DAG.
README.md's results block is copied from RESULTS.md outside the DAG, by
`python -m stages.readme` (`make repro` runs it after `dvc repro`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import yaml

from cnnvis import report as R
from cnnvis.io import files_below, merge_run_record, read_json_files, save_text
from cnnvis.provenance import provenance
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    cfg, datasets = ctx.section("report"), list(ctx.section("dataset") or {})
    primary = f"seeds/{ctx.section('seeds')['list'][0]}"  # the per-seed files shown: the primary seed's
    metrics_root, tables_root, figures_root = ctx.inputs["metrics"], ctx.inputs["tables"], ctx.inputs["figures"]
    runs = ctx.inputs.get("runs")

    def files(root: Path, ds: str) -> dict:  # the dataset's own files, and the primary seed's
        return {**read_json_files(root / ds / primary), **read_json_files(root / ds)}

    metrics = {ds: {name: merge_run_record(doc, files(runs, ds).get(name) if runs else None)
                    for name, doc in files(metrics_root, ds).items()} for ds in datasets}
    # tables by their own path (the page names the file; the stage tables are matched by file name)
    tables = {f.relative_to(tables_root).as_posix(): f.read_text()
              for f in files_below(tables_root, (".md", ".csv")) if shown(f.relative_to(tables_root), primary)
              and (len(f.relative_to(tables_root).parts) == 1 or f.relative_to(tables_root).parts[0] in datasets)}
    html_dir = ctx.path("html").parent
    figures = {ds: [(shown(f.relative_to(figures_root / ds), primary), source(f, cfg.embed_images, html_dir))
                    for f in files_below(figures_root / ds, cfg.image_suffixes)
                    if shown(f.relative_to(figures_root / ds), primary)] for ds in datasets}
    digest = f"sha256 {hashlib.sha256(ctx.path('params').read_bytes()).hexdigest()[:16]} of {ctx.path('params').name}"
    page = R.build_context(cfg, ctx.inputs["reference"], metrics, tables, figures, provenance(digest, ctx.hardware))
    return {"html": R.render_html(page), "markdown": R.render_markdown(page)}


def shown(rel: Path, primary: str) -> str | None:
    """``rel`` as the figure catalogue matches it: a per-seed file (``…/seeds/<seed>/…``) only of the primary
    seed, without that part; every other seed's file is left out (their results are in the seeds stage's
    tables)."""
    parts = rel.parts
    if "seeds" in parts[:-1]:
        i = parts.index("seeds")
        if "/".join(parts[i:i + 2]) != primary:
            return None
        parts = parts[:i] + parts[i + 2:]
    return Path(*parts).as_posix()


def source(f: Path, embed: bool, html_dir: Path) -> str:
    """The <img src> of a figure: a path relative to the page, or the file itself as a data: URL."""
    if not embed:
        return Path(os.path.relpath(f, html_dir)).as_posix()
    return f"data:{R.MIME.get(f.suffix.lower(), 'application/octet-stream')};base64," + \
        base64.b64encode(f.read_bytes()).decode("ascii")


def tree(path: Path) -> Path:
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return path


STAGE = Stage(
    "report", __doc__, run, per_dataset=False,
    params={"report": R.ReportConfig, "dataset": None, "seeds": None},
    inputs={"metrics": Input(tree, "reports/metrics"), "runs": Input(tree, "reports/runs", required=False),
            "tables": Input(tree, "reports/tables"),
            "figures": Input(tree, "reports/figures"),
            "reference": Input(lambda p: yaml.safe_load(p.read_text()), "the papers' numbers", made_by="git")},
    outputs={"html": Output(save_text, help="the page"), "markdown": Output(save_text, help="RESULTS.md")},
)
main = STAGE.main

if __name__ == "__main__":
    main()
