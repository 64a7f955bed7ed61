#!/usr/bin/env bash
# run-in-guest.sh — run a command inside a throw-away qemu guest that boots
# Debian's stock kernel (which ships rdma_rxe.ko / ib_uverbs.ko as modules),
# with SoftRoCE (rdma_rxe) already set up, and return the command's exit status
# and output.
#
# Why a guest at all: the host kernel of this machine kind (Firecracker VM,
# kernel 6.18 "-fc") has no CONFIG_INFINIBAND and no loadable modules, so
# rdma_rxe cannot run on the host. The guest shares the host's root file
# system read-only over virtio-9p (virtme-ng does that), so every program,
# Python interpreter, virtualenv and source tree of the host is visible at the
# same path inside the guest; writes go to throw-away overlays except for the
# directories given with --rwdir.
#
# Acceleration: /dev/kvm on this machine kind is backed by "kvm-pvm" (a
# paravirtual nested-KVM flavour); an unmodified distro kernel does NOT boot
# under it (KVM internal error / emulation failure, see transport/softroce/README.md), so the
# default is TCG software emulation, which boots in ~10 s here.
#
# Usage:
#   run-in-guest.sh [options] [--] COMMAND [ARG...]
#   run-in-guest.sh --selftest            # ibverbs/perftest/pyverbs smoke test
# Options:
#   --cpus N         guest vCPUs (default 2)
#   --mem SIZE       guest memory (default 2G)
#   --rwdir DIR      host directory the guest may write (repeatable; default none:
#                    the whole host root is read-only in the guest, writes land
#                    in tmpfs overlays and are lost)
#   --no-rxe         do not load rdma_rxe / create rxe0
#   --two-hosts      also build the two-hosts topology (guest-two-hosts-setup.sh):
#                    rxea on va 10.78.0.1 <=veth=> rxeb on vb 10.78.0.2, with
#                    policy routing so that traffic between them crosses the veth
#   --env NAME       also hand host variable NAME to the guest (repeatable;
#                    CI PYTHONPATH VIRTUAL_ENV PYENV_VERSION PYENV_ROOT LANG
#                    LC_ALL TZ are handed over by default when set)
#   --accel tcg|kvm  qemu accelerator (default tcg; kvm does not work here)
#   --cpu MODEL      guest CPU model for TCG (default max,avx2=off: qemu 7.2's
#                    TCG AVX2 emulation makes numpy's AVX2 argsort segfault in a
#                    process that has fork()ed; see README.md)
#   --timeout SEC    wall-clock limit for the whole guest run (default 1800)
#   --verbose        show the guest kernel console and virtme-ng's own output
#   --prepare-only   install/download everything, do not boot
# Environment:
#   SOFTROCE_VM_DIR     cache dir for kernel + virtme-ng venv
#                       (default $HOME/.cache/kvdm-softroce). Must NOT be under
#                       /var/tmp, /var/cache, /var/log, /var/lib/apt or /run:
#                       virtme-ng mounts fresh tmpfs there inside the guest.
#   SOFTROCE_KERNEL_PKG Debian kernel package (default: what linux-image-amd64
#                       currently depends on, e.g. linux-image-6.1.0-56-amd64)
#   SOFTROCE_VNG_SPEC   pip requirement for virtme-ng (default virtme-ng==1.42)
#   SOFTROCE_PYTHON     python used to create the virtme-ng venv (default python3)
#   SOFTROCE_MODPROBE_BLACKLIST  modules the guest must not autoload (default: a
#                       list of slow, useless-here drivers; set empty to disable)
# Inside the guest the command runs as root, in the host's current directory,
# with the host's PATH, stderr merged into stdout, and these variables set:
#   SOFTROCE_DEV=rxe0  SOFTROCE_GID_INDEX=<index of the IPv4 RoCEv2 GID>
#   SOFTROCE_IP=10.77.0.1  SOFTROCE_NETDEV=rxenet0
# and with --two-hosts TWOHOST_{SRV,CLI}_{DEV,IP,GID,NETDEV} (memory-node side
# rxea/va/10.78.0.1, client side rxeb/vb/10.78.0.2).
# The rxe device sits on a "dummy" netdev with that address; the guest has no
# NIC at all (qemu -net none), so RDMA traffic never leaves the guest. Both
# ends of a connection must use the same device (rxe0) and the same GID: two
# QPs on rxe0 talk to each other through rxe's loopback path, which runs the
# full rxe requester/responder/completer code (one-sided READ/WRITE/atomics).
#
# Exit status: the command's own; 124 on timeout; 255 if the guest died
# (kernel panic) before the command finished; 2 on usage/setup errors.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM_DIR=${SOFTROCE_VM_DIR:-${HOME:-/root}/.cache/kvdm-softroce}
VNG_SPEC=${SOFTROCE_VNG_SPEC:-virtme-ng==1.42}
PY=${SOFTROCE_PYTHON:-python3}
CPUS=2 MEM=2G ACCEL=tcg CPU_MODEL=${SOFTROCE_CPU:-max,avx2=off} TIMEOUT=1800 RXE=1 TWO_HOSTS=0 VERBOSE=0
PREPARE_ONLY=0
RWDIRS=()
# host variables handed to the guest command when set (extend with --env NAME)
PASS_ENV=(CI PYTHONPATH VIRTUAL_ENV PYENV_VERSION PYENV_ROOT LANG LC_ALL TZ)

