"""The ``kvdm`` command line.

Each ``experiments/cmd_*.py`` module contributes commands through ``register(sub)``, where
``sub`` is the top-level subparsers object; commands that share a group (``kvdm bench
transport``, ``kvdm bench index``) get it from :func:`group`. A command's handler is set with
``parser.set_defaults(func=handler)`` and receives the parsed namespace; it returns an exit
status (or None for 0). Errors meant for the user are raised as :class:`UsageError` (or
ValueError / DMError) and printed without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import kvdm.experiments as experiments_pkg

# numpy's BLAS pool busy-waits on its threads after any BLAS call; on the few cores a
# benchmark shares with its memory nodes and clients that steals the measured loop's CPU.
# (Set before any command module imports numpy; nothing above does.)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_groups: dict[str, Any] = {}


class UsageError(Exception):
    """A user error: printed as ``kvdm: error: ...`` with exit status 2."""


def group(sub: Any, name: str, help_text: str) -> Any:
    """The subparsers of command group ``name`` (created on first use)."""
    if name not in _groups:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        _groups[name] = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    return _groups[name]


def choices_type(valid: Sequence[str], what: str) -> Callable[[str], str]:
    """argparse type that rejects a value not in ``valid`` with a message listing them."""

    def parse(value: str) -> str:
        if value not in valid:
            raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
        return value

    parse.__name__ = what
    return parse


def build_parser() -> argparse.ArgumentParser:
    _groups.clear()
    parser = argparse.ArgumentParser(
        prog="kvdm",
        description="KV-cache metadata on disaggregated memory: remote-memory indexes driven by "
        "one-sided verbs, replayed against real KV-cache traces and Redis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in sorted(pkgutil.iter_modules(experiments_pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"kvdm.experiments.{mod.name}").register(sub)
    return parser


class CommandFailed(RuntimeError):
    """A command ran and failed for a reason its message says (a replay client's error, ...):
    printed without a traceback, exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from kvdm.experiments.cli import UsageError as PackageUsageError  # the same class under `python -m`
    from kvdm.transport.dm import DMError

    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("kvdm: interrupted", file=sys.stderr)
        return 130
    except (UsageError, PackageUsageError, ValueError, DMError, FileNotFoundError) as exc:
        print(f"kvdm: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # by name: under `python -m` this module is loaded twice, so there are two such classes
        if not any(c.__name__ == "CommandFailed" for c in type(exc).__mro__):
            raise
        print(f"kvdm: error: {exc}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
