#!/bin/bash
# guest-rdma-tests.sh - runs INSIDE the SoftRoCE guest (see .ci/rdma-tests): the rdma-marked
# tests over rxe0 (the transport conformance suite, the index suites, the verbs-only tests,
# `kvdm replay` and `kvdm bench transport` over verbs; with run-in-guest.sh --two-hosts also
# test_verbs_two_hosts.py, node and clients on two rxe devices across a veth, with the MPI launcher:
# `mpirun -np 2 kvdm replay|bench index --launcher mpi` over verbs), then prints the verb latencies
# the bench and two-hosts tests measured (TCG emulation figures, not hardware ones) and the MPI
# runs' wall times. Exit status: pytest's.
# Usage: guest-rdma-tests.sh [extra pytest arguments]
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
PY=.venv/bin/python   # the venv's interpreter directly: a pyenv shim costs ~5 s per start here
export KVDM_RDMA_BENCH_OUT=/tmp/kvdm-rdma-bench.txt KVDM_TWO_HOSTS_OUT=/tmp/kvdm-two-hosts.txt
echo "guest: $(uname -r), $(nproc) vCPU ($(grep -qw avx2 /proc/cpuinfo && echo with || echo without) AVX2), device ${SOFTROCE_DEV:-?} gid ${SOFTROCE_GID_INDEX:-?}"
# Only the modules that hold rdma tests (a marker or the `fabric` fixture): importing every
# test module costs over a minute under TCG.
mapfile -t files < <(grep -lE 'mark\.rdma|\bfabric\b' tests/test_*.py)
"$PY" -m pytest -m rdma -p no:cacheprovider -q "${files[@]}" "$@"
rc=$?
[ -s "$KVDM_RDMA_BENCH_OUT" ] && cat "$KVDM_RDMA_BENCH_OUT"
[ -s "$KVDM_TWO_HOSTS_OUT" ] && cat "$KVDM_TWO_HOSTS_OUT"
exit $rc
