"""The ``kvdm`` command line.

Each module of this package with a ``register`` function (one per command or group)
contributes commands through ``register(sub)``, where
``sub`` is the top-level subparsers object; commands that share a group (``kvdm bench
transport``, ``kvdm bench index``) get it from :func:`group`. A command's handler is set with
``parser.set_defaults(func=handler)`` and receives the parsed namespace; it returns an exit
status (or None for 0). Name a command's module after it (``replay``) or after its group and
itself (``bench_index``): ``kvdm bench index`` then imports that module alone, not every
command's dependencies (:func:`build_parser`; a module named otherwise still works, found once
every module is imported). Errors meant for the user are raised as :class:`UsageError` (or
ValueError / DMError) and printed without a traceback.

Every error is one ``kvdm: error: ...`` line with exit status 2, parse errors included
(:class:`KvdmParser`): no usage dump. Numeric flags take their type from :func:`integer`,
:func:`real`, :func:`size` (and the ``count``/``positive``/... shorthands), whose messages say
what is wrong; a bare ``type=int``/``float``/``parse_size`` gets the same messages without a
range check.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import math
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..errors import CommandFailed, UsageError

# numpy's BLAS pool busy-waits on its threads after any BLAS call; on the few cores a
# benchmark shares with its memory nodes and clients that steals the measured loop's CPU.
# (Set before any command module imports numpy; nothing above does.)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_groups: dict[str, Any] = {}


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


def _numeric(kind: type, low: float | None, high: float | None, open_low: bool, what: str) -> Callable[[str], Any]:
    noun = "an integer" if kind is int else "a number"
    if not what:
        what = noun
        if low is not None and high is not None:
            what = f"{noun} in {low:g}..{high:g}"
        elif low is not None:
            what = f"{noun} {'>' if open_low else '>='} {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if (low is not None and (value < low or (open_low and value == low))) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


def integer(low: int | None = None, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (either bound optional); ``what`` names the rule in
    the message (default "an integer >= low" ...)."""
    return _numeric(int, low, high, False, what)


def real(low: float | None = None, high: float | None = None, open_low: bool = False,
         what: str = "") -> Callable[[str], float]:
    """argparse type: a finite float in [low, high] (``open_low``: > low)."""
    return _numeric(float, low, high, open_low, what)


count = integer(1, what="a positive count")
count0 = integer(0, what="a count >= 0")
positive = real(0, open_low=True, what="a positive number")
non_negative = real(0, what="a number >= 0")


def size(text: str) -> int:
    """argparse type: a positive byte size or count with an optional K/M/G/T suffix (4G, 512MiB, 1M)."""
    from kvdm.transport import parse_size

    try:
        value = parse_size(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive count or size (a number, optionally with a K, M, G or T "
                                         f"suffix), got {text}")
    return value


# a negative number, optionally with a size suffix: a value, not a flag (argparse's own pattern
# misses "-1G", so `--size -1G` said "expected one argument" instead of what is wrong with it)
_NEGATIVE_VALUE = re.compile(r"^-\d*\.?\d+(e[-+]?\d+)?([kmgt]i?b?)?$", re.IGNORECASE)


class KvdmParser(argparse.ArgumentParser):
    """argparse with one-line errors (``kvdm: error: --keys must be a positive count, got -5``, exit
    status 2, no usage dump) and checked numbers for a bare ``type=int``/``float``/``parse_size``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from kvdm.transport import parse_size

        self._negative_number_matcher = _NEGATIVE_VALUE
        # argparse looks a flag's type up in this registry first: these replace the builtins
        self.register("type", int, integer())
        self.register("type", float, real())
        self.register("type", parse_size, size)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"kvdm: error: {one_line(message, self.prog)}\n")


def one_line(message: str, prog: str = "kvdm") -> str:
    """An argparse message as kvdm says it: ``--keys must be ...`` / ``--index: unknown ...``;
    "invalid choice" as ``unknown command 'x'; valid: ...``."""
    choice = re.search(r"invalid choice: (.+?) \(choose from (.*)\)$", message, re.S)
    if choice:
        valid = choice.group(2).replace("'", "")
        return f"unknown command {choice.group(1)} for {prog}; valid: {valid}"
    m = re.match(r"argument ([^:]+): (.*)$", message, re.S)
    if m:
        flag, rest = m.groups()
        message = f"{flag} {rest}" if rest.startswith("must ") else f"{flag}: {rest}"
    if "arguments are required" in message:
        message += f" (see {prog} --help)"
    return " ".join(message.split())


def build_parser(*command: str) -> argparse.ArgumentParser:
    """The ``kvdm`` parser. With the words of a ``command`` (``"replay"``, ``"bench", "index"``)
    it has only what the modules that can register it register: the module ``bench_index`` for
    ``bench index``, else those named ``bench`` or ``bench_*``; failing that (an unknown command,
    a group's --help), every module, so errors and help list everything. Importing only the
    command's own modules keeps each command's start to its own dependencies: under the SoftRoCE
    guest's TCG emulation, importing every command module cost over a minute per process
    (pandas alone about 45 s), which every MPI rank and spawned client paid."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))  # __main__ runs it
    if command:
        top, sub = command[0], command[1] if len(command) > 1 else None
        mine = [n for n in names if n == top or n.startswith(f"{top}_")]
        for modules in ([f"{top}_{sub}"], mine):
            if modules and set(modules) <= set(mine):
                parser, commands = _parser(modules)
                group = _groups.get(top)
                if top in commands and (sub is None or group is None or sub in group.choices):
                    return parser
    return _parser(names)[0]


def _parser(modules: list[str]) -> tuple[argparse.ArgumentParser, Any]:
    """The parser with the commands of ``modules``, and its top-level command table."""
    _groups.clear()
    parser = KvdmParser(
        prog="kvdm",
        description="KV-cache metadata on disaggregated memory: remote-memory indexes driven by "
        "one-sided verbs, replayed against real KV-cache traces and Redis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        module = importlib.import_module(f"{__name__}.{name}")
        if callable(getattr(module, "register", None)):
            module.register(sub)
    return parser, sub.choices


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = list(itertools.takewhile(lambda w: not w.startswith("-"), argv[:2]))
    parser = build_parser(*words)
    args = parser.parse_args(argv)
    from kvdm.transport import DMError

    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("kvdm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kvdm traces stats ... | head`: the reader left, which is not an error
        # stdout's pending bytes cannot be written any more: point it at devnull so the exit flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, ValueError, DMError, FileNotFoundError) as exc:
        print(f"kvdm: error: {exc}", file=sys.stderr)
        return 2
    except CommandFailed as exc:
        print(f"kvdm: error: {exc}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
