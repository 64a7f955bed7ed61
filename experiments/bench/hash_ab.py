"""Chunk-key hashing per prompt, A/B, in one process: ``hashlib.sha256`` over the prompt's token
bytes, the token layer's key computation as it is (``ChunkKeys.keys``: what ``TokenIndex.lookup``,
``store`` and ``retrieve_mask`` run on their input) and, with ``--base REV``, the same computation
as of git revision REV (its ``index/tokens.py``, read with ``git show`` from this checkout and
loaded over this build's C, so only the Python-to-C route differs).

Per prompt length (int64 ids below 128,256, chunks of ``--chunk`` tokens, sha256 keys) and
token form (int64 numpy array, int64 CPU torch tensor, list of ints), each variant is timed with
``timeit`` on ``time.process_time`` (one core's CPU time, not the machine's load), ``--reps``
times, the variants interleaved and their order rotated per repetition; the table gives the
median us per prompt and its ratio to hashlib. The hashlib reference gets the prompt's uint32 LE
bytes made beforehand (its conversion is not timed), whatever the form. Checks that both
versions give the same keys first.

    python -m kvdm.experiments.bench.hash_ab --base 34f29e4
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import kvdm.index
from kvdm.index.tokens import ChunkKeys
from kvdm.traces import VOCAB

from .tokens import as_form

LENGTHS = (1024, 4096, 16384, 131072)
FORMS = ("numpy", "torch", "list")


def tokens_module_at(rev: str) -> ModuleType:
    """``kvdm.index.tokens`` as of git revision ``rev`` of this checkout, as a fresh module."""
    root = Path(kvdm.index.__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:index/tokens.py"], capture_output=True,
                         text=True, check=True).stdout
    spec = importlib.util.spec_from_loader(f"kvdm.index.tokens_at_{rev}", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "kvdm.index"  # its relative imports (.api) resolve to today's package
    exec(compile(src, f"{rev}:index/tokens.py", "exec"), mod.__dict__)  # this checkout's own history
    return mod


def per_call_us(fn: Callable[[], Any], budget_s: float = 0.02) -> Callable[[], float]:
    """A timer of ``fn``: us per call, over as many calls as take about ``budget_s`` CPU seconds."""
    t = time.process_time()
    fn()
    number = max(5, int(budget_s / max(time.process_time() - t, 1e-7)))
    return lambda: timeit.timeit(fn, number=number, timer=time.process_time) / number * 1e6


def run(lengths: tuple[int, ...], forms: tuple[str, ...], base: str | None, chunk: int, reps: int) -> list[dict]:
    now = ChunkKeys(chunk, "sha256")
    before = tokens_module_at(base).ChunkKeys(chunk, "sha256") if base else None
    rows = []
    for length in lengths:
        ids = np.random.default_rng(length).integers(0, VOCAB, length, dtype=np.int64)
        data = ids.astype("<u4").tobytes()
        for form in forms:
            prompt = as_form(ids, form)
            variants = {"hashlib": lambda d=data: hashlib.sha256(d).digest(), "now": lambda p=prompt: now.keys(p)}
            if before is not None:
                if not np.array_equal(before.keys(prompt), now.keys(prompt)):
                    raise SystemExit(f"{base} and now give different keys for {length} tokens as {form}")
                variants["before"] = lambda p=prompt: before.keys(p)
            timers = {name: per_call_us(fn) for name, fn in variants.items()}
            times: dict[str, list[float]] = {name: [] for name in variants}
            order = list(variants)
            for r in range(reps):
                for name in order[r % len(order):] + order[:r % len(order)]:
                    times[name].append(timers[name]())
            med = {name: statistics.median(v) for name, v in times.items()}
            rows.append({"tokens": length, "form": form, **{f"{k}_us": v for k, v in med.items()}})
    return rows


def table(rows: list[dict], base: str | None) -> str:
    head = ["tokens", "form", "hashlib us"] + ([f"{base} us", "ratio"] if base else []) + ["now us", "ratio"]
    lines = [head]
    for r in rows:
        cells = [f"{r['tokens']:,}", r["form"], f"{r['hashlib_us']:,.1f}"]
        if base:
            cells += [f"{r['before_us']:,.1f}", f"{r['before_us'] / r['hashlib_us']:.2f}"]
        cells += [f"{r['now_us']:,.1f}", f"{r['now_us'] / r['hashlib_us']:.2f}"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvdm.experiments.bench.hash_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="git revision whose index/tokens.py to compare with (e.g. 34f29e4)")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="prompt lengths (default 1k,4k,16k,128k)")
    ap.add_argument("--forms", default=",".join(FORMS), help="token forms: numpy,torch,list (default all)")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per chunk (default 256)")
    ap.add_argument("--reps", type=int, default=9, help="interleaved repetitions (default 9)")
    args = ap.parse_args(argv)
    forms = tuple(f for f in args.forms.split(",") if f)
    if "torch" in forms and importlib.util.find_spec("torch") is None:
        forms = tuple(f for f in forms if f != "torch")
        print("# torch is not installed: no torch rows", file=sys.stderr)
    rows = run(tuple(int(x) for x in args.lengths.split(",")), forms, args.base, args.chunk, args.reps)
    print(f"# us per prompt (median of {args.reps} interleaved timeit runs, process_time), ratio = / hashlib; "
          f"chunk {args.chunk}, sha256 keys, int64 ids")
    print(table(rows, args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
