"""The verbs transport's parts that need no RDMA device: the memory node's connection protocol
(validation, rejection with a logged reason, surviving bad clients), URI errors, the
no-device message and `kvdm doctor`. The device tests are in test_verbs_rdma.py."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kvdm.native import lib
from kvdm.transport import DMContext, DMError, RegionMissing, rdma_devices
from kvdm.transport import verbs_memnode as vm

GID = bytes(10) + b"\xff\xff" + bytes([10, 77, 0, 1])
GOOD = vm.QPInfo(qpn=17, psn=0x123456, lid=0, mtu=3, rd_atomic=16, gid=GID)


def has_rdma_device() -> bool:
    return bool(rdma_devices())


class RefusingConnector:
    """Stands in for the RDMA side on a machine without a device: every well-formed request
    reaches it and is refused, as VerbsRegion refuses when it cannot make a QP."""

    def __init__(self) -> None:
        self.requests: list[vm.QPInfo] = []

    def connect(self, client: vm.QPInfo) -> tuple[Any, bytes]:
        self.requests.append(client)
        raise vm.ConnectRefused("no RDMA device on this host")

    def release(self, handle: Any) -> None:
        raise AssertionError("nothing was ever connected")


@pytest.fixture
def server() -> Iterator[tuple[vm.MemnodeServer, RefusingConnector]]:
    conn = RefusingConnector()
    srv = vm.MemnodeServer(conn, "127.0.0.1", 0, handshake_timeout=1.0)
    stop = threading.Event()
    t = threading.Thread(target=srv.serve_until, args=(stop.is_set,), daemon=True)
    t.start()
    yield srv, conn
    stop.set()
    t.join(5)
    srv.close()


def exchange(port: int, payload: bytes, close_after_send: bool = False) -> bytes:
    """Send payload, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        if close_after_send:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def reject_reason(reply: bytes) -> str:
    msg_type, body_len = vm.decode_header(reply[:16])
    assert msg_type == vm.REJECT, f"expected REJECT, got type {msg_type}"
    assert len(reply) == 16 + body_len
    return reply[16:].decode()


def test_messages_round_trip() -> None:
    raw = vm.encode_connect(GOOD)
    assert len(raw) == 48
    assert vm.decode_header(raw[:16]) == (vm.CONNECT, 32)
    assert vm.decode_qpinfo(raw[16:]) == GOOD
    region = vm.RegionInfo(node_id=3, rkey=0xABCD, size=64 << 20, base=0x7F0000000000)
    acc = vm.encode_accept(GOOD, region)
    assert len(acc) == 16 + 56
    assert vm.decode_accept(acc) == (GOOD, region)
    assert reject_reason(vm.encode_reject("x" * 2000)) == "x" * vm.MAX_REASON  # capped


@pytest.mark.parametrize("field,value,reason", [
    ("qpn", 0, "QP number"), ("qpn", 1 << 24, "QP number"), ("psn", 1 << 24, "PSN"),
    ("mtu", 0, "MTU"), ("mtu", 6, "MTU"), ("rd_atomic", 0, "atomic depth"),
])
def test_qpinfo_fields_are_range_checked(field: str, value: int, reason: str) -> None:
    bad = vm.QPInfo(**{**GOOD.__dict__, field: value})
    with pytest.raises(vm.ProtocolError, match=reason):
        vm.decode_qpinfo(vm.encode_qpinfo(bad))


def test_qpinfo_needs_an_address() -> None:
    with pytest.raises(vm.ProtocolError, match="neither a GID nor a LID"):
        vm.decode_qpinfo(vm.encode_qpinfo(vm.QPInfo(**{**GOOD.__dict__, "gid": bytes(16)})))


def bad_requests() -> list[tuple[str, bytes, str]]:
    good = vm.encode_connect(GOOD)
    hdr = struct.Struct("<IHHII")
    return [
        ("bad magic", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(30), "bad magic"),
        ("version", hdr.pack(vm.MAGIC, 9, vm.CONNECT, 32, 0) + good[16:], "protocol version 9"),
        ("wrong type", hdr.pack(vm.MAGIC, 1, vm.ACCEPT, 32, 0) + good[16:], "expected CONNECT, got ACCEPT"),
        ("unknown type", hdr.pack(vm.MAGIC, 1, 77, 32, 0) + good[16:], "unknown message type 77"),
        ("oversized", hdr.pack(vm.MAGIC, 1, vm.CONNECT, 1 << 30, 0) + bytes(64), "oversized message"),
        ("short body", hdr.pack(vm.MAGIC, 1, vm.CONNECT, 8, 0) + bytes(8), "body of 8 bytes"),
        ("trailing bytes", good + b"extra", "5 bytes after the CONNECT"),
        ("reserved", hdr.pack(vm.MAGIC, 1, vm.CONNECT, 32, 7) + good[16:], "reserved header field"),
        ("zero qpn", good[:16] + struct.pack("<I", 0) + good[20:], "QP number 0"),
    ]


