"""Memory nodes over ibverbs: a registered region served to one-sided verbs, via pyverbs.

``kvdm memnode serve --transport verbs`` runs :func:`serve`: it allocates the region, writes
the dm.h header (magic, size, node id, owner pid, bump pointer), registers it for remote
READ, WRITE and atomics, and accepts clients on a TCP port. Each client gets one RC queue
pair; after the handshake the node is passive: no CPU on the data path. A client's TCP
connection stays open while it is attached; when it closes (exit, crash, kill), the node
destroys that client's QP and keeps serving everyone else.

Connection protocol, version 1 (the client side is native/dm_verbs.c; all integers
little-endian):

==========  =====================================================================
header      16 bytes: u32 magic 0x5051564b ("KVQP"), u16 version (1), u16 type
            (1 CONNECT client->node, 2 ACCEPT node->client, 3 REJECT node->client),
            u32 body length, u32 reserved (0)
QP info     32 bytes: u32 QP number (24 bit), u32 PSN (24 bit), u16 LID, u8 path MTU
            (ibv_mtu, 1..5), u8 atomic depth (>= 1), u8[16] GID, u32 reserved (0)
CONNECT     header + QP info (body length 32)
ACCEPT      header + QP info + u32 node id + u32 rkey + u64 region size
            + u64 region base address (body length 56)
REJECT      header + a UTF-8 reason of 1..512 bytes; the node then closes the connection
==========  =====================================================================

Every request is validated (magic, version, type, exact length, field ranges, no trailing
bytes, a deadline for the whole handshake); a bad one is rejected with the reason logged,
and the node keeps serving.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import mmap
import os
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .lifecycle import stop_on_signals

log = logging.getLogger("kvdm.memnode.verbs")

MAGIC = 0x5051564B
VERSION = 1
CONNECT, ACCEPT, REJECT = 1, 2, 3
TYPE_NAMES = {CONNECT: "CONNECT", ACCEPT: "ACCEPT", REJECT: "REJECT"}
HEADER = struct.Struct("<IHHII")
QPINFO = struct.Struct("<IIHBB16sI")
ACCEPT_TAIL = struct.Struct("<IIQQ")
MAX_REASON = 512
MAX_CLIENTS = 1024
HANDSHAKE_TIMEOUT = 30.0  # seconds; generous because the SoftRoCE guest is emulated

# dm.h region header (offsets and values shared with every backend)
DM_MAGIC = 0x31304E4D4D44564B
DM_HDR_MAGIC, DM_HDR_SIZE_OFF, DM_HDR_NODE_ID, DM_HDR_OWNER_PID = 0, 8, 16, 24
DM_HDR_ALLOC, DM_HDR_BYTES = 64, 4096
DM_MAX_NODES = 255

IBV_MTU_MIN, IBV_MTU_MAX = 1, 5
MAX_RD_ATOMIC = 16


class ProtocolError(ValueError):
    """A peer sent a message that violates the connection protocol."""


class ConnectRefused(RuntimeError):
    """The node cannot take this client (no QP, too many clients, ...); the text is sent back."""


@dataclass(frozen=True)
class QPInfo:
    """What one side of an RC connection tells the other."""

    qpn: int
    psn: int
    lid: int
    mtu: int
    rd_atomic: int
    gid: bytes

    def validate(self) -> None:
        """Raise ProtocolError when a field is out of range."""
        if not 1 <= self.qpn <= 0xFFFFFF:
            raise ProtocolError(f"QP number {self.qpn} not in 1..2^24-1")
        if not 0 <= self.psn <= 0xFFFFFF:
            raise ProtocolError(f"PSN {self.psn} wider than 24 bits")
        if not IBV_MTU_MIN <= self.mtu <= IBV_MTU_MAX:
            raise ProtocolError(f"path MTU code {self.mtu} not an ibv_mtu value (1..5)")
        if self.rd_atomic < 1:
            raise ProtocolError("atomic depth 0")
        if len(self.gid) != 16:
            raise ProtocolError(f"GID of {len(self.gid)} bytes")
        if not any(self.gid) and self.lid == 0:
            raise ProtocolError("neither a GID nor a LID")


@dataclass(frozen=True)
class RegionInfo:
    """What ACCEPT tells a client about the region."""

    node_id: int
    rkey: int
    size: int
    base: int


def encode_header(msg_type: int, body_len: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, msg_type, body_len, 0)


def decode_header(data: bytes) -> tuple[int, int]:
    """(type, body length) of a 16-byte header; ProtocolError if it is not ours."""
    if len(data) != HEADER.size:
        raise ProtocolError(f"header of {len(data)} bytes, expected {HEADER.size}")
    magic, version, msg_type, body_len, reserved = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}): not a kvdm verbs client")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, this node speaks {VERSION}")
    if msg_type not in TYPE_NAMES:
        raise ProtocolError(f"unknown message type {msg_type}")
    if reserved:
        raise ProtocolError("reserved header field not zero")
    return msg_type, body_len


def encode_qpinfo(q: QPInfo) -> bytes:
    return QPINFO.pack(q.qpn, q.psn, q.lid, q.mtu, q.rd_atomic, q.gid, 0)


def decode_qpinfo(data: bytes) -> QPInfo:
    qpn, psn, lid, mtu, rd_atomic, gid, reserved = QPINFO.unpack(data)
    if reserved:
        raise ProtocolError("reserved QP-info field not zero")
    q = QPInfo(qpn, psn, lid, mtu, rd_atomic, gid)
    q.validate()
    return q


def encode_connect(q: QPInfo) -> bytes:
    return encode_header(CONNECT, QPINFO.size) + encode_qpinfo(q)


def encode_accept(q: QPInfo, region: RegionInfo) -> bytes:
    tail = ACCEPT_TAIL.pack(region.node_id, region.rkey, region.size, region.base)
    return encode_header(ACCEPT, QPINFO.size + ACCEPT_TAIL.size) + encode_qpinfo(q) + tail


def decode_accept(data: bytes) -> tuple[QPInfo, RegionInfo]:
    """Parse a whole ACCEPT message (header included)."""
    msg_type, body_len = decode_header(data[:HEADER.size])
    expect = QPINFO.size + ACCEPT_TAIL.size
    if msg_type != ACCEPT or body_len != expect or len(data) != HEADER.size + body_len:
        raise ProtocolError(f"not an ACCEPT of {QPINFO.size + ACCEPT_TAIL.size} bytes")
    q = decode_qpinfo(data[HEADER.size:HEADER.size + QPINFO.size])
    return q, RegionInfo(*ACCEPT_TAIL.unpack(data[HEADER.size + QPINFO.size:]))


def encode_reject(reason: str) -> bytes:
    text = (reason or "rejected").encode("utf-8", "replace")[:MAX_REASON]
    return encode_header(REJECT, len(text)) + text


# ---- pyverbs helpers (also used by `kvdm doctor`) ---------------------------------------------


SYS_IB = Path("/sys/class/infiniband")


def rdma_devices() -> list[str]:
    """This machine's RDMA devices, by name (none on a plain host; rxe0 in the SoftRoCE guest)."""
    return sorted(p.name for p in SYS_IB.iterdir()) if SYS_IB.is_dir() else []


