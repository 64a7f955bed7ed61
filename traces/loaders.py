"""Trace loaders: Mooncake and the Alibaba Bailian / ServeGen family into a numpy CSR :class:`Trace`.

Formats (blank lines are ignored; ``.gz`` is detected by its magic bytes, whatever the file is
called):

* ``mooncake`` (FAST'25 traces, JSONL): ``timestamp`` (ms; integer in the published traces, a
  float is accepted), ``input_length``, ``output_length``, ``hash_ids`` (prefix-chained integer
  block ids, 512-token blocks).
* ``bailian`` (JSONL) and ``bailian-csv`` (a header line, then one request per line): the
  16-token-block family of Bailian (ATC'25 "KVCache Cache in the Wild": ``chat_id``,
  ``parent_chat_id``, ``timestamp`` in **seconds**, ``input_length``, ``output_length``, ``type``,
  ``turn``, ``hash_ids``) and ServeGen's offline traces (``request_id``, ``type``,
  ``input_length``, ``hash_ids``, ``image_ids``; no timestamps). ``hash_ids`` and an id
  (``chat_id`` or ``request_id``) are required; the other fields default to -1 / "" / none.
  In CSV, ``hash_ids`` and ``image_ids`` are a JSON list (``"[1, 2]"``) or ids separated by
  spaces or semicolons; an empty cell is an absent field.

``format="auto"`` looks at the first line: a JSON object with ``chat_id`` or ``request_id`` is
``bailian``, other JSON is ``mooncake``, a CSV header with a ``hash_ids`` column is
``bailian-csv``; anything else is an unknown format (the error says so).

Checks: a malformed line raises :class:`TraceFormatError` naming the file and the 1-based line
number; with ``skip_bad=True`` it is skipped and counted in ``Trace.skipped_lines`` instead. A
file with no valid request is always an error. Timestamps must be finite and >= 0, lengths >= 0.
Timestamps out of order are sorted (stable; ``Trace.reordered`` counts the requests that came
before an earlier timestamp) unless ``strict_order``, which rejects the file.

Arrivals: a trace without timestamps (the first record has none) gets them from a stated model,
``arrivals="even"`` (default: one request every 1/``rate`` s) or ``"poisson"`` (exponential gaps
of mean 1/``rate`` s, seeded); ``Trace.arrivals`` says which, and runs record it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

FORMATS = ("auto", "mooncake", "bailian", "bailian-csv")
#: tokens per block of each format
BLOCK_TOKENS = {"mooncake": 512, "bailian": 16, "bailian-csv": 16}
#: arrival models of a trace without timestamps
ARRIVALS = ("even", "poisson")
FROM_TRACE = "trace timestamps"

_GZIP_MAGIC = b"\x1f\x8b"


class TraceFormatError(ValueError):
    """A trace file that cannot be read: the message names the file and the line."""


@dataclass
class Trace:
    """A request trace in CSR layout.

    Request ``i`` references blocks ``blocks[offsets[i]:offsets[i+1]]`` (in prompt order).
    ``timestamps_ms`` is the arrival time in ms relative to the trace's own zero.
    ``meta`` holds format-specific per-request columns (Bailian / ServeGen: ``chat_id``,
    ``request_id``, ``parent_chat_id``, ``turn``, ``type``, ``images``). ``arrivals`` says where
    the timestamps come from; ``reordered`` counts requests that were out of timestamp order in
    the file (sorted at load).
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
    arrivals: str = FROM_TRACE
    reordered: int = 0

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

    def length_mismatches(self) -> int:
        """Requests whose ``input_length`` disagrees with their block count
        (``ceil(input_length / block_tokens) != len(hash_ids)``)."""
        blocks = -(-self.input_length // self.block_tokens)
        return int((blocks != self.lengths).sum())

    def take(self, order: np.ndarray) -> Trace:
        """The requests ``order`` (indices), in that order, as a new trace."""
        lengths = self.lengths[order]
        offsets = np.zeros(order.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # block i of the new layout comes from its request's old start + its position in the request
        src = np.repeat(self.offsets[:-1][order] - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return replace(self, offsets=offsets, blocks=self.blocks[src], timestamps_ms=self.timestamps_ms[order],
                       input_length=self.input_length[order], output_length=self.output_length[order],
                       meta={k: v[order] for k, v in self.meta.items()})

    def head(self, n: int) -> Trace:
        """The first ``n`` requests as a new trace (views, no copy of the block array)."""
        n = min(n, self.n_requests)
        return replace(
            self, offsets=self.offsets[: n + 1], blocks=self.blocks[: self.offsets[n]],
            timestamps_ms=self.timestamps_ms[:n], input_length=self.input_length[:n],
            output_length=self.output_length[:n], meta={k: v[:n] for k, v in self.meta.items()},
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


# ---- fields: JSON values are typed; CSV cells are text (``text=True``) and parsed here --------

def _int_field(rec: dict[str, Any], key: str, text: bool = False, minimum: int | None = None) -> int:
    v = rec[key]
    if text:
        try:
            v = int(v)
        except ValueError:
            raise ValueError(f"field {key!r} must be an integer, got {v!r}") from None
    elif type(v) is not int:  # bool is an int subclass: rejected as well as floats and strings
        raise ValueError(f"field {key!r} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"field {key!r} must be >= {minimum}, got {v}")
    return v


def _number_field(rec: dict[str, Any], key: str, text: bool = False) -> float:
    v = rec[key]
    if text:
        try:
            v = float(v)
        except ValueError:
            raise ValueError(f"field {key!r} must be a number, got {v!r}") from None
    elif type(v) not in (int, float):
        raise ValueError(f"field {key!r} must be a number, got {v!r}")
    return float(v)


def _timestamp(rec: dict[str, Any], text: bool) -> float:
    t = _number_field(rec, "timestamp", text)
    # a negative time fell into bin -1 (the whole-run row) and NaN lost its request in a replay
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"timestamp must be finite and >= 0, got {rec['timestamp']!r}")
    return t


def _list_field(rec: dict[str, Any], key: str, text: bool) -> list[Any]:
    v = rec[key]
    if text:
        v = v.strip()
        if v.startswith("["):
            v = json.loads(v)
        else:
            return [int(x) if re.fullmatch(r"-?\d+", x) else x for x in re.split(r"[\s;]+", v) if x]
    if type(v) is not list:
        raise ValueError(f"field {key!r} must be a list, got {type(v).__name__}")
    return v


def _hash_ids(rec: dict[str, Any], text: bool = False) -> list[int]:
    ids = _list_field(rec, "hash_ids", text)
    for v in ids:
        if type(v) is not int or v < 0 or v >= 2**63:
            raise ValueError(f"'hash_ids' must hold non-negative 63-bit integers, got {v!r}")
    return ids


# ---- records: (line number, dict) of a JSONL or CSV file ---------------------------------------

def _json_record(line: str) -> dict[str, Any]:
    rec = json.loads(line)
    if type(rec) is not dict:
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _csv_parser(header: list[str]) -> Callable[[str], dict[str, Any]]:
    names = [h.strip() for h in header]

    def parse(line: str) -> dict[str, Any]:
        cells = next(csv.reader([line]))
        if len(cells) != len(names):
            raise ValueError(f"expected {len(names)} CSV columns ({', '.join(names)}), got {len(cells)}")
        return {k: v for k, v in zip(names, cells, strict=True) if v.strip()}  # an empty cell is an absent field

    return parse


def _first_line(path: Path) -> tuple[int, str] | None:
    return next(iter_lines(path), None)


def detect_format(path: str | Path) -> str:
    """The format of a trace file from its first line (see the module docstring)."""
    path = Path(path)
    first = _first_line(path)
    if first is None:
        return "mooncake"  # empty: the loader reports "no requests"
    lineno, line = first
    text = line.strip()
    if text.startswith(("{", "[")):
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:
            return "mooncake"  # the real parse reports the error with its line number
        if isinstance(rec, dict) and not rec.keys() & {"chat_id", "request_id", "timestamp", "input_length",
                                                        "output_length", "hash_ids"}:
            raise TraceFormatError(
                f"{path}: unknown trace format: line {lineno} is a JSON object with fields "
                f"{', '.join(map(repr, rec)) or 'none'}; mooncake needs timestamp, input_length, output_length, "
                "hash_ids; bailian needs chat_id or request_id and hash_ids")
        return "bailian" if isinstance(rec, dict) and rec.keys() & {"chat_id", "request_id"} else "mooncake"
    header = [h.strip() for h in next(csv.reader([text]))]
    if "hash_ids" in header:
        return "bailian-csv"
    raise TraceFormatError(
        f"{path}: unknown trace format: line {lineno} is neither JSON (mooncake, bailian) nor a CSV header "
        f"with a hash_ids column (bailian-csv): {text[:60]!r}; valid formats: {', '.join(FORMATS[1:])}")


def synthetic_arrivals(n: int, arrivals: str, rate: float, seed: int = 0) -> np.ndarray:
    """Arrival times (ms, the first at 0) of ``n`` requests: evenly spaced or Poisson at ``rate`` per second."""
    gap_ms = 1000.0 / rate
    if arrivals == "even":
        return np.arange(n, dtype=np.float64) * gap_ms
    gaps = np.random.default_rng(seed).exponential(gap_ms, n)
    return np.concatenate(([0.0], np.cumsum(gaps[:-1]))) if n else np.zeros(0)


def check_options(format: str = "auto", limit: int = 0, arrivals: str = "even", rate: float = 1.0) -> None:
    """Reject bad loader options (the CLI checks them too, flag by flag)."""
    if format not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; valid: {', '.join(FORMATS)}")
    if arrivals not in ARRIVALS:
        raise ValueError(f"unknown arrival model {arrivals!r}; valid: {', '.join(ARRIVALS)}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 = all requests), got {limit}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"arrival rate must be a positive number of requests/s, got {rate}")


@dataclass(frozen=True)
class TraceOptions:
    """How a trace file is read: the trace flags of every command that reads one (stored with runs)."""

    format: str = "auto"
    skip_bad: bool = False
    limit: int = 0               # first N requests (0 = all)
    strict_order: bool = False   # reject timestamps out of order instead of sorting them
    arrivals: str = "even"       # arrival model of a trace without timestamps
    rate: float = 1.0            # requests/s of that model
    seed: int = 0                # of the poisson model

    def __post_init__(self) -> None:
        check_options(self.format, self.limit, self.arrivals, self.rate)


def load_trace(path: str | Path, format: str = "auto", skip_bad: bool = False, name: str | None = None,
               limit: int = 0, strict_order: bool = False, arrivals: str = "even", rate: float = 1.0,
               seed: int = 0) -> Trace:
    """Load a trace file (see the module docstring); ``limit`` > 0 stops after that many requests."""
    check_options(format, limit, arrivals, rate)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace file not found: {path}")
    fmt = detect_format(path) if format == "auto" else format
    bailian = fmt != "mooncake"
    text = fmt == "bailian-csv"
    parse: Callable[[str], dict[str, Any]] = _json_record
    lines = iter_lines(path)
    if text:
        first = next(lines, None)
        if first is not None:
            parse = _csv_parser(next(csv.reader([first[1]])))

    flat: list[int] = []
    lengths: list[int] = []
    ts: list[float] = []
    linenos: list[int] = []
    inp: list[int] = []
    out: list[int] = []
    cols: dict[str, list[Any]] = {k: [] for k in ("chat_id", "request_id", "parent_chat_id", "turn", "type",
                                                  "images")}
    has_ts = not bailian  # the Bailian / ServeGen family: timestamps iff the first record has one
    skipped = 0
    for lineno, line in lines:
        try:
            rec = parse(line)
            ids = _hash_ids(rec, text)
            if bailian:
                if not lengths and not skipped:
                    has_ts = "timestamp" in rec
                if "chat_id" not in rec and "request_id" not in rec:
                    raise KeyError("chat_id' or 'request_id")
                t = _timestamp(rec, text) * 1000.0 if has_ts else 0.0
                row = {"chat_id": _int_field(rec, "chat_id", text) if "chat_id" in rec else -1,
                       "request_id": str(rec.get("request_id", "")),
                       "parent_chat_id": _int_field(rec, "parent_chat_id", text) if "parent_chat_id" in rec else -1,
                       "turn": _int_field(rec, "turn", text) if "turn" in rec else -1,
                       "type": str(rec.get("type", "")),
                       "images": len(_list_field(rec, "image_ids", text)) if "image_ids" in rec else 0}
                il = _int_field(rec, "input_length", text, 0) if "input_length" in rec else len(ids) * 16
                ol = _int_field(rec, "output_length", text, 0) if "output_length" in rec else 0
            else:
                t = _timestamp(rec, text)
                il = _int_field(rec, "input_length", minimum=0)
                ol = _int_field(rec, "output_length", minimum=0)
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
        linenos.append(lineno)
        inp.append(il)
        out.append(ol)
        if bailian:
            for k, v in row.items():
                cols[k].append(v)
        if limit and len(lengths) >= limit:
            break
    if not lengths:
        extra = f" ({skipped} malformed line(s) skipped)" if skipped else ""
        raise TraceFormatError(f"{path}: no requests in the file{extra}")

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.array(lengths, dtype=np.int64), out=offsets[1:])
    meta: dict[str, np.ndarray] = {}
    if bailian:
        meta = {k: np.array(v, dtype=object if k in ("request_id", "type") else np.int64) for k, v in cols.items()}
    origin = FROM_TRACE
    times = np.array(ts, dtype=np.float64)
    if not has_ts:
        times = synthetic_arrivals(len(lengths), arrivals, rate, seed)
        origin = (f"{arrivals} at {rate:g} requests/s" + (f" (seed {seed})" if arrivals == "poisson" else "")
                  + ": the trace has no timestamps")
    trace = Trace(
        name=name or _stem(path), offsets=offsets, blocks=np.array(flat, dtype=np.int64),
        timestamps_ms=times, input_length=np.array(inp, dtype=np.int64),
        output_length=np.array(out, dtype=np.int64), block_tokens=BLOCK_TOKENS[fmt], source=str(path),
        format=fmt, skipped_lines=skipped, meta=meta, arrivals=origin,
    )
    late = times < np.maximum.accumulate(times)  # before an earlier request's timestamp
    if late.any():
        first = int(np.flatnonzero(late)[0])
        if strict_order:
            raise TraceFormatError(f"{path}: line {linenos[first]}: timestamp earlier than a previous line's "
                                   f"({int(late.sum())} request(s) out of timestamp order)")
        trace = trace.take(np.argsort(times, kind="stable"))
        trace.reordered = int(late.sum())
    return trace


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv"):
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
