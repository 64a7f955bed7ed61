"""Chunk-key hashing per prompt, A/B against ``hashlib.sha256`` and, with ``--base REV``, against
git revision REV of this checkout: what an engine pays to key a prompt (``ChunkKeys.keys``, the
key computation ``TokenIndex.lookup``, ``store`` and ``retrieve_mask`` run on their input).

Per prompt length (int64 ids below 128,256, chunks of ``--chunk`` tokens, sha256 keys) and token
form (int64 numpy array, int64 CPU torch tensor, list of ints), one measurement is ``timeit`` on
``time.process_time`` (one core's CPU time) of the key computation and of ``hashlib.sha256`` over
the prompt's uint32 LE bytes (made beforehand, whatever the form), alternated ``--reps`` times;
its figures are the medians and their ratio. Each version measures in its own process, run
``--rounds`` times, the versions alternating (REV's checkout is extracted with ``git archive``
and its C built once, under ``--workdir``); the table gives the median over rounds, so both
versions meet the same load on a shared machine. The versions' keys are checked to be equal.

    python -m kvdm.experiments.bench.hash_ab --base 34f29e4
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--worker" in sys.argv:  # a version's process: import that version's kvdm
    sys.path[:] = [p for p in os.environ.get("KVDM_AB_PATHS", "").split(os.pathsep) if p] + sys.path[1:]

import argparse  # noqa: E402 - after the worker's path
import hashlib  # noqa: E402
import json  # noqa: E402
import site  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

LENGTHS = (1024, 4096, 16384, 131072)
FORMS = ("numpy", "torch", "list")
VOCAB = 128_256  # as kvdm.traces.VOCAB (not imported: a worker may be an older kvdm)
SUBPACKAGES = ("index", "transport", "native", "traces", "experiments")


def per_call_us(fn: Callable[[], Any], budget_s: float = 0.02) -> Callable[[], float]:
    """A timer of ``fn``: us per call, over as many calls as take about ``budget_s`` CPU seconds."""
    t = time.process_time()
    fn()
    number = max(5, int(budget_s / max(time.process_time() - t, 1e-7)))
    return lambda: timeit.timeit(fn, number=number, timer=time.process_time) / number * 1e6


def measure(lengths: list[int], forms: list[str], chunk: int, reps: int) -> list[dict[str, Any]]:
    """In this process, with whichever kvdm it imports: per length and form, the medians of
    ``reps`` alternated timings of the key computation and of hashlib, and a digest of the keys."""
    import numpy as np

    from kvdm.index.tokens import ChunkKeys

    keyer = ChunkKeys(chunk, "sha256")
    rows = []
    for length in lengths:
        ids = np.random.default_rng(length).integers(0, VOCAB, length, dtype=np.int64)
        data = ids.astype("<u4").tobytes()
        for form in forms:
            if form == "torch":
                import torch

                prompt: Any = torch.from_numpy(ids)
            else:
                prompt = ids.tolist() if form == "list" else ids
            timers = {"hashlib": per_call_us(lambda d=data: hashlib.sha256(d).digest()),
                      "kvdm": per_call_us(lambda p=prompt: keyer.keys(p))}
            times: dict[str, list[float]] = {name: [] for name in timers}
            for r in range(reps):
                for name in sorted(timers, reverse=bool(r % 2)):
                    times[name].append(timers[name]())
            digest = hashlib.sha256(keyer.keys(prompt).tobytes()).hexdigest()
            rows.append({"tokens": length, "form": form, "keys": digest,
                         **{f"{k}_us": statistics.median(v) for k, v in times.items()}})
    return rows


def checkout_of(rev: str, workdir: Path) -> list[str]:
    """The ``sys.path`` of a ``python -S`` process importing REV's kvdm: REV extracted and its C
    built in place (once per REV under ``workdir``), a ``kvdm`` folder of links to its
    subpackages, then this interpreter's site-packages (numpy, torch, cffi)."""
    root = Path(__file__).resolve().parents[2]
    dest = workdir / rev
    src, pkg = dest / "src", dest / "pkg" / "kvdm"
    if not list((src / "native").glob("_kvdm_native*.so")):
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(root), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        print(f"# building {rev}'s C in {src}", file=sys.stderr)
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pkg.mkdir(parents=True, exist_ok=True)
    for sub in SUBPACKAGES:
        if not (pkg / sub).exists():
            (pkg / sub).symlink_to(src / sub)
    return [str(pkg.parent)] + site.getsitepackages()


