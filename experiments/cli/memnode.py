"""``kvdm memnode serve|list|clean``: run and manage memory nodes."""

from __future__ import annotations

import argparse
from typing import Any

from kvdm.transport import TRANSPORTS, parse_size, serve_memory_node

from . import choices_type, group, integer, size


def register(sub: Any) -> None:
    g = group(sub, "memnode", "run and manage memory nodes")
    p = g.add_parser("serve", help="run one memory node in the foreground until Ctrl-C / SIGTERM",
                     description="Create a memory node and serve it until interrupted; the region is "
                     "removed on exit. Over shm the node is passive: clients map the region directly.")
    p.add_argument("--name", default=None,
                   help="shm: region name, stored as kvdm-NAME (default: a unique kvdm-PID-N); "
                   "verbs: not used (the node is known by its URI)")
    p.add_argument("--size", type=size, default=parse_size("4G"), help="region size (default 4G)")
    p.add_argument("--node-id", type=integer(0, 254), default=0, help="memory-node id, 0..254 (default 0)")
    p.add_argument("--transport", type=choices_type(TRANSPORTS, "transport"), default="shm",
                   help="shm (default) or verbs")
    v = p.add_argument_group("verbs transport (ignored for shm)")
    v.add_argument("--device", default=None, help="RDMA device, e.g. rxe0 or mlx5_0 (default: the first one)")
    v.add_argument("--gid-index", type=integer(0), default=None,
                   help="GID index (default: auto, the first RoCE v2 IPv4-mapped GID; "
                   "`kvdm doctor` lists them)")
    v.add_argument("--ib-port", type=integer(1, 255), default=1, help="device port (default 1)")
    v.add_argument("--port", type=integer(0, 65535), default=7471,
                   help="TCP port for the connection handshake (default 7471; 0 = any free port)")
    v.add_argument("--listen", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.set_defaults(func=cmd_serve)

    p = g.add_parser("list", help="list kvdm memory-node regions on this machine")
    p.set_defaults(func=cmd_list)

    p = g.add_parser("clean", help="remove regions left behind by crashed processes",
                     description="Remove kvdm regions whose owner process no longer exists.")
    p.add_argument("--all", action="store_true", help="also remove regions whose owner is alive")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.set_defaults(func=cmd_clean)


def cmd_serve(args: argparse.Namespace) -> int:
    return serve_memory_node(args.transport, args.size, args.node_id, args.name, device=args.device,
                             gid_index=args.gid_index, ib_port=args.ib_port, port=args.port, listen=args.listen)


def cmd_list(args: argparse.Namespace) -> int:
    from kvdm.transport import list_regions

    regions = list_regions()
    if not regions:
        print("no kvdm memory nodes")
    for r in regions:
        state = "serving" if r.owner_alive else "orphaned"
        print(f"{r.name}\tnode {r.node_id}\t{r.size} bytes\towner pid {r.owner_pid} ({state})")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from kvdm.transport import clean

    names = clean(all_regions=args.all, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for n in names:
        print(f"{verb} {n}")
    if not names:
        print("nothing to clean")
    return 0