def pyverbs_enums() -> Any:
    """pyverbs' enum module (renamed in newer rdma-core)."""
    try:
        import pyverbs.enums as e
    except ImportError:  # rdma-core >= 57
        import pyverbs.libibverbs_enums as e  # type: ignore[no-redef]
    return e


def gid_bytes(text: str) -> bytes:
    """16 raw bytes of a GID printed as ``xxxx:xxxx:...``."""
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 16:
        raise ValueError(f"bad GID {text!r}")
    return raw


def gid_text(raw: bytes) -> str:
    h = raw.hex()
    return ":".join(h[i:i + 4] for i in range(0, 32, 4))


def gid_ipv4(raw: bytes) -> str | None:
    """The IPv4 address of an IPv4-mapped GID (``::ffff:a.b.c.d``), else None."""
    if raw[:12] == bytes(10) + b"\xff\xff":
        return socket.inet_ntoa(raw[12:])
    return None


@dataclass
class GidEntry:
    index: int
    gid: bytes
    type: str  # "RoCE v2", "IB/RoCE v1" or "?"


def query_gids(ctx: Any, port: int, table_len: int) -> list[GidEntry]:
    """Non-zero GIDs of a port, with their types."""
    out = []
    for i in range(table_len):
        try:
            raw = gid_bytes(ctx.query_gid(port, i).gid)
        except Exception:
            continue
        if not any(raw):
            continue
        out.append(GidEntry(i, raw, gid_type(ctx, port, i)))
    return out


def gid_type(ctx: Any, port: int, index: int) -> str:
    """"RoCE v2", "IB/RoCE v1" (the kernel does not tell them apart) or "?"."""
    name = ctx.name.decode() if isinstance(ctx.name, bytes) else str(ctx.name)
    sysfs = Path(f"/sys/class/infiniband/{name}/ports/{port}/gid_attrs/types/{index}")
    with contextlib.suppress(OSError):
        return sysfs.read_text().strip() or "?"
    with contextlib.suppress(Exception):  # ibv_query_gid_type: enum ibv_gid_type_sysfs
        return {0: "IB/RoCE v1", 1: "RoCE v2"}.get(int(ctx.query_gid_type(port, index)), "?")
    return "?"