def run_version(paths: list[str] | None, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One round of one version in its own process: ``paths`` (a ``python -S`` sys.path) for
    REV, None for this checkout as installed."""
    cmd = [sys.executable] + (["-S"] if paths is not None else []) + [__file__, "--worker", json.dumps(spec)]
    env = dict(os.environ, KVDM_AB_PATHS=os.pathsep.join(paths or []))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"the worker failed:\n{out.stderr}")
    return json.loads(out.stdout)


def table(rows: list[dict[str, Any]], base: str | None) -> str:
    head = ["tokens", "form", "hashlib us"] + ([f"{base} us", "/hashlib"] if base else []) + ["now us", "/hashlib"]
    lines = [head]
    for r in rows:
        cells = [f"{r['tokens']:,}", r["form"], f"{r['hashlib_us']:,.1f}"]
        for v in (["base", "now"] if base else ["now"]):
            cells += [f"{r[v + '_us']:,.1f}", f"{r[v + '_ratio']:.2f}"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvdm.experiments.bench.hash_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="git revision to compare with (e.g. 34f29e4)")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="prompt lengths (default 1k,4k,16k,128k)")
    ap.add_argument("--forms", default=",".join(FORMS), help="token forms: numpy,torch,list (default all three)")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per chunk (default 256)")
    ap.add_argument("--reps", type=int, default=5, help="alternated timings per measurement (default 5)")
    ap.add_argument("--rounds", type=int, default=5, help="processes per version, alternating (default 5)")
    ap.add_argument("--workdir", default="/tmp/kvdm-hash-ab", help="where --base is extracted and built")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        print(json.dumps(measure(spec["lengths"], spec["forms"], spec["chunk"], spec["reps"])))
        return 0
    forms = [f for f in args.forms.split(",") if f]
    if "torch" in forms:
        try:
            import torch  # noqa: F401
        except ImportError:
            forms.remove("torch")
            print("# torch is not installed: no torch rows", file=sys.stderr)
    spec = {"lengths": [int(x) for x in args.lengths.split(",")], "forms": forms, "chunk": args.chunk,
            "reps": args.reps}
    versions: dict[str, list[str] | None] = {"now": None}
    if args.base:
        versions["base"] = checkout_of(args.base, Path(args.workdir))
    runs: dict[str, list[list[dict[str, Any]]]] = {v: [] for v in versions}
    for r in range(args.rounds):
        for v in sorted(versions, reverse=bool(r % 2)):
            runs[v].append(run_version(versions[v], spec))
    rows = []
    for i, first in enumerate(runs["now"][0]):
        row = {"tokens": first["tokens"], "form": first["form"]}
        hashlib_us = []
        for v, rounds in runs.items():
            if rounds[0][i]["keys"] != first["keys"]:
                raise SystemExit(f"{args.base} and now key {first['tokens']} tokens as {first['form']} differently")
            row[f"{v}_us"] = statistics.median(rd[i]["kvdm_us"] for rd in rounds)
            row[f"{v}_ratio"] = statistics.median(rd[i]["kvdm_us"] / rd[i]["hashlib_us"] for rd in rounds)
            hashlib_us += [rd[i]["hashlib_us"] for rd in rounds]
        row["hashlib_us"] = statistics.median(hashlib_us)
        rows.append(row)
    print(f"# us per prompt, median over {args.rounds} rounds per version (processes alternating) of the median of "
          f"{args.reps} alternated timeit runs on process_time; /hashlib: the ratio to hashlib.sha256 over the same "
          f"bytes in the same process; chunk {args.chunk}, sha256 keys, int64 ids")
    print(table(rows, args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
