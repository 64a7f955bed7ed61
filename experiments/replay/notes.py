"""The lines that say how a run's figures were made, for tables, figures and reports: whether
its substrate is emulated (:func:`emulation_note`) and how it drives Redis (:func:`redis_note`).
The commands (``kvdm bench transport``, ``kvdm bench index``) and the reproduction print them."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kvdm.transport import SYS_IB, TransportConfig, rdma_devices


def emulation_note(cfg: TransportConfig, uris: list[str]) -> str:
    """A warning when the verbs figures cannot be hardware ones: a software RDMA device
    (SoftRoCE rdma_rxe or siw: no NIC under it) and/or a CPU emulated by qemu TCG."""
    if cfg.transport != "verbs":
        return ""
    why = []
    devices = {parse_qs(urlsplit(u).query).get("dev", [""])[0] for u in uris if u.startswith("verbs://")}
    if "" in devices:  # no dev= in the URI: the client takes the first device
        devices.discard("")
        devices.update(rdma_devices()[:1])
    soft = sorted(d for d in devices if "/virtual/" in str((SYS_IB / d).resolve()))
    if soft:
        why.append(f"{', '.join(soft)} is software RDMA (SoftRoCE/siw: the kernel emulates the NIC)")
    try:
        cpu = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpu = ""
    if "QEMU TCG" in cpu:
        why.append("the CPU is emulated by qemu TCG (~17x slower)")
    if not why:
        return ""
    return "# EMULATION FIGURES, not hardware ones: " + "; ".join(why)


def redis_note(options: dict[str, Any], driver: str = "auto") -> str:
    """How a run drives Redis, for tables and figures: its pipelining, range mode and clock."""
    depth = int(options.get("pipeline", 0))
    rtt = "each call's commands in one round trip" if depth == 0 else f"pipeline depth {depth}"
    clock = "timed in Python around the redis-py call" if driver == "python" \
        else "timed in C (a hiredis client in the C measuring loop)"
    return f"redis: {rtt}, range mode {options.get('range_mode', 'zset')}; {clock}"


__all__ = ["emulation_note", "redis_note"]