def pick_gid(entries: list[GidEntry]) -> GidEntry | None:
    """The GID the native client picks with gid=auto: RoCE v2 IPv4-mapped, else RoCE v2, else any."""
    best, rank = None, 0
    for e in entries:
        r = 1 + 2 * (e.type == "RoCE v2") + (gid_ipv4(e.gid) is not None)
        if r > rank:
            best, rank = e, r
    return best


def device_names() -> list[str]:
    """Names of the RDMA devices libibverbs sees ([] when there are none)."""
    from pyverbs.device import get_device_list

    try:
        return [d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in get_device_list()]
    except Exception:  # PyverbsRDMAError: "Failed to get devices list" when there is none
        return []


# ---- the region and its QPs --------------------------------------------------------------------


class Connector(Protocol):
    """What the TCP server needs from the RDMA side."""

    def connect(self, client: QPInfo) -> tuple[Any, bytes]:
        """Create and connect a QP for ``client``; return (handle, whole ACCEPT message)."""

    def release(self, handle: Any) -> None:
        """Destroy the QP behind ``handle``."""


class VerbsRegion:
    """A registered memory region on one device/port/GID, with a QP per connected client."""

    def __init__(self, size: int, node_id: int, device: str | None = None, ib_port: int = 1,
                 gid_index: int | None = None) -> None:
        from pyverbs.cq import CQ
        from pyverbs.device import Context
        from pyverbs.mr import MR
        from pyverbs.pd import PD

        if not 0 <= node_id < DM_MAX_NODES:
            raise ValueError(f"memory-node id {node_id} not in 0..{DM_MAX_NODES - 1}")
        if size < 64 * 1024 or size % 4096 or size >= 1 << 48:
            raise ValueError(f"region size {size} must be a multiple of 4096 between 64 KiB and 2^48")
        e = self.e = pyverbs_enums()
        names = device_names()
        if not names:
            raise RuntimeError("no RDMA device on this machine (load rdma_rxe for SoftRoCE; "
                               "see `kvdm doctor`)")
        if device is None:
            device = names[0]
        elif device not in names:
            raise ValueError(f"RDMA device {device!r} not found (available: {', '.join(names)})")
        self.device, self.ib_port, self.node_id, self.size = device, ib_port, node_id, size
        self.ctx = Context(name=device)
        attr = self.ctx.query_device()
        if not 1 <= ib_port <= attr.phys_port_cnt:
            raise ValueError(f"device {device} has no port {ib_port} (it has {attr.phys_port_cnt})")
        self.port = self.ctx.query_port(ib_port)
        if self.port.state != e.IBV_PORT_ACTIVE:
            raise RuntimeError(f"port {ib_port} of {device} is not ACTIVE (state {self.port.state})")
        gids = query_gids(self.ctx, ib_port, self.port.gid_tbl_len)
        if gid_index is None:
            chosen = pick_gid(gids)
            if chosen is None:
                raise RuntimeError(f"device {device} port {ib_port} has no GID")
            self.gid_index, self.gid = chosen.index, chosen.gid
        else:
            match = [g for g in gids if g.index == gid_index]
            if not match:
                valid = ", ".join(f"{g.index} ({gid_text(g.gid)}, {g.type})" for g in gids) or "none"
                raise ValueError(f"GID index {gid_index} of {device} port {ib_port} is empty; valid: {valid}")
            self.gid_index, self.gid = gid_index, match[0].gid
        self.rd_atomic = max(1, min(MAX_RD_ATOMIC, attr.max_qp_rd_atom))
        self.access = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE
                       | e.IBV_ACCESS_REMOTE_ATOMIC)
        self.pd = PD(self.ctx)
        self.cq = CQ(self.ctx, 16)
        # Anonymous memory starts zeroed, as root slots and the allocator word require.
        self.mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self.mem)
        self.base = ctypes.addressof(self._anchor)
        struct.pack_into("<QQQ", self.mem, DM_HDR_SIZE_OFF, size, node_id, os.getpid())
        struct.pack_into("<Q", self.mem, DM_HDR_ALLOC, DM_HDR_BYTES)
        struct.pack_into("<Q", self.mem, DM_HDR_MAGIC, DM_MAGIC)  # last: the header is complete
        try:
            self.mr = MR(self.pd, size, self.access, address=self.base)
        except Exception as exc:
            raise RuntimeError(f"registering {size} bytes on {device} failed: {exc} (too large for the "
                               "locked-memory limit? try a smaller --size or `ulimit -l unlimited`)") from exc
        self.qps: set[Any] = set()

    def uri(self, host: str, port: int) -> str:
        """The URI a client on the same device would attach with."""
        if ":" in host:
            host = f"[{host}]"
        return f"verbs://{host}:{port}?dev={self.device}&gid={self.gid_index}&ib_port={self.ib_port}"

    def connect(self, client: QPInfo) -> tuple[Any, bytes]:
        from pyverbs.addr import GID, AHAttr, GlobalRoute
        from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr

        e = self.e
        init = QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq,
                          cap=QPCap(max_send_wr=1, max_recv_wr=1, max_send_sge=1, max_recv_sge=1))
        a = QPAttr(port_num=self.ib_port)
        a.qp_access_flags = self.access
        try:
            qp = QP(self.pd, init, a)
        except Exception as exc:
            raise ConnectRefused(f"cannot create a QP: {exc}") from exc
        psn = int.from_bytes(os.urandom(3), "little")
        try:
            a = QPAttr(port_num=self.ib_port)
            a.qp_access_flags = self.access
            a.path_mtu = min(client.mtu, int(self.port.active_mtu))
            a.dest_qp_num = client.qpn
            a.rq_psn = client.psn
            a.max_dest_rd_atomic = self.rd_atomic
            a.min_rnr_timer = 12
            a.timeout = 14
            a.retry_cnt = 7
            a.rnr_retry = 7
            a.sq_psn = psn
            a.max_rd_atomic = 1
            dgid = GID()
            dgid.gid = gid_text(client.gid)
            gr = GlobalRoute(dgid=dgid, sgid_index=self.gid_index, hop_limit=64)
            a.ah_attr = AHAttr(port_num=self.ib_port, dlid=client.lid, is_global=int(any(client.gid)), gr=gr)
            qp.to_rts(a)
        except Exception as exc:
            qp.close()
            raise ConnectRefused(f"cannot connect a QP to QPN {client.qpn}: {exc}") from exc
        self.qps.add(qp)
        mine = QPInfo(qp.qp_num, psn, int(self.port.lid), int(self.port.active_mtu), self.rd_atomic, self.gid)
        region = RegionInfo(self.node_id, self.mr.rkey, self.size, self.base)
        return qp, encode_accept(mine, region)

    def release(self, handle: Any) -> None:
        self.qps.discard(handle)
        handle.close()

    def close(self) -> None:
        for qp in list(self.qps):
            self.release(qp)
        self.mr.close()
        self.cq.close()
        self.pd.close()
        self.ctx.close()
        del self._anchor
        self.mem.close()