log() { printf '[run-in-guest %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) CPUS=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --rwdir) RWDIRS+=("$(cd "$2" && pwd)"); shift 2 ;;
    --no-rxe) RXE=0; shift ;;
    --two-hosts) TWO_HOSTS=1; shift ;;
    --env) PASS_ENV+=("$2"); shift 2 ;;
    --accel) ACCEL=$2; shift 2 ;;
    --cpu) CPU_MODEL=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --verbose) VERBOSE=1; shift ;;
    --prepare-only) PREPARE_ONLY=1; shift ;;
    --selftest) shift; set -- bash "$SELF_DIR/guest-selftest.sh" "$@"; break ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || [ "$PREPARE_ONLY" = 1 ] || die "no command given (try --help)"

case "$VM_DIR" in
  /var/tmp/*|/var/cache/*|/var/log/*|/var/lib/apt/*|/run/*|/dev/*|/proc/*|/sys/*)
    die "SOFTROCE_VM_DIR=$VM_DIR is hidden inside the guest; pick e.g. \$HOME/.cache/kvdm-softroce" ;;
esac
mkdir -p "$VM_DIR"
T_START=$(date +%s.%N)

# ---------------------------------------------------------------- 1. host packages
# qemu for the guest; busybox-static for the small initramfs virtme-ng builds
# (Debian's kernel has virtio and 9p as modules); kmod for depmod/modprobe.
# The RDMA user space is installed on the HOST because the guest runs the
# host's root file system. Nothing here touches /boot.
HOST_PKGS=(qemu-system-x86 busybox-static kmod iproute2 rdma-core ibverbs-utils
           ibverbs-providers perftest python3-pyverbs)
APT_UPDATED=0
apt_update_once() {
  [ "$APT_UPDATED" = 1 ] && return 0
  log "apt-get update"
  apt-get update -qq >> "$VM_DIR/apt.log" 2>&1 ||
    { tail -n 20 "$VM_DIR/apt.log" >&2; die "apt-get update failed"; }
  APT_UPDATED=1
}
missing=()
for p in "${HOST_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_update_once
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >> "$VM_DIR/apt.log" 2>&1 ||
    { tail -n 20 "$VM_DIR/apt.log" >&2; die "apt-get install failed (log: $VM_DIR/apt.log)"; }
fi

# ---------------------------------------------------------------- 2. guest kernel
# The .deb is only unpacked (dpkg -x) into $VM_DIR/kroot, never installed.
# virtme-ng finds the modules itself from the image path
# (kroot/boot/vmlinuz-V -> kroot/lib/modules/V), so nothing goes to /lib/modules.
KIMG=$(ls "$VM_DIR"/kroot/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
if [ -z "$KIMG" ]; then
  KPKG=${SOFTROCE_KERNEL_PKG:-}
  if [ -z "$KPKG" ]; then
    apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt_update_once
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
           awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$KPKG" ] || { apt_update_once; KPKG=$(apt-cache depends linux-image-amd64 |
           awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
  fi
  [ -n "$KPKG" ] || die "cannot resolve the kernel package"
  log "downloading $KPKG"
  rm -rf "$VM_DIR/deb" "$VM_DIR/kroot.tmp"; mkdir -p "$VM_DIR/deb"
  # apt-get download writes into the cwd; the '_apt sandbox' warning is harmless
  (cd "$VM_DIR/deb" && apt-get download -qq "$KPKG" 2>/dev/null) ||
    { apt_update_once; (cd "$VM_DIR/deb" && apt-get download -qq "$KPKG"); } ||
    die "apt-get download $KPKG failed"
  dpkg -x "$VM_DIR"/deb/*.deb "$VM_DIR/kroot.tmp"
  KVER=$(ls "$VM_DIR/kroot.tmp/lib/modules")
  # keep only what the guest needs: the image, the config and the modules
  rm -rf "$VM_DIR/kroot.tmp/usr"
  depmod -b "$VM_DIR/kroot.tmp" "$KVER"
  mv "$VM_DIR/kroot.tmp" "$VM_DIR/kroot"; rm -rf "$VM_DIR/deb"
  KIMG="$VM_DIR/kroot/boot/vmlinuz-$KVER"
  [ -f "$VM_DIR/kroot/lib/modules/$KVER/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko" ] ||
    die "$KPKG has no rdma_rxe.ko"
fi

# ---------------------------------------------------------------- 3. virtme-ng
if [ ! -x "$VM_DIR/venv/bin/vng" ]; then
  log "pip install $VNG_SPEC into $VM_DIR/venv"
  rm -rf "$VM_DIR/venv"
  "$PY" -m venv "$VM_DIR/venv" >&2
  "$VM_DIR/venv/bin/pip" install -q "$VNG_SPEC" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  [ -x "$VM_DIR/venv/bin/vng" ] || die "virtme-ng install failed"
fi
T_READY=$(date +%s.%N)
log "ready: kernel $(basename "$KIMG"), $("$VM_DIR/venv/bin/vng" --version 2>/dev/null), $(qemu-system-x86_64 --version | head -n1)"
[ "$PREPARE_ONLY" = 1 ] && exit 0

# ---------------------------------------------------------------- 4. guest script
# Written to a host file that the guest reads through the shared root.
mkdir -p "$VM_DIR/run"
GUEST_SH=$(mktemp "$VM_DIR/run/guest-XXXXXX.sh")
trap 'rm -f "$GUEST_SH"' EXIT
{
  echo '#!/bin/bash'
  echo 'exec 2>&1   # one stream: virtme-ng forwards stdout/stderr on separate ports'
  printf 'export PATH=%q\n' "$PATH"
  printf 'export HOME=%q\n' "${HOME:-/root}"
  for v in "${PASS_ENV[@]}"; do
    if [ -n "${!v+x}" ]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
  done
  echo 'ulimit -l unlimited 2>/dev/null || true   # pinned memory for MRs'
  if [ "$RXE" = 1 ]; then
    cat <<'GUEST'
_t0=$(date +%s%N)
modprobe rdma_rxe && modprobe ib_uverbs && modprobe rdma_ucm ||
  { echo "run-in-guest: modprobe failed" >&2; exit 250; }
ip link set lo up
ip link add rxenet0 type dummy
ip addr add 10.77.0.1/24 dev rxenet0
ip link set rxenet0 up
rdma link add rxe0 type rxe netdev rxenet0 ||
  { echo "run-in-guest: rdma link add failed" >&2; exit 250; }
# wait for the IPv4-mapped RoCEv2 GID (::ffff:10.77.0.1) and remember its index
SOFTROCE_GID_INDEX=
for _i in $(seq 1 100); do
  for _g in /sys/class/infiniband/rxe0/ports/1/gids/*; do
    if [ "$(cat "$_g" 2>/dev/null)" = "0000:0000:0000:0000:0000:ffff:0a4d:0001" ]; then
      SOFTROCE_GID_INDEX=${_g##*/}; break 2
    fi
  done
  sleep 0.05
