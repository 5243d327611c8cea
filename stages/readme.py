"""Copy the results block of reports/RESULTS.md into README.md (outside the DAG; `make repro` runs it).

    python -m stages.readme [--results reports/RESULTS.md] [--readme README.md] [--check]

README.md is hand-written around the block between ``<!-- results:start -->`` and
``<!-- results:end -->``; owning it as a DVC output would make every prose edit
look like a changed result, so the `report` stage writes RESULTS.md only and this
command copies its block. ``--check`` exits 1 when the two differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnvis import report as R
from cnnvis.io import save_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("reports/RESULTS.md"))
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's block differs from RESULTS.md's")
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
    if args.check:
        if new != text:
            print(f"readme: {args.readme}'s results block differs from {args.results}; run `python -m stages.readme`",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        save_text(args.readme, new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
