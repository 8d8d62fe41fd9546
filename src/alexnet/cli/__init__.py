"""The ``alexnet`` command: a thin argparse shell over the library.

Each command group lives in its own module with ``register(subparsers)``, which adds its
subcommands and sets ``func`` (a function of the parsed args returning an exit status).
A :class:`alexnet.errors.UserError` becomes one line on stderr and exit status 2, and so
does a command line argparse rejects (see :class:`ArgumentParser`).

The group modules declare flags only and import no torch: a command's body imports the
library (torch, torchvision, matplotlib, fastapi...) when it runs, so ``alexnet --help``,
``alexnet --version`` and ``alexnet CMD --help`` answer in a fraction of a second
(benchmarks/cli_startup.py measures it; tests/cli/test_startup.py holds the line).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import NoReturn

from alexnet.cli import bench, inspect, serve, train, use
from alexnet.errors import UserError
from alexnet.version import __version__


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with its usage errors as one line like every other error:
    ``alexnet: error: MESSAGE; see 'alexnet viz filters --help'`` on stderr, exit status 2,
    no usage block.

    Subcommand parsers are of this class too, nested ones included: ``add_subparsers()``
    makes its parsers of the class of the parser it is called on unless given another
    ``parser_class``. Unrecognized arguments are found by the top-level parser after the
    subcommands have parsed; they name the subcommand the command line chose.
    """

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())  # one line, whatever the message holds
        self.exit(2, f"alexnet: error: {message}; see '{self.prog} --help'\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost (sub)command parser ``parsed`` went through."""
        parser: argparse.ArgumentParser = self
        while True:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            name = getattr(parsed, subs[0].dest, None) if subs else None
            if not subs or name not in subs[0].choices:
                return parser
            parser = subs[0].choices[name]


# The command groups, in the order their commands appear in ``alexnet --help``.
_GROUPS = (train, inspect, use, serve, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="alexnet",
        description="The AlexNet toolkit: models, training, evaluation and the tools around them.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for group in _GROUPS:
        group.register(sub)
    return parser


def _version() -> str:
    return f"alexnet {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"alexnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alexnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `alexnet models --json | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as e:
        # the disk, not the program: a full disk or a read-only folder met by any writer
        # (plots, TensorBoard, a report) is a sentence too
        if e.errno not in _DISK_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"alexnet: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


_DISK_ERRNOS = {
    errno.ENOSPC,  # no space left on device
    errno.EDQUOT,  # disk quota exceeded
    errno.EROFS,  # read-only file system
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
}


if __name__ == "__main__":
    sys.exit(main())
