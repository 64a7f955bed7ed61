"""``kvdm doctor``: what this machine offers kvdm: RDMA devices, ports and GIDs, whether
SoftRoCE (rdma_rxe) can be set up here or only in the qemu guest, whether the native build has
the verbs backend, pyverbs, and redis-server."""

from __future__ import annotations

import argparse
import ctypes.util
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvdm.transport import rdma_devices

SOFTROCE_DIR = Path(__file__).resolve().parents[2] / "transport" / "softroce"


@dataclass
class Check:
    """One line of the report: ok, a warning, or missing, with a hint on what to do."""

    name: str
    status: str  # "ok", "warn" or "missing"
    detail: str
    hint: str = ""
    lines: list[str] = field(default_factory=list)


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="report RDMA devices, SoftRoCE, the verbs build, pyverbs and redis",
                       description=__doc__)
    p.set_defaults(func=cmd_doctor)


def verbs_built_in() -> bool:
    """True when the native module has the verbs backend (it then parses a verbs URI before
    looking for a device; the stub refuses every verbs URI with DM_ENOSYS)."""
    from kvdm.transport import DMContext, DMError, TransportUnavailable

    try:
        DMContext(uris=["verbs://not-a-uri"])
    except TransportUnavailable:
        return False
    except DMError:
        return True
    return True


def check_native() -> Check:
    try:
        built = verbs_built_in()
    except Exception as exc:  # the extension itself is missing or broken
        return Check("native build", "missing", f"cannot load kvdm.native: {exc}", "run .ci/bootstrap")
    if built:
        return Check("native build", "ok", "verbs backend built in (rdma-core headers found at build time)")
    return Check("native build", "missing", "built without the verbs backend",
                 "apt-get install libibverbs-dev librdmacm-dev ibverbs-providers, then "
                 "pip install -e . --no-build-isolation")


def check_libibverbs() -> Check:
    lib = ctypes.util.find_library("ibverbs")
    conf = Path("/etc/libibverbs.d")
    providers = sorted(p.name for p in conf.glob("*.driver")) if conf.is_dir() else []
    if not lib:
        return Check("libibverbs", "missing", "libibverbs not found",
                     "apt-get install libibverbs1 ibverbs-providers")
    if "rxe.driver" not in providers:
        return Check("libibverbs", "warn", f"{lib}; {len(providers)} provider(s), no rxe provider",
                     "apt-get install ibverbs-providers")
    return Check("libibverbs", "ok", f"{lib}; {len(providers)} provider(s), rxe among them")


def check_pyverbs() -> Check:
    try:
        import pyverbs  # noqa: F401
    except ImportError as exc:
        return Check("pyverbs", "missing", f"not importable ({exc})",
                     "apt-get install python3-pyverbs, then .ci/bootstrap (exposes it to the venv)")
    return Check("pyverbs", "ok", f"importable from {Path(pyverbs.__file__).parent}")