@pytest.mark.parametrize("name,payload,reason", bad_requests(), ids=[b[0] for b in bad_requests()])
def test_malformed_request_is_rejected_with_logged_reason(server: Any, caplog: pytest.LogCaptureFixture,
                                                          name: str, payload: bytes, reason: str) -> None:
    srv, conn = server
    with caplog.at_level(logging.WARNING, logger="kvdm.memnode.verbs"):
        got = reject_reason(exchange(srv.port, payload))
        assert reason in got
        deadline = time.monotonic() + 5
        while reason not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "rejected connection from 127.0.0.1" in caplog.text and reason in caplog.text
    assert conn.requests == []  # nothing malformed reached the RDMA side
    # the node keeps serving: a well-formed request is read and handed on
    assert reject_reason(exchange(srv.port, vm.encode_connect(GOOD))) == "no RDMA device on this host"
    assert conn.requests == [GOOD]


def test_truncated_and_silent_clients_are_dropped(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    srv, conn = server
    with caplog.at_level(logging.WARNING, logger="kvdm.memnode.verbs"):
        assert exchange(srv.port, vm.encode_connect(GOOD)[:20], close_after_send=True) == b""
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        t0 = time.monotonic()
        got = reject_reason(silent.recv(4096))  # the 1 s handshake deadline passes
        silent.close()
        assert "handshake not completed within 1 s" in got and time.monotonic() - t0 < 8
    assert "closed during the handshake after 20 bytes" in caplog.text
    assert srv.rejected == 2
    assert reject_reason(exchange(srv.port, vm.encode_connect(GOOD))) == "no RDMA device on this host"


def test_too_many_clients_are_refused() -> None:
    srv = vm.MemnodeServer(RefusingConnector(), "127.0.0.1", 0, max_clients=2)
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(3)]
    try:
        for _ in range(20):
            srv.poll(0.05)
        assert "too many clients" in reject_reason(socks[2].recv(4096))
        assert len(srv.clients) == 2
    finally:
        for s in socks:
            s.close()
        srv.close()


def verbs_built_in() -> bool:
    from kvdm.experiments.cli.doctor import verbs_built_in as probe

    return probe()


@pytest.mark.skipif(not verbs_built_in(), reason="native build has no verbs backend")
@pytest.mark.parametrize("uri,message", [
    ("verbs://10.0.0.1", "expected verbs://HOST:PORT"),
    ("verbs://h:0", "port must be 1..65535"),
    ("verbs://h:99999?dev=rxe0", "port must be 1..65535"),
    ("verbs://h:1?color=red", "unknown key 'color' (valid: dev, gid, ib_port, timeout, sq)"),
    ("verbs://h:1?sq=0", f"sq must be 1..{lib.DM_MAX_BATCH}"),
    ("verbs://h:1?gid=one", "gid must be a GID index or 'auto'"),
    ("verbs://h:1?ib_port=0", "ib_port must be 1..255"),
    ("verbs://h:1?timeout=0", "timeout must be 1..3600"),
    ("verbs://h:1?dev", "is not KEY=VALUE"),
    ("verbs://[::1:5", "expected verbs://[ADDR]:PORT"),
])
def test_bad_verbs_uri_is_a_clear_error(uri: str, message: str) -> None:
    with pytest.raises(DMError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        DMContext(uris=[uri])


@pytest.mark.skipif(has_rdma_device() or not verbs_built_in(), reason="needs a machine without RDMA devices")
def test_no_device_error_says_what_to_do() -> None:
    with pytest.raises(RegionMissing, match="no RDMA device on this machine.*kvdm doctor"):
        DMContext(uris=["verbs://127.0.0.1:7471?dev=rxe0&gid=1"])


def test_doctor_reports_every_area(capsys: pytest.CaptureFixture[str]) -> None:
    from kvdm.experiments.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    areas = ("native build", "libibverbs", "pyverbs", "RDMA devices", "SoftRoCE", "redis-server", "verdict")
    for area in areas:
        assert area in out
    if not has_rdma_device():
        assert "RDMA devices: none on this machine" in out
