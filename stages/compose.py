"""Compose conf/ into params.yaml exactly as `dvc exp run` does (DVC's own function).

    python -m stages.compose                     # write params.yaml
    python -m stages.compose experiment=ci       # with Hydra overrides
    python -m stages.compose --check             # exit 1 if params.yaml drifted from the composition it records
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


RECORD = "_compose"  # params.yaml's record of how it was composed: the stages re-check it at every run


def compose(overrides: list[str], out: Path, conf_dir: Path = ROOT / "conf", *, record: bool = True) -> None:
    """conf/ composed with ``overrides`` into ``out`` by DVC's own function, plus the record of the overrides
    (``_compose.overrides``) the stages use to catch a hand-edited or stale params.yaml."""
    import yaml
    from dvc.utils.hydra import compose_and_dump
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    compose_and_dump(out, str(conf_dir.resolve()), None, "config", str(ROOT), overrides)
    if record:
        with open(out, "a") as fh:
            fh.write(yaml.safe_dump({RECORD: {"overrides": list(overrides)}}, sort_keys=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=ci 'dataset=[digits]'")
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    parser.add_argument("--out", default=str(ROOT / "params.yaml"))
    parser.add_argument("--conf", default=str(ROOT / "conf"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.check and not args.overrides and out.exists():  # check the composition the file records
        import yaml

        try:
            record = (yaml.safe_load(out.read_text()) or {}).get(RECORD) or {}
        except (yaml.YAMLError, AttributeError):
            record = {}
        args.overrides = [str(o) for o in record.get("overrides") or []] if isinstance(record, dict) else []
    with tempfile.TemporaryDirectory() as tmp:
        composed = Path(tmp) / "params.yaml"
        try:
            compose(args.overrides, composed, Path(args.conf))
        except Exception as e:  # hydra's errors: unknown group option, bad override syntax
            print(f"compose: error: {str(e).splitlines()[0]}", file=sys.stderr)
            raise SystemExit(2) from None
        text = composed.read_text()
    if args.check:
        current = out.read_text() if out.exists() else ""
        if current != text:
            diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(out), "conf/ composed"))
            print(f"compose: {out} differs from the composition of conf/; run `python -m stages.compose"
                  f"{' ' + ' '.join(args.overrides) if args.overrides else ''}`\n{diff}", file=sys.stderr)
            raise SystemExit(1)
        print(f"compose: {out} matches conf/")
        return
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(text)
    tmp_out.replace(out)
    print(f"compose: wrote {out}")


if __name__ == "__main__":
    main()
