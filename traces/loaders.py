"""Trace loaders: Mooncake and Alibaba Bailian / ServeGen JSONL into a numpy CSR :class:`Trace`.

Formats (one JSON object per line; blank lines are ignored; ``.gz`` is detected by its magic
bytes, whatever the file is called):

* ``mooncake`` (FAST'25 traces): ``timestamp`` (ms; integer in the published traces, a float
  is accepted), ``input_length``, ``output_length``,
  ``hash_ids`` (prefix-chained integer block ids, 512-token blocks).
* ``bailian`` (ATC'25 "KVCache Cache in the Wild", ServeGen): ``chat_id``, ``parent_chat_id``,
  ``timestamp`` (**seconds**, int or float), ``input_length``, ``output_length``, ``type``,
  ``turn``, ``hash_ids`` (16-token blocks). ``chat_id``, ``timestamp`` and ``hash_ids`` are
  required; the others default to -1 / "" when absent. Timestamps are converted to ms.

``format="auto"`` picks ``bailian`` when the first record has a ``chat_id`` field.

A malformed line raises :class:`TraceFormatError` naming the file and the 1-based line number;
with ``skip_bad=True`` the line is skipped and counted in ``Trace.skipped_lines`` instead. A
file with no valid request is always an error.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

FORMATS = ("auto", "mooncake", "bailian")
#: tokens per block of each format
BLOCK_TOKENS = {"mooncake": 512, "bailian": 16}

_GZIP_MAGIC = b"\x1f\x8b"


class TraceFormatError(ValueError):
    """A trace file that cannot be read: the message names the file and the line."""


@dataclass
class Trace:
    """A request trace in CSR layout.

    Request ``i`` references blocks ``blocks[offsets[i]:offsets[i+1]]`` (in prompt order).
    ``timestamps_ms`` is the arrival time in ms relative to the trace's own zero.
    ``meta`` holds format-specific per-request columns (Bailian: ``chat_id``,
    ``parent_chat_id``, ``turn``, ``type``).
    """

    name: str
    offsets: np.ndarray  # int64[n_requests + 1]
    blocks: np.ndarray  # int64[n_blocks], block ids
    timestamps_ms: np.ndarray  # float64[n_requests]
    input_length: np.ndarray  # int64[n_requests]
    output_length: np.ndarray  # int64[n_requests]
    block_tokens: int = 512
    source: str = ""
    format: str = "mooncake"
    skipped_lines: int = 0
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_requests(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_blocks(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """Blocks per request, int64[n_requests]."""
        return np.diff(self.offsets)

    def request(self, i: int) -> np.ndarray:
        """The block ids of request ``i``."""
        return self.blocks[self.offsets[i]:self.offsets[i + 1]]

    def request_of_block(self) -> np.ndarray:
        """For every block reference, the index of its request (int64[n_blocks])."""
        return np.repeat(np.arange(self.n_requests, dtype=np.int64), self.lengths)

    def head(self, n: int) -> Trace:
        """The first ``n`` requests as a new trace (views, no copy of the block array)."""
        n = min(n, self.n_requests)
        return Trace(
            name=self.name, offsets=self.offsets[: n + 1], blocks=self.blocks[: self.offsets[n]],
            timestamps_ms=self.timestamps_ms[:n], input_length=self.input_length[:n],
            output_length=self.output_length[:n], block_tokens=self.block_tokens, source=self.source,
            format=self.format, skipped_lines=self.skipped_lines,
            meta={k: v[:n] for k, v in self.meta.items()},
        )

    @classmethod
    def from_lists(cls, hash_ids: list[list[int]], timestamps_ms: Any = None, name: str = "memory",
                   block_tokens: int = 512) -> Trace:
        """Build a trace from Python lists (tests, generators)."""
        lengths = np.fromiter((len(h) for h in hash_ids), dtype=np.int64, count=len(hash_ids))
        offsets = np.zeros(len(hash_ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = [b for h in hash_ids for b in h]
        blocks = np.array(flat, dtype=np.int64) if flat else np.zeros(0, dtype=np.int64)
        ts = (np.arange(len(hash_ids), dtype=np.float64) if timestamps_ms is None
              else np.asarray(timestamps_ms, dtype=np.float64))
        return cls(name=name, offsets=offsets, blocks=blocks, timestamps_ms=ts,
                   input_length=lengths * block_tokens, output_length=np.zeros(len(hash_ids), np.int64),
                   block_tokens=block_tokens)


def open_text(path: str | Path) -> IO[str]:
    """Open a trace file as text, gunzipping transparently when it starts with the gzip magic."""
    p = Path(path)
    with p.open("rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC:
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
    return p.open("r", encoding="utf-8")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of every non-blank line, streaming; read errors name the file."""
    lineno = 0
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):  # noqa: B007 (lineno used after the loop)
                if line.strip():
                    yield lineno, line
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise TraceFormatError(f"{path}: line {lineno + 1}: cannot read ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise TraceFormatError(f"{path}: line {lineno + 1}: not UTF-8 text ({exc})") from exc


def _int_field(rec: dict[str, Any], key: str) -> int:
    v = rec[key]
    if type(v) is not int:
        raise ValueError(f"field {key!r} must be an integer, got {v!r}")
    return v


def _number_field(rec: dict[str, Any], key: str) -> float:
    v = rec[key]
    if type(v) not in (int, float):
        raise ValueError(f"field {key!r} must be a number, got {v!r}")
    return float(v)


def _hash_ids(rec: dict[str, Any]) -> list[int]:
    ids = rec["hash_ids"]
    if type(ids) is not list:
        raise ValueError(f"field 'hash_ids' must be a list, got {type(ids).__name__}")
    for v in ids:
        # bool is an int subclass; `type(v) is int` rejects it as well as floats and strings
        if type(v) is not int or v < 0 or v >= 2**63:
            raise ValueError(f"'hash_ids' must hold non-negative 63-bit integers, got {v!r}")
    return ids


def _detect_format(path: str | Path) -> str:
    for _, line in iter_lines(path):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            return "mooncake"  # the real parse reports the error with its line number
        return "bailian" if isinstance(rec, dict) and "chat_id" in rec else "mooncake"
    return "mooncake"


def load_trace(path: str | Path, format: str = "auto", skip_bad: bool = False,
               name: str | None = None, limit: int = 0) -> Trace:
    """Load a trace file (see the module docstring); ``limit`` > 0 stops after that many requests."""
    if format not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; valid: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace file not found: {path}")
    fmt = _detect_format(path) if format == "auto" else format
    bailian = fmt == "bailian"

    flat: list[int] = []
    lengths: list[int] = []
    ts: list[float] = []
    inp: list[int] = []
    out: list[int] = []
    chat: list[int] = []
    parent: list[int] = []
    turn: list[int] = []
    kind: list[str] = []
    skipped = 0
    loads = json.loads
    for lineno, line in iter_lines(path):
        try:
            rec = loads(line)
            if type(rec) is not dict:
                raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            ids = _hash_ids(rec)
            if bailian:
                t = _number_field(rec, "timestamp") * 1000.0
                c = _int_field(rec, "chat_id")
                pc = _int_field(rec, "parent_chat_id") if "parent_chat_id" in rec else -1
                tu = _int_field(rec, "turn") if "turn" in rec else -1
                ty = str(rec.get("type", ""))
                il = _int_field(rec, "input_length") if "input_length" in rec else len(ids) * 16
                ol = _int_field(rec, "output_length") if "output_length" in rec else 0
            else:
                t = _number_field(rec, "timestamp")
                il = _int_field(rec, "input_length")
                ol = _int_field(rec, "output_length")
        except KeyError as exc:
            if not skip_bad:
                raise TraceFormatError(f"{path}: line {lineno}: missing field {exc}") from None
            skipped += 1
            continue
        except ValueError as exc:  # JSONDecodeError is a ValueError
            if not skip_bad:
                raise TraceFormatError(f"{path}: line {lineno}: {exc}") from None
            skipped += 1
            continue
        flat.extend(ids)
        lengths.append(len(ids))
        ts.append(t)
        inp.append(il)
        out.append(ol)
        if bailian:
            chat.append(c)
            parent.append(pc)
            turn.append(tu)
            kind.append(ty)
        if limit and len(lengths) >= limit:
            break
    if not lengths:
        extra = f" ({skipped} malformed line(s) skipped)" if skipped else ""
        raise TraceFormatError(f"{path}: no requests in the file{extra}")

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.array(lengths, dtype=np.int64), out=offsets[1:])
    meta: dict[str, np.ndarray] = {}
    if bailian:
        meta = {"chat_id": np.array(chat, dtype=np.int64), "parent_chat_id": np.array(parent, dtype=np.int64),
                "turn": np.array(turn, dtype=np.int64), "type": np.array(kind, dtype=object)}
    return Trace(
        name=name or _stem(path), offsets=offsets, blocks=np.array(flat, dtype=np.int64),
        timestamps_ms=np.array(ts, dtype=np.float64), input_length=np.array(inp, dtype=np.int64),
        output_length=np.array(out, dtype=np.int64), block_tokens=BLOCK_TOKENS[fmt], source=str(path),
        format=fmt, skipped_lines=skipped, meta=meta,
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name.removesuffix("_trace")


def write_mooncake(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` as Mooncake JSONL (gzip when ``path`` ends in ``.gz``), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(tmp, "wt", encoding="utf-8") as fh:
        for i in range(trace.n_requests):
            rec = {"timestamp": int(round(trace.timestamps_ms[i])),
                   "input_length": int(trace.input_length[i]),
                   "output_length": int(trace.output_length[i]), "hash_ids": trace.request(i).tolist()}
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(path)
