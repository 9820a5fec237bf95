"""The argparse root: registers the subcommand modules and maps bad input to exit code 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tqdm import tqdm

import kwh
from kwh.errors import KwhError

SUBCOMMANDS = ("train", "compress", "evaluate", "inspect", "export", "spike", "energy", "bench",
               "report", "env")
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130

# Bad input the user can fix: one line on stderr, no traceback. Anything else is a bug and
# keeps its traceback.
USER_ERRORS = (KwhError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
               NotADirectoryError)

__all__ = ["build_parser", "main", "SUBCOMMANDS", "Parser"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `kwh train: error: MESSAGE (see kwh train --help)`.

    Subparsers are of the same class (argparse's default), so every subcommand answers alike.
    """

    _subcommands: argparse.Action | None = None

    def add_subparsers(self, **kwargs):
        self._subcommands = super().add_subparsers(**kwargs)
        return self._subcommands

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # argparse reports these from the root; name the subcommand that got them
            self._chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> Parser:
        """The innermost (sub)parser that parsed[.command] selected."""
        sub = self._subcommands
        name = getattr(parsed, sub.dest, None) if sub is not None else None
        child = sub.choices.get(name) if name is not None else None
        return child._chosen(parsed) if isinstance(child, Parser) else self


def build_parser() -> argparse.ArgumentParser:
    """The root parser with every subcommand (kwh.cli.<name>.register)."""
    parser = Parser(
        prog="kwh", description="Intelligence per kilowatt-hour: Bayesian compression, "
                                "sigma-delta inference and energy accounting for PyTorch.")
    parser.add_argument("--version", action="version", version=f"kwh {kwh.__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"kwh.cli.{name}").register(sub)
    return parser


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear the progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a broken stderr must not end the run
            self.handleError(record)


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("kwh")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("kwh: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit code (2 for bad input, 130 when interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here, with one line (Parser.error)
    _setup_logging(args.quiet)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("kwh: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"kwh: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