def check_devices() -> Check:
    """Every RDMA device with its ports and non-zero GIDs (through pyverbs when possible)."""
    names = rdma_devices()
    if not names:
        return Check("RDMA devices", "missing", "none on this machine",
                     "use real RDMA hardware, set up SoftRoCE (see below), or run in the SoftRoCE guest")
    lines: list[str] = []
    try:
        from pyverbs.device import Context

        from kvdm.transport import gid_ipv4, gid_text, pick_gid, pyverbs_enums, query_gids

        e = pyverbs_enums()
        states = {e.IBV_PORT_ACTIVE: "ACTIVE", e.IBV_PORT_DOWN: "DOWN", e.IBV_PORT_INIT: "INIT"}
        for name in names:
            ctx = Context(name=name)
            attr = ctx.query_device()
            lines.append(f"{name}: {attr.phys_port_cnt} port(s), max QP WRs {attr.max_qp_wr}, "
                         f"atomic depth {attr.max_qp_rd_atom}")
            for port in range(1, attr.phys_port_cnt + 1):
                pa = ctx.query_port(port)
                ll = "Ethernet (RoCE)" if pa.link_layer == e.IBV_LINK_LAYER_ETHERNET else "InfiniBand"
                lines.append(f"  port {port}: {states.get(pa.state, pa.state)}, {ll}, active MTU "
                             f"{256 << (int(pa.active_mtu) - 1)}, LID {pa.lid}")
                gids = query_gids(ctx, port, pa.gid_tbl_len)
                best = pick_gid(gids)
                for g in gids:
                    ip = gid_ipv4(g.gid)
                    mark = "  <- gid=auto" if best is not None and g.index == best.index else ""
                    lines.append(f"    gid {g.index}: {gid_text(g.gid)} {g.type}"
                                 + (f" ({ip})" if ip else "") + mark)
            ctx.close()
    except Exception as exc:  # pyverbs missing: list names only
        lines.append(f"(details need pyverbs: {exc})")
        lines += names
    return Check("RDMA devices", "ok", ", ".join(names), lines=lines)


def _module_available(name: str) -> bool:
    if Path(f"/sys/module/{name}").exists():
        return True
    modprobe = shutil.which("modprobe") or "/usr/sbin/modprobe"
    if not os.path.exists(modprobe):
        return False
    return subprocess.run([modprobe, "-n", name], capture_output=True).returncode == 0


def check_softroce() -> Check:
    """Whether rdma_rxe can run here; if not, whether the qemu guest harness can."""
    kernel = platform.release()
    if Path("/sys/module/rdma_rxe").exists():
        rxe = [d for d in rdma_devices() if d.startswith("rxe")]
        detail = f"rdma_rxe loaded (kernel {kernel}); rxe devices: {', '.join(rxe) or 'none'}"
        return Check("SoftRoCE", "ok", detail,
                     "" if rxe else "add a device: rdma link add rxe0 type rxe netdev <ethX>")
    if _module_available("rdma_rxe"):
        return Check("SoftRoCE", "ok", f"rdma_rxe available in kernel {kernel}, not loaded",
                     "modprobe rdma_rxe && rdma link add rxe0 type rxe netdev <ethX>")
    harness = SOFTROCE_DIR / "run-in-guest.sh"
    qemu = shutil.which("qemu-system-x86_64")
    cache = Path(os.environ.get("SOFTROCE_VM_DIR", Path.home() / ".cache" / "kvdm-softroce"))
    prepared = any((cache / "kroot" / "boot").glob("vmlinuz-*")) if (cache / "kroot").is_dir() else False
    detail = (f"kernel {kernel} has no rdma_rxe: real verbs only inside the qemu guest "
              f"({harness}; qemu {'installed' if qemu else 'not installed yet'}, guest kernel "
              f"{'cached' if prepared else 'not downloaded yet'} in {cache})")
    return Check("SoftRoCE", "warn", detail,
                 f"bash {harness} --rwdir $PWD .venv/bin/python -m pytest -m rdma  (or .ci/rdma-tests)")


def check_redis() -> Check:
    path = shutil.which("redis-server")
    if not path:
        return Check("redis-server", "missing", "not on PATH", "apt-get install redis-server")
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
    return Check("redis-server", "ok", f"{path}: {out}")


def run_checks() -> list[Check]:
    return [check_native(), check_libibverbs(), check_pyverbs(), check_devices(), check_softroce(),
            check_redis()]


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks()
    for c in checks:
        print(f"[{c.status:>7}] {c.name}: {c.detail}")
        for line in c.lines:
            print(f"          {line}")
        if c.hint:
            print(f"          -> {c.hint}")
    missing = [c.name for c in checks if c.status == "missing"]
    print("verdict: " + ("everything kvdm can use is here" if not missing else
                         f"missing: {', '.join(missing)} (kvdm still runs what does not need them)"))
    return 0
