"""Python handle on a native dm context: attach memory nodes, issue verbs, read counters.

The data path never goes through here verb by verb (indexes pass ``DMContext.ptr`` to C);
this class is for set-up, diagnostics, tests and the transport benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kvdm.native import ffi, lib

from .config import TransportConfig


class DMError(RuntimeError):
    """A transport call failed; ``code`` is the dm_status, the message is the C side's."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidArgument(DMError, ValueError):
    """A bad argument the C side refused (DM_EINVAL)."""


class Timeout(DMError, TimeoutError):
    """Something waited past its limit (DM_ETIMEDOUT): e.g. a lock held, with a valid lease, for
    longer than the index's ``max_wait_ms``."""


class MemoryNodeFull(DMError, MemoryError):
    """A memory node has no room left (DM_ENOMEM)."""


class AddressError(DMError, ValueError):
    """Unknown node, out-of-range or misaligned address."""


class RegionExists(DMError, FileExistsError):
    """A memory node with that name already exists."""


class RegionMissing(DMError, FileNotFoundError):
    """No such memory node region."""


class TransportUnavailable(DMError):
    """The transport is not built in (e.g. verbs without rdma-core)."""


class BadRegion(DMError, ValueError):
    """A malformed region header or peer message (DM_EPROTO)."""


# The one table of dm statuses to exception classes (the transport's and every native index's):
# DM_EIO (a verb or peer failed) and anything unknown raise the base DMError.
_ERRORS: dict[int, type[DMError]] = {
    lib.DM_EINVAL: InvalidArgument,
    lib.DM_ETIMEDOUT: Timeout,
    lib.DM_ENOMEM: MemoryNodeFull,
    lib.DM_ENODE: AddressError,
    lib.DM_EALIGN: AddressError,
    lib.DM_ERANGE: AddressError,
    lib.DM_EEXIST: RegionExists,
    lib.DM_ENOENT: RegionMissing,
    lib.DM_ENOSYS: TransportUnavailable,
    lib.DM_EPROTO: BadRegion,
}


def raise_for(code: int, message: str) -> None:
    """Raise the exception class matching a dm_status (no-op for DM_OK)."""
    if code != lib.DM_OK:
        raise _ERRORS.get(code, DMError)(code, message)


def check_buf(code: int, err: Any) -> None:
    """Raise for a call that reported into an error buffer."""
    if code != lib.DM_OK:
        raise_for(code, ffi.string(err).decode(errors="replace"))


COUNTER_FIELDS = (
    "rtts", "doorbells", "reads", "writes", "cas", "faa", "cas_failed",
    "bytes_read", "bytes_written", "virtual_ns", "torn_lines", "exec_ns",
)


def virtual_charge(names: Sequence[str]) -> Callable[[Any], int]:
    """Latency model ``virtual``, read from counter vectors whose fields are ``names``: the
    modelled time minus the doorbells' own execution (on shm the emulated NIC's copying, which
    the model replaces). A call's latency is its wall time plus the difference of this value
    across the call; the C loop and per-key latencies compute the same (dm.h, ``exec_ns``)."""
    vi, ei = names.index("virtual_ns"), names.index("exec_ns")
    return lambda v: int(v[vi]) - int(v[ei])


def counters_dict(c: Any) -> dict[str, int]:
    """A dm_counters struct as a plain dict."""
    return {name: int(getattr(c, name)) for name in COUNTER_FIELDS}


@dataclass
class Pending:
    """Result slot of a posted verb; ``value`` is valid after the batch is submitted."""

    _buf: Any
    _kind: str

    @property
    def value(self) -> bytes | int:
        if self._kind == "read":
            return bytes(ffi.buffer(self._buf))
        return int(self._buf[0])


