"""Transport configuration: which backend, which latency model, which memory nodes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

LATENCY_MODELS = ("none", "spin", "virtual")
TRANSPORTS = ("shm", "verbs")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse a byte size such as ``4G``, ``512MiB``, ``65536`` (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"cannot parse size {text!r}: use a number with an optional K, M, G or T suffix")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def uri_transport(uri: str) -> str:
    """The transport a memory-node URI names (``shm:NAME`` -> shm, ``verbs://...`` -> verbs; ""
    for another scheme, which attaching reports)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else uri.split(":", 1)[0]
    return scheme if scheme in TRANSPORTS else ""


def choice(value: str, valid: tuple[str, ...], what: str) -> str:
    """Return value if it is one of valid, else raise ValueError listing the valid ones."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


@dataclass
class TransportConfig:
    """How a client reaches remote memory.

    ``memory_nodes`` are URIs (``shm:NAME`` or ``verbs://HOST:PORT?dev=rxe0&gid=1``); empty
    means "start embedded shm memory nodes" (``embedded_nodes`` of ``node_size`` bytes).
    ``transport`` is what the URIs' scheme says: "" (the default) takes it from them (shm for
    embedded nodes); a transport that disagrees with them is an error, so a run is labelled by
    what it really used. The latency model is the shm transport's network model: ``none``
    runs at memory speed; ``spin`` and ``virtual`` model each round trip (doorbell) as
    ``rtt_us`` plus the longer of its bytes at ``gbps`` and its verbs at ``nic_mops`` million
    verbs/s: ``spin`` busy-waits that long from the doorbell's start (so its execution overlaps
    the wait), ``virtual`` reports it in place of the doorbell's execution (the emulated NIC's
    copying), without waiting. Over verbs the network is real, and only ``none`` is accepted
    (as for ``tear``, shm's fault injection).
    """

    transport: str = ""
    latency_model: str = "none"
    rtt_us: float = 2.0
    gbps: float = 100.0
    nic_mops: float = 100.0
    tear: bool = False
    seed: int = 0
    chunk_bytes: int = 1 << 20
    memory_nodes: list[str] = field(default_factory=list)
    embedded_nodes: int = 1
    node_size: int = 1 << 30

    def __post_init__(self) -> None:
        schemes = sorted({uri_transport(u) for u in self.memory_nodes} - {""})
        if len(schemes) > 1:
            raise ValueError(f"memory nodes of different transports ({', '.join(schemes)}): one run uses one")
        given = self.transport
        self._auto = given == ""  # connect() may give an automatic config other URIs
        if given and schemes and given != schemes[0]:
            raise ValueError(f"--transport {given} disagrees with the memory node {self.memory_nodes[0]!r}, whose "
                             f"scheme is {schemes[0]}: leave --transport out (the URI decides) or give a "
                             f"{given} URI")
        self.transport = given or (schemes[0] if schemes else "shm")
        choice(self.transport, TRANSPORTS, "transport")
        choice(self.latency_model, LATENCY_MODELS, "latency model")
        if self.transport != "shm" and (self.latency_model != "none" or self.tear):
            what = f"--latency-model {self.latency_model}" if self.latency_model != "none" else "--tear"
            raise ValueError(f"{what} is the shm transport's model of a network (tear: its fault injection); over "
                             f"{self.transport} the network is real: use --latency-model none, no --tear")
        if not (self.rtt_us >= 0 and self.gbps >= 0 and self.nic_mops >= 0):
            raise ValueError(f"--rtt-us, --gbps and --nic-mops must be >= 0 (got {self.rtt_us}, {self.gbps}, "
                             f"{self.nic_mops})")
        if self.embedded_nodes < 1 and not self.memory_nodes:
            raise ValueError("need at least one memory node")

    def with_nodes(self, uris: list[str]) -> TransportConfig:
        """This config on the memory nodes ``uris`` (one that took its transport from no URIs,
        i.e. the default, takes it from these)."""
        auto = getattr(self, "_auto", False) and not self.memory_nodes
        return replace(self, memory_nodes=list(uris), transport="" if auto else self.transport)

    @property
    def latency_model_code(self) -> int:
        return LATENCY_MODELS.index(self.latency_model)

    def network_terms(self) -> str:
        """What a modelled round trip costs, in words (reports, figure captions)."""
        verbs = f" and its verbs at {self.nic_mops:g} M/s" if self.nic_mops > 0 else ""
        return f"{self.rtt_us:g} µs per round trip + the longer of its bytes at {self.gbps:g} Gb/s{verbs}"

    def describe(self) -> str:
        model = self.latency_model
        if model != "none":
            model += f" (rtt {self.rtt_us} us, {self.gbps} Gb/s, {self.nic_mops} M verbs/s)"
        nodes = ", ".join(self.memory_nodes) if self.memory_nodes else f"{self.embedded_nodes} embedded"
        return f"{self.transport}, latency model {model}, memory nodes: {nodes}" + (", tear on" if self.tear else "")
