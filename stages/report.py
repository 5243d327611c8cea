"""Stage `report`: one static page and RESULTS.md from every metrics, table and figure.

    python -m stages.report --metrics reports/metrics --tables reports/tables --figures reports/figures \
        --reference reports/paper_reference.yaml --html reports/index.html --markdown reports/RESULTS.md \
        --readme README.md

Reads only the datasets selected in params.yaml. Stages that have not run yet
show as "not run" / "missing", so the page can be built at any point of the DAG.
``--readme``: the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` is replaced by RESULTS.md's tables (nothing happens
when README.md has no markers). README.md is deliberately not a DVC output: it
is hand-written around the block, and owning it would make every prose edit
look like a changed pipeline result. ``--readme-only`` just copies the block of
an existing RESULTS.md into README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from cnnvis import ConfigError
from cnnvis import report as R
from cnnvis.io import save_text
from stages._common import Params, add_common_args, stage_main

PARAMS = ("report", "dataset")
INPUTS = ("--metrics", "--tables", "--figures", "--reference")
OUTPUTS = ("--html", "--markdown")
# paths in the cmd that DVC deliberately does not track (the contract test's SCRATCH): README.md gets a
# generated block inside a hand-written file, so it is not a DVC out (see the module docstring)
SCRATCH = ("--readme",)

log = logging.getLogger("cnnvis.report")
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".svg": "image/svg+xml", ".webp": "image/webp"}


def read_metrics(root: Path, datasets: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ds in datasets:
        files = {}
        for f in sorted((root / ds).glob("*.json")):
            try:
                files[f.name] = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"{f}: not valid JSON ({e}); rerun the stage that writes it") from None
        out[ds] = files
    return out


def read_tables(root: Path, datasets: list[str]) -> dict[str, str]:
    """Tables at the top of reports/tables and in the selected datasets' subfolders."""
    found = {}
    for f in sorted(root.rglob("*")) if root.is_dir() else []:
        rel = f.relative_to(root)
        if f.suffix not in (".md", ".csv") or f.name.startswith("."):
            continue
        if len(rel.parts) > 1 and rel.parts[0] not in datasets:
            continue
        found[rel.as_posix()] = f.read_text()
    return found


def read_figures(root: Path, datasets: list[str], cfg: R.ReportConfig, html_dir: Path) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for ds in datasets:
        items = []
        # stages may write into subfolders (reports/figures/<ds>/visualize/): the name keeps that path
        for f in sorted((root / ds).rglob("*")) if (root / ds).is_dir() else []:
            if f.suffix.lower() not in cfg.image_suffixes or any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            if cfg.embed_images:
                src = f"data:{MIME.get(f.suffix.lower(), 'application/octet-stream')};base64," + base64.b64encode(
                    f.read_bytes()).decode("ascii")
            else:
                src = Path(os.path.relpath(f, html_dir)).as_posix()
            items.append(((f.relative_to(root / ds)).as_posix(), src))
        out[ds] = items
    return out


def provenance(params_path: Path, params: Params) -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    rev = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    hw = params.hardware

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "git revision": "unknown (not a git checkout)" if rev is None else rev + (" (uncommitted changes)" if dirty else ""),
        "date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "params digest": f"sha256 {hashlib.sha256(params_path.read_bytes()).hexdigest()[:16]} of {params_path.name}",
        "hardware": f"{cpu}, {os.cpu_count()} logical CPUs; device {hw.device}, threads "
                    f"{hw.threads or 'all'} (per stage: see the times below)",
        "software": f"Python {platform.python_version()}, torch {version('torch')}, captum {version('captum')}, "
                    f"dvc {version('dvc')}, {platform.system()} {platform.release()}",
    }


def sync_readme(readme: Path, markdown_text: str) -> bool:
    """Replace README's results block with RESULTS.md's; False when README has no markers."""
    if not readme.exists():
        return False
    block = R.extract_block(markdown_text)
    if block is None:
        raise ConfigError("RESULTS.md has no results markers; regenerate it with `dvc repro report`")
    new = R.replace_block(readme.read_text(), block)
    if new is None:
        log.info("%s has no %s markers; left unchanged", readme, R.BLOCK_START)
        return False
    if new != readme.read_text():
        save_text(readme, new)
    return True


@stage_main("report")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", type=Path, default=Path("reports/metrics"))
    p.add_argument("--tables", type=Path, default=Path("reports/tables"))
    p.add_argument("--figures", type=Path, default=Path("reports/figures"))
    p.add_argument("--reference", type=Path, default=Path("reports/paper_reference.yaml"))
    p.add_argument("--html", type=Path, default=Path("reports/index.html"))
    p.add_argument("--markdown", type=Path, default=Path("reports/RESULTS.md"))
    p.add_argument("--readme", type=Path, default=None, help="update the results block of this README")
    p.add_argument("--readme-only", action="store_true", help="only copy RESULTS.md's block into --readme")
    add_common_args(p)
    args = p.parse_args(argv)

    if args.readme_only:
        if args.readme is None:
            raise ConfigError("--readme-only needs --readme README.md")
        sync_readme(args.readme, args.markdown.read_text())
        return

    params = Params.load(args.params, PARAMS)
    cfg = params.section("report", R.ReportConfig)
    datasets = list(params.raw("dataset") or {})
    try:
        reference = yaml.safe_load(args.reference.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{args.reference}: missing; it holds the papers' numbers and is committed in git") from None

    metrics = read_metrics(args.metrics, datasets)
    ctx = R.build_context(cfg, reference, metrics, read_tables(args.tables, datasets),
                          read_figures(args.figures, datasets, cfg, args.html.parent), provenance(Path(args.params), params))
    markdown = R.render_markdown(ctx)
    save_text(args.html, R.render_html(ctx))
    save_text(args.markdown, markdown)
    if args.readme is not None:
        sync_readme(args.readme, markdown)
    n_ours = sum(t.has_ours for t in ctx["tables"])
    n_figs = sum(len(fe.images) for _, fes in ctx["figures_by_paper"] for fe in fes)
    log.info("report: %d datasets, %d/%d paper tables with our numbers, %d figures -> %s, %s",
             len(datasets), n_ours, len(ctx["tables"]), n_figs, args.html, args.markdown)


if __name__ == "__main__":
    main()
