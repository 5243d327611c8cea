"""`dvc repro`'s first stage: params.yaml must be the composition of conf/ it records.

    python -m stages.params_check [--params params.yaml]

``python -m stages.compose`` writes the overrides it composed with into params.yaml
(``_compose.overrides``); this check composes conf/ again with them and fails on any
difference: a conf/ edit that was not recomposed, or a hand-edited params.yaml. A
params.yaml that `dvc exp run -S ...` composed carries no record (DVC writes its own
composition, overrides included) and is accepted as DVC's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from stages import compose


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=compose.ROOT / "params.yaml")
    args = p.parse_args(argv)
    try:
        data = yaml.safe_load(args.params.read_text())
    except (OSError, yaml.YAMLError) as e:
        print(f"params-check: error: {args.params}: unreadable ({type(e).__name__}); regenerate it with "
              "`python -m stages.compose`", file=sys.stderr)
        return 2
    record = data.get(compose.RECORD) if isinstance(data, dict) else None
    if not isinstance(record, dict):
        print(f"params-check: {args.params} carries no composition record (composed by `dvc exp run`): accepted")
        return 0
    try:
        compose.main(["--check", "--out", str(args.params), *[str(o) for o in record.get("overrides") or []]])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
