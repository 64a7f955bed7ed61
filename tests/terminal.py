"""What a terminal gives the process it runs: Ctrl-C as SIGINT at its default disposition."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` for a child a test stops with Ctrl-C (SIGINT): a terminal's foreground job
    has SIGINT at its default even when the test runner itself was started with SIGINT ignored
    (a background job of a non-interactive shell, whose children inherit the ignore)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