done
[ -n "$SOFTROCE_GID_INDEX" ] || { echo "run-in-guest: no IPv4 GID on rxe0" >&2; exit 250; }
export SOFTROCE_DEV=rxe0 SOFTROCE_GID_INDEX SOFTROCE_IP=10.77.0.1 SOFTROCE_NETDEV=rxenet0
echo "run-in-guest: rxe0 up on rxenet0 (10.77.0.1), gid index $SOFTROCE_GID_INDEX, setup $(( ($(date +%s%N)-_t0)/1000000 )) ms" >&2
GUEST
  fi
  if [ "$TWO_HOSTS" = 1 ]; then
    printf '. %q || exit 250\n' "$SELF_DIR/guest-two-hosts-setup.sh"
  fi
  printf 'cd %q\n' "$PWD"
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} > "$GUEST_SH"
chmod +x "$GUEST_SH"

# ---------------------------------------------------------------- 5. boot + run
# The host's udev (pulled in by rdma-core, which python3-pyverbs needs) is
# visible in the guest, so virtme-ng-init runs a udev coldplug that autoloads
# drivers for every emulated q35 device; under TCG the crypto self-tests and
# kvm_amd alone cost ~4 s of boot. None of these modules is needed here.
BLACKLIST=${SOFTROCE_MODPROBE_BLACKLIST-kvm,kvm_amd,kvm_intel,aesni_intel,ghash_clmulni_intel,sha512_ssse3,sha256_ssse3,sha1_ssse3,crc32_pclmul,crct10dif_pclmul,polyval_clmulni,powernow_k8,acpi_cpufreq,ahci,libahci,sr_mod,cdrom,psmouse,pcspkr,iTCO_wdt,i2c_i801,lpc_ich,serio_raw,evdev,i6300esb,intel_pmc_bxt,sg,qemu_fw_cfg,edac_mce_amd,button}
VNG_ARGS=(--run "$KIMG" --force-9p --cpus "$CPUS" --memory "$MEM")
[ -n "$BLACKLIST" ] && VNG_ARGS+=(--append "modprobe.blacklist=$BLACKLIST")
[ "$ACCEL" = kvm ] || VNG_ARGS+=(--disable-kvm "--qemu-opts=-cpu $CPU_MODEL")
for d in "${RWDIRS[@]}"; do VNG_ARGS+=("--rwdir=$d"); done
[ "$VERBOSE" = 1 ] && VNG_ARGS+=(--verbose)
log "booting guest (accel=$ACCEL$([ "$ACCEL" = kvm ] || echo ", cpu $CPU_MODEL"), cpus=$CPUS, mem=$MEM) and running: $*"
T_BOOT=$(date +%s.%N)
set +e
# - `timeout` (not --foreground) signals its whole process group, so the qemu
#   that virtme-run forks is ended too.
# - vng's output goes through a pipe on purpose: qemu re-opens
#   /proc/self/fd/1 and /fd/2 as "file" chardevs; on a regular file that
#   reopening would truncate/overwrite what was already written there.
# - stdin from /dev/null: CI has none, and the guest command must not wait on it.
PATH="$VM_DIR/venv/bin:$PATH" timeout -k 15 "$TIMEOUT" \
  "$VM_DIR/venv/bin/vng" "${VNG_ARGS[@]}" -e "$GUEST_SH" < /dev/null 2>&1 | cat
RC=${PIPESTATUS[0]}
set -e
T_END=$(date +%s.%N)
awk -v a="$T_START" -v r="$T_READY" -v b="$T_BOOT" -v e="$T_END" -v rc="$RC" 'BEGIN{
  printf "[run-in-guest] exit=%d  prepare=%.1fs  guest(boot+command)=%.1fs  total=%.1fs\n",
         rc, r-a, e-b, e-a }' >&2
exit "$RC"
