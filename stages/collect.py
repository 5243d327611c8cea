"""Collect a Hydra sweep: one table of every job's metrics, mean ± std over seeds.

    python -m stages.collect multirun/2026-11-22/00-25-14
    python -m stages.collect multirun/... --metric test.top1 --metric train_seconds

Reads every job directory under the sweep (those with a `sweep.json`, written
by `stages.sweep`): its `params.yaml`, its overrides and its
`reports/metrics/<dataset>/*.json` and, of the per-seed stages,
`reports/metrics/<dataset>/seeds/<seed>/*.json`. Writes into the sweep directory:

- `jobs.csv`: one row per job × dataset × metrics file, every scalar metric, and
  the job's torch threads (0: all cores);
- `summary.csv` and `summary.md`: per dataset, device, stage and setting (the
  job's overrides without its seed), each metric as mean, sample std (n−1)
  and n over the seeds; failed jobs are listed, never averaged in.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from cnnvis import ConfigError
from cnnvis import report as R
from cnnvis.io import save_text
from stages._runner import command

log = logging.getLogger("cnnvis.collect")
# identity of a run, not a result: never averaged
NOT_RESULTS = {"seed", "seeds", "epochs", "threads", "train_images", "test_images"}
GROUP = ("dataset", "device", "stage", "setting")


def _is_seed(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split(".")[-1] in ("seed", "seeds") or key.split(".")[0] == "seeds"  # train.seed, seeds.list


def _varying(overrides: list[str], common: set[str]) -> list[str]:
    """The overrides that make a setting: not the seed, dataset or launcher, not shared by every job."""
    return [o for o in overrides if o not in common and not _is_seed(o)
            and not o.lstrip("+").startswith(("dataset=", "launcher=", "hydra."))]


def job_rows(job_dir: Path, record: dict[str, Any], sweep_root: Path,
             common: set[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A job's metric rows and its status, from its ``sweep.json`` record and its reports."""
    params = yaml.safe_load((job_dir / "params.yaml").read_text()) if (job_dir / "params.yaml").exists() else {}
    setting = " ".join(_varying(record.get("overrides", []), common))
    hardware = params.get("hardware") or {}
    base = {"job": job_dir.relative_to(sweep_root).as_posix(), "device": hardware.get("device", "?"),
            "setting": setting or "—", "status": record.get("status", "?"),
            "threads": record.get("threads", hardware.get("threads", ""))}
    rows = []
    metrics = job_dir / "reports" / "metrics"
    # <dataset>/<stage>.json, and the per-seed stages' <dataset>/seeds/<seed>/<stage>.json (seed: the folder)
    for f in sorted([*metrics.glob("*/*.json"), *metrics.glob("*/seeds/*/*.json")]):
        if f.name == "seeds.json":
            continue  # the job's own aggregate over its seeds: its seed rows are here already
        doc = json.loads(f.read_text())
        per_seed = f.parent.parent.name == "seeds"
        row = {**base, "dataset": f.parents[2].name if per_seed else f.parent.name, "stage": f.stem,
               "seed": int(f.parent.name) if per_seed else doc.get("seed", (params.get("train") or {}).get("seed"))}
        for k, v in R.flatten_scalars(doc):
            if k not in NOT_RESULTS and isinstance(v, (int, float)) and not isinstance(v, bool):
                row[k] = v
        rows.append(row)
    return rows, {**base, "error": record.get("error")}


def collect(sweep_dir: Path, metrics: list[str] | None = None) -> dict[str, str]:
    """The three files' contents for a sweep directory."""
    jobs = sorted({p.parent for p in sweep_dir.rglob("sweep.json")}, key=lambda p: [int(s) if s.isdigit() else s for s in p.parts])
    if not jobs:
        raise ConfigError(f"{sweep_dir}: no job directories with sweep.json; is it a `python -m stages.sweep -m` output?")
    records = [json.loads((j / "sweep.json").read_text()) for j in jobs]
    overrides = [r.get("overrides", []) for r in records]
    common = set.intersection(*(set(o) for o in overrides)) if len(overrides) > 1 else set()
    rows, failed = [], []
    for job, record in zip(jobs, records, strict=True):
        r, info = job_rows(job, record, sweep_dir, common)
        rows += [x for x in r if info["status"] == "ok"]
        if info["status"] != "ok":
            failed.append(info)
    ident = ["job", "dataset", "device", "stage", "setting", "seed", "threads", "status"]
    keys = metrics or sorted({k for r in rows for k in r} - set(ident))
    summary = R.aggregate(rows, GROUP, keys)

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(ident + keys)
    w.writerows([[r.get(k, "") for k in ident + keys] for r in rows])
    jobs_csv = out.getvalue()

    long = [{**{g: s[g] for g in GROUP}, "metric": k, "mean": s[f"{k}.mean"], "std": s[f"{k}.std"], "n": s[f"{k}.n"],
             "runs": s["runs"]} for s in summary for k in keys if s[f"{k}.n"]]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=[*GROUP, "metric", "mean", "std", "n", "runs"], lineterminator="\n")
    w.writeheader()
    w.writerows(long)
    summary_csv = out.getvalue()

    md = [f"# Sweep `{sweep_dir.name}`", "",
          f"{len(jobs)} jobs ({len(failed)} failed). Mean ± sample std (n−1) over seeds; n = runs with the metric.",
          f"Overrides common to every job: `{' '.join(sorted(common))}`." if common else "", "",
          R.md_table([*GROUP, "metric", "mean ± std (n)"],
                     [[x[g] for g in GROUP] + [x["metric"], R.mean_std(x["mean"], x["std"], x["n"])] for x in long]), ""]
    if failed:
        md += ["Failed jobs (not averaged):", "", R.md_table(["job", "setting", "error"],
                                                            [[f["job"], f["setting"], f["error"] or "?"] for f in failed]), ""]
    return {"jobs.csv": jobs_csv, "summary.csv": summary_csv, "summary.md": "\n".join(md)}


@command("collect")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path, help="a multirun/<date>/<time> directory of stages.sweep")
    p.add_argument("--metric", action="append", default=None, help="dotted metric key to keep (repeatable; default: all)")
    p.add_argument("--out", type=Path, default=None, help="directory for the tables (default: the sweep directory)")
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise ConfigError(f"{args.sweep_dir}: not a directory")
    files = collect(args.sweep_dir, args.metric)
    out = args.out or args.sweep_dir
    for name, text in files.items():
        save_text(out / name, text)
    print(files["summary.md"])
    log.info("collect: wrote %s", ", ".join(str(out / n) for n in files))


if __name__ == "__main__":
    main()
