"""The ``rts`` command line (also ``python -m rts``).

Each subcommand is a thin module of this package, ``rts.cli.<command>``, that defines
``add_arguments(parser)`` and ``run(args) -> int`` over the library. A module is imported only when
its command runs, so ``rts check`` does not pay for importing torch. An :class:`rts.errors.RtsError`
prints one line and exits with its class's code (``rts.errors``); anything else is a bug and keeps
its traceback.

Conventions every subcommand follows: what it writes is ``-o/--out PATH`` (older spellings such as
``--json OUT`` or a positional output folder still work, unlisted); ``--help`` shows each option's
default; ``-v`` goes before or after the command; ``rts --version`` prints the version.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rts import __version__
from rts.errors import exit_on_error
from rts.logs import configure

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("rts.cli.synth", "write the synthetic RTS dataset in the real on-disk format"),
    "check": ("rts.cli.check", "run every data check of the dataset format; exit 1 on any problem"),
    "score": ("rts.cli.score", "score a folder of probability GeoTIFFs against label GeoTIFFs"),
    "predict": ("rts.cli.predict", "predict RTS over scenes or a tile list with a model package"),
    "merge": ("rts.cli.merge", "mosaic the outputs of several predict chunks"),
    "tiles": ("rts.cli.tiles", "build a training dataset from scenes and RTS polygons"),
    "profile": ("rts.cli.profile", "measure peak memory and step time; find the largest batch"),
    "estimate": ("rts.cli.estimate", "project GPU hours and cost for training and pan-Arctic inference"),
    "review": ("rts.cli.review", "review predicted RTS by eye (export chips and a page; import the verdicts)"),
}


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: debug logging of rts; -vv: also of the libraries (rasterio, MLflow, ...)")


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with every option's default, "(default: X)", unless its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (action.help is argparse.SUPPRESS or "default" in text.lower() or action.required or action.nargs == 0
                or default is None or default is argparse.SUPPRESS or default == []):
            return action.help  # flags (store_true, count, version) have no default worth showing
        if not action.option_strings and action.nargs not in ("?", "*"):
            return action.help
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rts", description="RTS segmentation tools", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"rts {__version__}")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    head = argv if split is None else argv[: split + 1]
    known = build_parser().parse_args(head)  # prints usage and exits when no command is given
    configure(known.verbose)
    module_name, help_text = COMMANDS[known.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"rts {known.command}", description=help_text, formatter_class=HelpFormatter)
    module.add_arguments(parser)
    add_verbosity(parser)  # -v/-vv after the command too: `rts check -v DATA`
    args = parser.parse_args(argv[split + 1 :])
    if args.verbose:
        configure(known.verbose + args.verbose)
    return exit_on_error(lambda: module.run(args))
