"""Named public traces: resolution by name and ``fetch`` (download + sha256 check).

Resolution order of :func:`resolve` for ``NAME_OR_PATH``:

1. an existing file path (or anything that looks like a path: it contains ``/`` or ends in
   ``.jsonl``/``.gz``; a missing path is then an error, not a name lookup);
2. a known name (:data:`KNOWN`) or a bare file stem, looked up as ``<file>``, ``<name>.jsonl``
   and ``<name>_trace.jsonl`` (each also with ``.gz``) in, in order:
   ``$KVDM_TRACE_DIR``, the ``shared/traces`` folder beside the checkout (only present in the
   development layout), the fetch cache (:func:`cache_dir`);
3. ``conversation`` only: the bundled fixture (its first 400 requests), with a warning on
   stderr, so the package runs without the shared folder.

:func:`load` also says on stderr what the loader did to the file: malformed lines skipped,
requests sorted into timestamp order, arrival times made up for a trace without timestamps.

The fetch cache is ``$KVDM_CACHE_DIR/traces`` if set, else ``$XDG_CACHE_HOME/kvdm/traces``,
else ``~/.cache/kvdm/traces``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .loaders import FROM_TRACE, Trace, TraceOptions, load_trace

_MOONCAKE_RAW = "https://raw.githubusercontent.com/kvcache-ai/Mooncake/main/FAST25-release/traces/"


@dataclass(frozen=True)
class TraceInfo:
    """A named public trace."""

    name: str
    filename: str
    url: str
    sha256: str
    description: str
    license: str = "Apache-2.0"


KNOWN: dict[str, TraceInfo] = {
    t.name: t
    for t in (
        TraceInfo("toolagent", "toolagent_trace.jsonl", _MOONCAKE_RAW + "toolagent_trace.jsonl",
                  "48a2db1a13d3bc05e6330140c64f604ba366df20d3c9e128b5c35a01c1fa5f71",
                  "Mooncake FAST'25 tool&agent trace (the paper's main trace), 23,608 requests"),
        TraceInfo("conversation", "conversation_trace.jsonl", _MOONCAKE_RAW + "conversation_trace.jsonl",
                  "b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
                  "Mooncake FAST'25 conversation trace (Kimi chat), 12,031 requests"),
        TraceInfo("synthetic", "synthetic_trace.jsonl", _MOONCAKE_RAW + "synthetic_trace.jsonl",
                  "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131",
                  "Mooncake FAST'25 synthetic trace (public datasets, Poisson arrivals), 3,993 requests"),
    )
}

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "conversation_head400.jsonl"


class FetchError(RuntimeError):
    """A download that failed or did not match its checksum (no file is left behind)."""


def cache_dir() -> Path:
    """Where fetched traces are kept."""
    if os.environ.get("KVDM_CACHE_DIR"):
        return Path(os.environ["KVDM_CACHE_DIR"]) / "traces"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvdm" / "traces"


def shared_dir() -> Path:
    """``shared/traces`` beside the checkout (the checkout is /work/<x>/, shared is /work/shared/)."""
    return Path(__file__).resolve().parents[2] / "shared" / "traces"


def search_dirs() -> list[Path]:
    """The folders searched for a trace name, in order."""
    dirs = []
    if os.environ.get("KVDM_TRACE_DIR"):
        dirs.append(Path(os.environ["KVDM_TRACE_DIR"]))
    dirs += [shared_dir(), cache_dir()]
    return dirs


def _candidates(name: str) -> list[str]:
    files = [KNOWN[name].filename] if name in KNOWN else []
    files += [f"{name}.jsonl", f"{name}_trace.jsonl"]
    return [f for base in dict.fromkeys(files) for f in (base, base + ".gz")]


def _looks_like_path(s: str) -> bool:
    return "/" in s or s.endswith((".jsonl", ".gz", ".json", ".csv"))


def find(name: str) -> Path | None:
    """The file a trace name resolves to in the search folders, or None."""
    for d in search_dirs():
        for f in _candidates(name):
            if (d / f).is_file():
                return d / f
    return None


def resolve(name_or_path: str | Path, warn: bool = True) -> Path:
    """The trace file for a path or a name (see the module docstring)."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    if _looks_like_path(s):
        raise FileNotFoundError(f"trace file not found: {s}")
    found = find(s)
    if found is not None:
        return found
    if s == "conversation" and FIXTURE.is_file():
        if warn:
            print(f"kvdm: warning: conversation trace not found in {', '.join(map(str, search_dirs()))}; "
                  f"using the bundled fixture {FIXTURE.name} (first 400 requests only)", file=sys.stderr)
        return FIXTURE
    hint = f"; run `kvdm traces fetch {s}`" if s in KNOWN else ""
    known = ", ".join(KNOWN)
    raise FileNotFoundError(f"no trace named {s!r} in {', '.join(map(str, search_dirs()))}{hint} "
                            f"(known names: {known}; or give a file path)")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str | TraceInfo, url: str | None = None, dest_dir: Path | None = None,
          force: bool = False, timeout: float = 60.0) -> Path:
    """Download a known trace into the cache, verify its sha256, and return its path.

    ``url`` overrides the source (a mirror, or ``file://`` for an offline copy); the checksum
    is always the registry's. The file is written to a temporary name in the destination
    folder and renamed only after the checksum matched, so a failure leaves nothing behind.
    """
    info = name if isinstance(name, TraceInfo) else KNOWN.get(name)
    if info is None:
        raise ValueError(f"unknown trace {name!r}; fetchable: {', '.join(KNOWN)}")
    dest_dir = dest_dir or cache_dir()
    dest = dest_dir / info.filename
    if dest.is_file() and not force:
        if sha256_file(dest) == info.sha256:
            return dest
        print(f"kvdm: warning: {dest} does not match its checksum; downloading again", file=sys.stderr)
    src = url or info.url
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{info.filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(src, timeout=timeout) as resp:  # noqa: S310 (http/file only)
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise FetchError(f"download of {info.name} from {src} failed: {reason}") from exc
        got = h.hexdigest()
        if got != info.sha256:
            raise FetchError(f"checksum mismatch for {info.name} from {src}: expected sha256 "
                             f"{info.sha256}, got {got}; the file was discarded")
        tmp.replace(dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def load(name_or_path: str | Path, options: TraceOptions | None = None, warn: bool = True,
         **overrides: Any) -> Trace:
    """Resolve a trace name or path (:func:`resolve`) and load it (:func:`load_trace`) with
    ``options`` (fields of :class:`TraceOptions` may also be given as keywords)."""
    opts = replace(options or TraceOptions(), **overrides)
    path = resolve(name_or_path, warn=warn)
    name = str(name_or_path) if not _looks_like_path(str(name_or_path)) and path != FIXTURE else None
    trace = load_trace(path, name=name, **asdict(opts))
    if warn:
        for note in load_notes(trace):
            print(f"kvdm: warning: {note}", file=sys.stderr)
    return trace


def load_notes(trace: Trace) -> list[str]:
    """What the loader did to a trace's file that a user should know (one line each)."""
    notes = []
    if trace.skipped_lines:
        notes.append(f"{trace.skipped_lines} malformed line(s) skipped in {trace.source}")
    if trace.reordered:
        notes.append(f"{trace.reordered} request(s) out of timestamp order in {trace.source}: sorted by timestamp "
                     "(--strict-order rejects such a file)")
    if trace.arrivals != FROM_TRACE:
        notes.append(f"{trace.source}: arrivals {trace.arrivals} (--arrivals even|poisson, --rate R)")
    return notes
