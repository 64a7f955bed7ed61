"""Memory-node lifecycle: serve, signals, crash clean-up, and the C build's warnings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from kvdm.transport import DMContext, RegionMissing, ShmMemoryNode
from kvdm.transport.memnode import clean, list_regions, region_info

NATIVE = Path(__file__).resolve().parents[1] / "native"


def _kvdm(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvdm.experiments.cli", *args]


def _wait_for_region(name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"/dev/shm/{name}"):
        assert time.monotonic() < deadline, f"region {name} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_removes_region_on_signal(sig: signal.Signals) -> None:
    name = f"kvdm-test-serve-{os.getpid()}-{sig.value}"
    proc = subprocess.Popen(_kvdm("memnode", "serve", "--name", name, "--size", "1M"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_region(name)
        info = region_info(name)
        assert (info.size, info.node_id, info.owner_pid) == (1 << 20, 0, proc.pid)
        ctx = DMContext(uris=[f"shm:{name}"])   # a client can attach and use it
        g = ctx.alloc(0, 64)
        ctx.write(g, b"served!!")
        assert ctx.read(g, 8) == b"served!!"
        proc.send_signal(sig)
        assert proc.wait(20) == 0
        assert not os.path.exists(f"/dev/shm/{name}")
        assert ctx.read(g, 8) == b"served!!"   # an attached client keeps its mapping
        ctx.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_without_a_name_picks_a_unique_region() -> None:
    proc = subprocess.Popen(_kvdm("memnode", "serve", "--size", "1M", "--node-id", "3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        uri = line.split(" serving ")[1].split()[0]
        assert uri == f"shm:kvdm-{proc.pid}-1", line
        ctx = DMContext(uris=[uri])
        assert ctx.node_ids == [3]
        ctx.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not os.path.exists(f"/dev/shm/kvdm-{proc.pid}-1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_crashed_owner_is_found_and_cleaned() -> None:
    name = f"kvdm-test-crash-{os.getpid()}"
    proc = subprocess.Popen(_kvdm("memnode", "serve", "--name", name, "--size", "1M"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_region(name)
    proc.kill()                                 # SIGKILL: no clean-up runs
    proc.wait()
    assert os.path.exists(f"/dev/shm/{name}")
    orphan = [r for r in list_regions() if r.name == name]
    assert orphan and not orphan[0].owner_alive
    out = subprocess.run(_kvdm("memnode", "clean", "--dry-run"), capture_output=True, text=True, check=True)
    assert f"would remove {name}" in out.stdout
    assert os.path.exists(f"/dev/shm/{name}")
    with ShmMemoryNode(1 << 20) as live:        # a live owner's region is left alone
        removed = clean()
        assert name in removed and live.name not in removed
        assert os.path.exists(f"/dev/shm/{live.name}")
    with pytest.raises(RegionMissing):
        region_info(name)


def test_embedded_node_is_removed_at_exit_and_not_by_children(tmp_path: Path) -> None:
    code = (
        "import multiprocessing as mp, os\n"
        "from kvdm.transport import ShmMemoryNode, DMContext\n"
        "def child(uri):\n"
        "    DMContext(uris=[uri]).alloc(0, 64)\n"
        "if __name__ == '__main__':\n"
        "    n = ShmMemoryNode(1 << 20)\n"
        "    p = mp.get_context('spawn').Process(target=child, args=(n.uri,)); p.start(); p.join()\n"
        "    assert p.exitcode == 0 and os.path.exists('/dev/shm/' + n.name)\n"
        "    print(n.name)\n"
    )
    script = tmp_path / "owner.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(f"/dev/shm/{out.stdout.strip()}")


def test_serve_rejects_a_taken_name(shm_node: ShmMemoryNode) -> None:
    out = subprocess.run(_kvdm("memnode", "serve", "--name", shm_node.name, "--size", "1M"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "already exists" in out.stderr and "Traceback" not in out.stderr


def test_cli_rejects_unknown_values_with_the_valid_ones() -> None:
    out = subprocess.run(_kvdm("bench", "transport", "--latency-model", "fast"), capture_output=True, text=True)
    assert out.returncode == 2 and "valid: none, spin, virtual" in out.stderr
    out = subprocess.run(_kvdm("bench", "transport", "--verbs", "read7"), capture_output=True, text=True)
    assert out.returncode == 2 and "valid: read64" in out.stderr


def test_bench_transport_prints_accounting() -> None:
    out = subprocess.run(_kvdm("bench", "transport", "--verbs", "read128,cas", "--batches", "1,8",
                               "--clients", "1", "--iters", "20000", "--node-size", "64M"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line and not line.startswith(("#", "clients"))]
    assert [(r[1], r[2], r[5], r[6]) for r in rows] == [
        ("read128", "1", "1.0000", "128.0"), ("read128", "8", "0.1250", "128.0"),
        ("cas", "1", "1.0000", "16.0"), ("cas", "8", "0.1250", "16.0"),
    ]
    assert all(float(r[3].replace(",", "")) > 0 for r in rows)


def test_native_sources_compile_without_warnings() -> None:
    cc = sysconfig.get_config_var("CC") or "cc"
    sources = sorted(str(p) for p in NATIVE.glob("*.c") if not p.name.startswith("_"))
    assert sources
    out = subprocess.run([*cc.split()[:1], "-std=gnu11", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                          "-Wno-unused-parameter", f"-I{NATIVE}", *sources], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
