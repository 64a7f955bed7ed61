"""The errors a command reports to its user: below the CLI (the replay engine, the launchers),
raised here and printed by ``kvdm`` (experiments/cli/) without a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """A user error: printed as ``kvdm: error: ...`` with exit status 2."""


class CommandFailed(RuntimeError):
    """A command ran and failed for a reason its message says (a replay client's error, ...):
    printed without a traceback, exit status 1."""


__all__ = ["CommandFailed", "UsageError"]
