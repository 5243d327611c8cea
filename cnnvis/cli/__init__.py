"""The ``cnnvis`` command: attribution maps, pHash similarity and filter importance on your own model and images.

This package is the application entry point of cnnvis (the rest of ``cnnvis`` is
a pure library): it reads model, weights and image files, prints one summary
line on stdout, draws progress bars on stderr when stderr is a terminal, and
writes result files. Every output directory is written under a temporary name
and renamed when complete, so a failed run leaves nothing behind. Bad input
ends with one line on stderr (``cnnvis <command>: error: …``) and exit code 2.

    cnnvis explain    --model torchvision:resnet18 --weights w.pt --images DIR --method guided-gradcam --out DIR
    cnnvis phash      --images DIR --out DIR
    cnnvis importance --model torchvision:resnet18 --weights w.pt --images DIR --out DIR

``main(argv)`` runs one command and returns its exit code (the console script
calls it with ``sys.argv[1:]``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cnnvis import CnnvisError, __version__
from cnnvis.cli._inputs import UsageError

COMMANDS = ("explain", "phash", "importance")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with its errors raised as ``UsageError`` (one line, instead of usage text and ``sys.exit``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from cnnvis.cli import explain, importance, phash

    parser = _Parser(prog="cnnvis", description="Seeing inside convolutional networks: attribution maps, perceptual-hash "
                                                "similarity and filter importance on your own model and images.",
                     epilog="Run `cnnvis COMMAND --help` for the options, conventions and outputs of each command.")
    parser.add_argument("--version", action="version", version=f"cnnvis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module in (explain, phash, importance):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``cnnvis`` command; returns the exit code (0, 2 for bad input, 130 if interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    prog = f"cnnvis {argv[0]}" if argv and argv[0] in COMMANDS else "cnnvis"
    try:
        args = parser.parse_args(argv)
        summary = args.run(args)
    except SystemExit as e:  # --help and --version
        return int(e.code or 0)
    except (UsageError, CnnvisError) as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the message
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary)
    return 0


__all__ = ["main", "build_parser", "UsageError"]
