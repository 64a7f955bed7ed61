"""Command-line options shared by several commands (transport selection), defined once."""

from __future__ import annotations

import argparse

from kvdm.transport import LATENCY_MODELS, TRANSPORTS, TransportConfig, parse_size

from . import choices_type, count, non_negative, positive, size


def add_transport_options(parser: argparse.ArgumentParser) -> None:
    """--transport, --latency-model, --rtt-us, --gbps, --nic-mops, --memory-nodes, --memory-node, --node-size,
    --tear."""
    g = parser.add_argument_group("transport")
    g.add_argument("--transport", type=choices_type(TRANSPORTS, "transport"), default=None,
                   help="one-sided verbs backend: shm (emulated) or verbs (rdma-core); default: the --memory-node "
                   "URIs' scheme, shm for embedded memory nodes (a conflicting value is an error)")
    g.add_argument("--latency-model", type=choices_type(LATENCY_MODELS, "latency model"), default="none",
                   help="shm only: none (raw speed); spin and virtual model each round trip as --rtt-us plus "
                   "the longer of its bytes at --gbps and its verbs at --nic-mops: spin waits that long, "
                   "virtual reports it in place of the emulated NIC's execution without waiting")
    g.add_argument("--rtt-us", type=non_negative, default=2.0, help="modelled round trip in us (default 2)")
    g.add_argument("--gbps", type=positive, default=100.0, help="modelled bandwidth in Gb/s (default 100)")
    g.add_argument("--nic-mops", type=non_negative, default=100.0,
                   help="modelled NIC message rate in million verbs/s (default 100, 10 ns a verb; 0: none)")
    g.add_argument("--memory-nodes", type=count, default=1,
                   help="number of embedded memory nodes to start when no --memory-node is given")
    g.add_argument("--memory-node", action="append", default=[], metavar="URI",
                   help="an existing memory node (shm:NAME or verbs://HOST:PORT?dev=D&gid=G); repeatable")
    g.add_argument("--node-size", type=size, default=parse_size("1G"),
                   help="size of each embedded memory node (default 1G; K/M/G suffixes)")
    g.add_argument("--tear", action="store_true",
                   help="shm fault injection: apply READs/WRITEs over 64 B line by line in random order")


def transport_config(args: argparse.Namespace) -> TransportConfig:
    """The TransportConfig the transport options describe."""
    return TransportConfig(
        transport=args.transport or "",
        latency_model=args.latency_model,
        rtt_us=args.rtt_us,
        gbps=args.gbps,
        nic_mops=args.nic_mops,
        tear=args.tear,
        memory_nodes=list(args.memory_node),
        embedded_nodes=args.memory_nodes,
        node_size=args.node_size,
    )