# ---- the TCP side ---------------------------------------------------------------------------------


@dataclass
class _Client:
    sock: socket.socket
    peer: str
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    handle: Any = None


class MemnodeServer:
    """Accepts clients on a TCP socket, validates their CONNECT, gets a QP from ``connector``
    and answers ACCEPT or REJECT; destroys a client's QP when its connection closes."""

    def __init__(self, connector: Connector, listen: str = "0.0.0.0", port: int = 0,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, max_clients: int = MAX_CLIENTS) -> None:
        self.connector = connector
        self.handshake_timeout = handshake_timeout
        self.max_clients = max_clients
        family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((listen, port))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.clients: dict[int, _Client] = {}
        self.connected = 0
        self.rejected = 0

    # -- bookkeeping --
    def _drop(self, c: _Client, why: str, level: int = logging.INFO) -> None:
        self.sel.unregister(c.sock)
        self.clients.pop(c.sock.fileno(), None)
        if c.handle is not None:
            self.connector.release(c.handle)
            self.connected -= 1
            log.log(level, "client %s disconnected (%s); its QP is destroyed, %d client(s) left", c.peer, why,
                    self.connected)
        c.sock.close()

    def _reject(self, c: _Client, reason: str) -> None:
        self.rejected += 1
        log.warning("rejected connection from %s: %s", c.peer, reason)
        with contextlib.suppress(OSError):
            c.sock.send(encode_reject(reason))
        self.sel.unregister(c.sock)
        self.clients.pop(c.sock.fileno(), None)
        c.sock.close()

    # -- events --
    def _accept(self) -> None:
        try:
            sock, addr = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        peer = f"{addr[0]}:{addr[1]}"
        c = _Client(sock, peer, time.monotonic() + self.handshake_timeout)
        self.sel.register(sock, selectors.EVENT_READ, c)
        self.clients[sock.fileno()] = c
        if len(self.clients) > self.max_clients:
            self._reject(c, f"too many clients (limit {self.max_clients})")

    def _readable(self, c: _Client) -> None:
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(c, f"connection error: {exc}")
            return
        if c.handle is not None:
            if data:
                self._drop(c, f"sent {len(data)} unexpected bytes after the handshake", logging.WARNING)
            else:
                self._drop(c, "connection closed")
            return
        if not data:
            log.warning("rejected connection from %s: closed during the handshake after %d bytes", c.peer,
                        len(c.buf))
            self.rejected += 1
            self._drop(c, "closed during handshake")
            return
        c.buf += data
        try:
            self._advance(c)
        except ProtocolError as exc:
            self._reject(c, f"malformed CONNECT: {exc}")

    def _advance(self, c: _Client) -> None:
        if len(c.buf) < HEADER.size:
            return
        msg_type, body_len = decode_header(bytes(c.buf[:HEADER.size]))
        if msg_type != CONNECT:
            raise ProtocolError(f"expected CONNECT, got {TYPE_NAMES[msg_type]}")
        if body_len > 4096:
            raise ProtocolError(f"oversized message: body of {body_len} bytes (CONNECT is {QPINFO.size})")
        if body_len != QPINFO.size:
            raise ProtocolError(f"body of {body_len} bytes, CONNECT is {QPINFO.size}")
        total = HEADER.size + QPINFO.size
        if len(c.buf) < total:
            return
        if len(c.buf) > total:
            raise ProtocolError(f"{len(c.buf) - total} bytes after the CONNECT message")
        info = decode_qpinfo(bytes(c.buf[HEADER.size:total]))
        try:
            handle, reply = self.connector.connect(info)
        except ConnectRefused as exc:
            self._reject(c, str(exc))
            return
        try:
            c.sock.setblocking(True)
            c.sock.settimeout(5.0)
            c.sock.sendall(reply)
            c.sock.setblocking(False)
        except OSError as exc:
            self.connector.release(handle)
            self._drop(c, f"could not send ACCEPT: {exc}", logging.WARNING)
            return
        c.handle = handle
        self.connected += 1
        log.info("client %s connected (its QPN %d); %d client(s)", c.peer, info.qpn, self.connected)

    def _expire(self) -> None:
        now = time.monotonic()
        for c in list(self.clients.values()):
            if c.handle is None and now > c.deadline:
                self._reject(c, f"handshake not completed within {self.handshake_timeout:g} s "
                                f"({len(c.buf)} bytes received)")

    def poll(self, timeout: float = 0.2) -> None:
        """Handle whatever happened within ``timeout`` seconds."""
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._readable(key.data)
        self._expire()

    def serve_until(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.poll()

    def close(self) -> None:
        for c in list(self.clients.values()):
            self._drop(c, "memory node shutting down")
        self.sel.close()
        self.sock.close()


def advertised_host(listen: str, region: VerbsRegion) -> str:
    """The host to put in the printed URI: the listen address, or for a wildcard the GID's
    IPv4 address (SoftRoCE/RoCE), else this machine's name."""
    if listen not in ("0.0.0.0", "::", ""):
        return listen
    return gid_ipv4(region.gid) or socket.gethostname()


def serve(args: argparse.Namespace) -> int:
    """Run a verbs memory node in the foreground until SIGINT/SIGTERM (``kvdm memnode serve``)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s memnode[%(process)d] %(levelname)s %(message)s")
    try:
        region = VerbsRegion(args.size, args.node_id, getattr(args, "device", None),
                             getattr(args, "ib_port", 1), getattr(args, "gid_index", None))
    except ImportError as exc:
        raise ValueError(f"pyverbs is not importable ({exc}): install python3-pyverbs and run .ci/bootstrap, "
                         "which exposes it to the venv") from exc
    except RuntimeError as exc:
        raise ValueError(str(exc)) from exc
    listen = getattr(args, "listen", "0.0.0.0")
    try:
        server = MemnodeServer(region, listen, getattr(args, "port", 7471))
    except OSError as exc:
        region.close()
        raise ValueError(f"cannot listen on {listen}:{getattr(args, 'port', 7471)}: {exc}") from exc
    stopped = stop_on_signals()
    uri = region.uri(advertised_host(listen, region), server.port)
    print(f"memory node {region.node_id} serving {uri} ({region.size} bytes on {region.device} port "
          f"{region.ib_port} gid {region.gid_index} {gid_text(region.gid)}, pid {os.getpid()}); "
          "Ctrl-C to stop", flush=True)
    try:
        server.serve_until(stopped)
    finally:
        server.close()
        region.close()
        print(f"memory node {region.node_id} stopped", file=sys.stderr, flush=True)
    return 0