class DMContext:
    """One client thread's dm context (connections to memory nodes, batch, counters)."""

    def __init__(self, config: TransportConfig | None = None, uris: list[str] | None = None) -> None:
        config = config or TransportConfig()
        if uris is not None:
            config = config.with_nodes(uris)
        cfg = ffi.new("dm_config *")
        cfg.latency_model = config.latency_model_code
        cfg.rtt_us = config.rtt_us
        cfg.gbps = config.gbps
        cfg.nic_mops = config.nic_mops
        cfg.tear = int(config.tear)
        cfg.seed = config.seed
        cfg.chunk_bytes = config.chunk_bytes
        out = ffi.new("dm_ctx **")
        err = ffi.new("char[512]")
        check_buf(lib.dm_ctx_create(cfg, out, err, 512), err)
        self.ptr = ffi.gc(out[0], lib.dm_ctx_destroy)
        self.config = config
        self.node_ids: list[int] = []
        self._keep: list[Any] = []
        for uri in config.memory_nodes:
            self.attach(uri)

    def _check(self, code: int) -> None:
        if code != lib.DM_OK:
            raise_for(code, ffi.string(lib.dm_last_error(self.ptr)).decode(errors="replace"))

    def attach(self, uri: str) -> int:
        """Attach a memory node by URI; returns its node id."""
        nid = ffi.new("unsigned *")
        self._check(lib.dm_attach(self.ptr, uri.encode(), nid))
        self.node_ids.append(int(nid[0]))
        return int(nid[0])

    def node_size(self, node_id: int) -> int:
        return int(lib.dm_node_size(self.ptr, node_id))

    # -- posting (batched) --
    def post_read(self, gaddr: int, length: int) -> Pending:
        buf = ffi.new("uint8_t[]", length)
        self._check(lib.dm_read(self.ptr, buf, gaddr, length))
        self._keep.append(buf)
        return Pending(buf, "read")

    def post_write(self, gaddr: int, data: bytes) -> None:
        buf = ffi.from_buffer(data)
        self._check(lib.dm_write(self.ptr, gaddr, buf, len(data)))
        self._keep.append((data, buf))

    def post_cas(self, gaddr: int, expected: int, desired: int) -> Pending:
        old = ffi.new("uint64_t *")
        self._check(lib.dm_cas(self.ptr, gaddr, expected, desired, old))
        self._keep.append(old)
        return Pending(old, "atomic")

    def post_faa(self, gaddr: int, add: int) -> Pending:
        old = ffi.new("uint64_t *")
        self._check(lib.dm_faa(self.ptr, gaddr, add & 0xFFFFFFFFFFFFFFFF, old))
        self._keep.append(old)
        return Pending(old, "atomic")

    def submit(self, streamed: bool = False) -> None:
        """One round trip: execute every posted verb. ``streamed``: with a latency model, the
        doorbell is charged answer by answer as the caller awaits them (:meth:`await_answer`),
        so the caller's work between awaits overlaps the NIC delivering later answers."""
        try:
            self._check(lib.dm_submit_streamed(self.ptr) if streamed else lib.dm_submit(self.ptr))
        finally:
            self._keep.clear()

    def await_answer(self, verb: int) -> None:
        """Before reading the answer of the streamed doorbell's verb ``verb`` (0 = first posted)."""
        lib.dm_await(self.ptr, verb)

    def await_all(self) -> None:
        """Every answer of the streamed doorbell has arrived (the next submit implies it)."""
        lib.dm_await_all(self.ptr)

    @contextmanager
    def batch(self) -> Iterator[DMContext]:
        """Post verbs inside the block; they are submitted together (one RTT) on exit."""
        try:
            yield self
        except BaseException:
            lib.dm_discard(self.ptr)
            self._keep.clear()
            raise
        self.submit()

    # -- one-verb conveniences (each is one RTT) --
    def read(self, gaddr: int, length: int) -> bytes:
        p = self.post_read(gaddr, length)
        self.submit()
        return p.value  # type: ignore[return-value]

    def write(self, gaddr: int, data: bytes) -> None:
        self.post_write(gaddr, data)
        self.submit()

    def cas(self, gaddr: int, expected: int, desired: int) -> int:
        p = self.post_cas(gaddr, expected, desired)
        self.submit()
        return p.value  # type: ignore[return-value]

    def faa(self, gaddr: int, add: int) -> int:
        p = self.post_faa(gaddr, add)
        self.submit()
        return p.value  # type: ignore[return-value]

    def alloc(self, node_id: int, length: int, align: int = 64) -> int:
        """Allocate remote memory on a node (64-byte aligned); returns its global address."""
        out = ffi.new("dm_gaddr *")
        self._check(lib.dm_alloc(self.ptr, node_id, length, align, out))
        return int(out[0])

    def counters(self) -> dict[str, int]:
        c = ffi.new("dm_counters *")
        lib.dm_get_counters(self.ptr, c)
        return counters_dict(c)

    def reset_counters(self) -> None:
        lib.dm_reset_counters(self.ptr)

    def bench_loop(self, op: str, base: int, span: int, length: int, batch: int, iters: int,
                   seed: int = 1) -> int:
        """Run the native verb loop; returns elapsed ns."""
        codes = {"read": lib.DM_BENCH_READ, "write": lib.DM_BENCH_WRITE, "cas": lib.DM_BENCH_CAS,
                 "faa": lib.DM_BENCH_FAA}
        if op not in codes:
            raise ValueError(f"unknown bench op {op!r}; valid: {', '.join(codes)}")
        elapsed = ffi.new("uint64_t *")
        self._check(lib.dm_bench_loop(self.ptr, codes[op], base, span, length, batch, iters, seed, elapsed))
        return int(elapsed[0])

    def close(self) -> None:
        """Detach every node now (otherwise done when the object is collected)."""
        if self.ptr is not None:
            ffi.release(self.ptr)  # runs dm_ctx_destroy now
            self.ptr = None

    def __enter__(self) -> DMContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gaddr(node_id: int, offset: int) -> int:
    """Global address of byte ``offset`` on memory node ``node_id``."""
    return (node_id << 56) | (offset & ((1 << 48) - 1))


def root_gaddr(node_id: int, slot: int) -> int:
    """Address of root slot ``slot`` (an 8-byte CAS word in the node header)."""
    if not 0 <= slot < lib.DM_NUM_ROOTS:
        raise ValueError(f"root slot {slot} not in 0..{lib.DM_NUM_ROOTS - 1}")
    return gaddr(node_id, lib.DM_HDR_ROOTS + 8 * slot)
