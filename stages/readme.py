"""Write README.md's generated blocks (outside the DAG; `make repro` runs it).

    python -m stages.readme [--results reports/RESULTS.md] [--readme README.md] [--metrics reports/metrics]
                            [--params params.yaml] [--check]

README.md is hand-written around two generated blocks: the results block (between ``<!-- results:start -->``
and ``<!-- results:end -->``), copied from RESULTS.md, and, where it has their markers, the headlines (between
``<!-- headlines:start -->`` and ``<!-- headlines:end -->``), generated from the metrics of params.yaml's
datasets and primary seed (``cnnvis.headlines``: measured means with their spread and the tests' own verdicts).
Owning README as a DVC output would make every prose edit look like a changed result, so the `report` stage
writes RESULTS.md only and this command fills the blocks. ``--check`` exits 1 when either block is out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cnnvis import CnnvisError, ConfigError
from cnnvis import report as R
from cnnvis.headlines import between, headlines, with_headlines
from cnnvis.io import read_json_files, save_text


def run_metrics(metrics: Path, params: Path) -> tuple[dict, int]:
    """{dataset: {file: json}} of params.yaml's datasets (their own files and the primary seed's), the primary seed."""
    doc = yaml.safe_load(params.read_text()) or {}
    primary = int(((doc.get("seeds") or {}).get("list") or [0])[0])
    return {ds: {**read_json_files(metrics / ds / "seeds" / str(primary)), **read_json_files(metrics / ds)}
            for ds in (doc.get("dataset") or {})}, primary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("reports/RESULTS.md"))
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--metrics", type=Path, default=Path("reports/metrics"), help="the run's metrics, for the headlines")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="its datasets and primary seed")
    p.add_argument("--check", action="store_true", help="exit 1 if a block of README.md is out of date")
    args = p.parse_args(argv)
    for path in (args.results, args.readme):
        if not path.is_file():
            print(f"readme: error: {path}: missing; run `dvc repro report` first", file=sys.stderr)
            return 2
    block, text = R.extract_block(args.results.read_text()), args.readme.read_text()
    new = R.replace_block(text, block) if block is not None else None
    if new is None:
        print(f"readme: error: {args.results if block is None else args.readme}: no {R.BLOCK_START} … markers",
              file=sys.stderr)
        return 2
    if between(new) is not None:  # a README without the headlines markers has only the results block
        try:
            if not args.params.is_file():
                raise ConfigError(f"{args.params}: missing; the headlines need its datasets and seeds")
            new = with_headlines(new, headlines(*run_metrics(args.metrics, args.params)))
        except (CnnvisError, yaml.YAMLError) as e:
            print(f"readme: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
    if args.check:
        if new != text:
            print(f"readme: {args.readme}'s generated blocks differ from their sources (results: {args.results}, headlines: "
                  f"{args.metrics}); run `python -m stages.readme`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        save_text(args.readme, new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
