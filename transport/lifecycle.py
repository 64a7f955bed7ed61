"""Process lifecycle shared by everything kvdm starts and must not leave behind (memory-node
regions, redis-server processes): clean-up at exit and on SIGTERM, and serve-until-signalled."""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

_callbacks: list[Callable[[], None]] = []
_installed = False


def _run_all() -> None:
    for callback in reversed(_callbacks):
        callback()


def on_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit and on SIGTERM (SIGINT raises KeyboardInterrupt,
    which unwinds through atexit). A SIGTERM handler is only installed if none was set, and only
    from the main thread."""
    global _installed
    if callback not in _callbacks:
        _callbacks.append(callback)
    if _installed:
        return
    _installed = True
    atexit.register(_run_all)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None):

        def on_term(signum: int, frame: Any) -> None:
            _run_all()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)


def stop_on_signals() -> Callable[[], bool]:
    """Make SIGINT and SIGTERM request a stop instead of killing the process; returns a function
    telling whether one was received (for a server's loop)."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop.is_set


def pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
