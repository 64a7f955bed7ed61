# guest-two-hosts-setup.sh - SOURCE this INSIDE the SoftRoCE guest (run-in-guest.sh --two-hosts
# does): a "two hosts on one wire" topology next to the one-device rxe0 set-up, in the same
# kernel and the same (initial) network namespace:
#
#   memory-node side  rxea -- va 10.78.0.1 ===veth=== vb 10.78.0.2 -- rxeb  client side
#
# Adapted from the project's tested recipe (../shared/softroce/two-devices/):
# - one netns: rxe in Debian's 6.1 kernel is init_net-only (its UDP/4791 socket and its route
#   lookups use &init_net); a netdev moved into another netns cannot carry rxe traffic
#   ("prepare4: Host not reachable", completion status 2 = local QP operation error).
# - policy routing: with both addresses local, every lookup would resolve through `lo`.
#   ib_core's RTR address resolution and rxe's own sends are bound to the GID's netdev
#   (flowi4_oif = va/vb), so "oif va -> table 101 (10.78.0.0/24 dev va)" sends them out through
#   the veth; "to <peer> iif lo" rules do the same for unbound local traffic (the TCP handshake
#   of kvdm's verbs transport), so that crosses the veth too. The `local` table moves after
#   these rules (from preference 0 to 100); it still answers everything else, so rxe0 on
#   rxenet0 (10.77.0.1) and 127.0.0.1 behave as before.
# - accept_local=1 and rp_filter=0 let va/vb accept frames whose source is a local address.
#   rxe short-cuts internally only when the destination MAC is the sending netdev's own, which
#   never happens here (va and vb have different MACs).
#
# Exports: TWOHOST_SRV_DEV=rxea TWOHOST_SRV_IP=10.78.0.1 TWOHOST_SRV_GID=<idx> TWOHOST_SRV_NETDEV=va
#          TWOHOST_CLI_DEV=rxeb TWOHOST_CLI_IP=10.78.0.2 TWOHOST_CLI_GID=<idx> TWOHOST_CLI_NETDEV=vb
# (the GID index of ::ffff:IPv4, RoCE v2). Returns 250 when a step fails. 5-11 s under TCG.
_twohost_setup() {
  local t0 d
  t0=$(date +%s%N)
  modprobe rdma_rxe && modprobe ib_uverbs && modprobe rdma_ucm && modprobe veth ||
    { echo "two-hosts: modprobe failed" >&2; return 250; }
  ip link set lo up
  ip link add va type veth peer name vb || { echo "two-hosts: cannot create the veth pair" >&2; return 250; }
  for d in all default; do
    sysctl -qw "net.ipv4.conf.$d.rp_filter=0" "net.ipv4.conf.$d.accept_local=1"
  done
  ip addr add 10.78.0.1/24 dev va
  ip addr add 10.78.0.2/24 dev vb
  for d in va vb; do
    sysctl -qw "net.ipv4.conf.$d.rp_filter=0" "net.ipv4.conf.$d.accept_local=1"
    ip link set "$d" up
  done
  # the local table goes AFTER our rules (it is normally rule 0, which would win)
  ip rule add pref 100 lookup local
  ip rule del pref 0
  ip rule add pref 10 oif va lookup 101               # bound to va (rxea, ib_core for rxea)
  ip rule add pref 11 oif vb lookup 102               # bound to vb (rxeb)
  ip rule add pref 20 to 10.78.0.1 iif lo lookup 102  # unbound local traffic to the node side: via vb
  ip rule add pref 21 to 10.78.0.2 iif lo lookup 101  # unbound local traffic to the client side: via va
  ip route add 10.78.0.0/24 dev va src 10.78.0.1 table 101
  ip route add 10.78.0.0/24 dev vb src 10.78.0.2 table 102
  rdma link add rxea type rxe netdev va || { echo "two-hosts: rdma link add rxea failed" >&2; return 250; }
  rdma link add rxeb type rxe netdev vb || { echo "two-hosts: rdma link add rxeb failed" >&2; return 250; }
  _twohost_gid() {  # DEV IPV4-HEX -> index of the RoCE v2 GID ::ffff:IPv4
    local g _
    for _ in $(seq 100); do
      for g in /sys/class/infiniband/"$1"/ports/1/gids/*; do
        [ "$(cat "$g" 2>/dev/null)" = "0000:0000:0000:0000:0000:ffff:$2" ] && { echo "${g##*/}"; return 0; }
      done
      sleep 0.05
    done
    return 1
  }
  # the rxe packet counters in sysfs are cached for `lifespan` ms (default 10); 0 = refreshed on
  # each read once a jiffy has passed (the tests compare them before and after short runs)
  for d in rxea rxeb; do
    echo 0 > "/sys/class/infiniband/$d/ports/1/hw_counters/lifespan" 2>/dev/null || true
  done
  TWOHOST_SRV_GID=$(_twohost_gid rxea 0a4e:0001) && TWOHOST_CLI_GID=$(_twohost_gid rxeb 0a4e:0002) ||
    { echo "two-hosts: no IPv4 GID on rxea/rxeb" >&2; return 250; }
  export TWOHOST_SRV_DEV=rxea TWOHOST_SRV_IP=10.78.0.1 TWOHOST_SRV_NETDEV=va TWOHOST_SRV_GID
  export TWOHOST_CLI_DEV=rxeb TWOHOST_CLI_IP=10.78.0.2 TWOHOST_CLI_NETDEV=vb TWOHOST_CLI_GID
  echo "two-hosts: rxea gid $TWOHOST_SRV_GID on va 10.78.0.1 <=veth=> rxeb gid $TWOHOST_CLI_GID on vb 10.78.0.2," \
       "setup $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2
}
_twohost_setup
