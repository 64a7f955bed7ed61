"""``kvdm bench tokens``: hashing and prefix lookup of whole prompts through the token layer."""

from __future__ import annotations

import argparse
import time
from typing import Any

from kvdm.experiments.bench.tokens import LENGTHS, TOKEN_FORMS, TokensConfig, run_tokens
from kvdm.index import TOKEN_KEY_SCHEMES as KEY_SCHEMES
from kvdm.index import available
from kvdm.index.tokens import TORCH_EXTRA

from . import CommandFailed, UsageError, choices_type, count, group, real
from .bench_index import backend_spec
from .options import add_transport_options, transport_config
from .replay import add_index_options


def register(sub: Any) -> None:
    import kvdm.experiments.bench.tokens as mod

    g = group(sub, "bench", "benchmarks that print their figures")
    p = g.add_parser("tokens", help="prompts/s of the token layer: hashing and prefix lookup, per prompt length",
                     description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="chime,redis", metavar="LIST",
                   help="backends, comma-separated, one after another (default chime,redis)")
    p.add_argument("--lengths", default=",".join(str(n) for n in LENGTHS), metavar="LIST",
                   help="prompt lengths in tokens, comma-separated (default 1024,4096,16384,65536,131072)")
    p.add_argument("--prompts", type=count, default=32, help="prompts per length (default 32)")
    p.add_argument("--chunk", type=count, default=256, help="tokens per chunk (default 256, LMCache's)")
    p.add_argument("--key-scheme", type=choices_type(tuple(KEY_SCHEMES), "key scheme"), default="sha256",
                   help="chunk keys: sha256 (32 B), u64 (8 B) or vllm-sha256 (32 B, vLLM's block hash); default sha256")
    p.add_argument("--cached", type=real(0, 1), default=0.5,
                   help="share of each prompt stored before the lookups, in whole chunks (default 0.5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the prompts (default 1)")
    p.add_argument("--tokens-as", type=choices_type(TOKEN_FORMS, "token form"), default="numpy",
                   help="how the prompts reach the token layer: numpy (int64 arrays, the default), torch "
                        "(int64 CPU tensors, as LMCache) or list (of ints, as vLLM)")
    p.add_argument("--out", default=None, help="results directory (default results/tokens-<time>)")
    add_index_options(p)
    add_transport_options(p)
    p.set_defaults(func=cmd_bench_tokens)


def parse_lengths(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in text.split(","))
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise UsageError(f"--lengths must be positive token counts, comma-separated, got {text!r}")
    return out


def config_from_args(args: argparse.Namespace) -> TokensConfig:
    valid = available()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in valid]
    if unknown or not backends:
        raise UsageError(f"--backends: unknown index {', '.join(unknown) or repr(args.backends)}; "
                         f"valid: {', '.join(valid)}")
    args.key_bytes = KEY_SCHEMES[args.key_scheme]
    if args.tokens_as == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise UsageError(f"--tokens-as torch needs torch: {TORCH_EXTRA}") from None
    lengths = parse_lengths(args.lengths)
    opts = dict(args.index_opt)
    specs = [backend_spec(args, b, opts, len(backends) > 1) for b in backends]
    return TokensConfig(specs, transport_config(args), lengths, args.prompts, args.chunk, args.key_scheme,
                        args.cached, args.seed, args.out or f"results/tokens-{time.strftime('%Y%m%d-%H%M%S')}",
                        args.tokens_as)


def cmd_bench_tokens(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print("# kvdm bench tokens")
    res = run_tokens(cfg)
    out = res.write(cfg.out)
    print(f"# results: {out}/results.parquet (+ .csv, run.json)")
    bad = res.rows[res.rows["mismatches"] > 0]
    if not bad.empty:
        raise CommandFailed("lookups that differ from what was stored: "
                            + ", ".join(f"{r.index} {r.tokens} tokens: {r.mismatches}" for r in bad.itertuples()))
    return 0
