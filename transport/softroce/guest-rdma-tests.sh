#!/bin/bash
# guest-rdma-tests.sh - runs INSIDE the SoftRoCE guest (see .ci/rdma-tests): the rdma-marked
# tests over rxe0, then (when the command exists and KVDM_RDMA_BENCH != 0) a short
# `kvdm bench transport --transport verbs` against a verbs memory node. Latencies printed here
# are TCG emulation figures, not hardware ones. Exit status: pytest's.
# Usage: guest-rdma-tests.sh [extra pytest arguments]
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
PY=.venv/bin/python   # the venv's interpreter directly: a pyenv shim costs ~5 s per start here
export KVDM_RDMA_BENCH_OUT=/tmp/kvdm-rdma-bench.txt
echo "guest: $(uname -r), $(nproc) vCPU, device ${SOFTROCE_DEV:-?} gid ${SOFTROCE_GID_INDEX:-?}"
"$PY" -m pytest -m rdma -p no:cacheprovider -q "$@"
rc=$?
[ -s "$KVDM_RDMA_BENCH_OUT" ] && cat "$KVDM_RDMA_BENCH_OUT"
if [ "${KVDM_RDMA_BENCH:-1}" != 0 ] && [ -f experiments/cmd_bench_transport.py ]; then
  "$PY" -m kvdm.experiments.cli memnode serve --transport verbs --name bench --size 64M --port 0 \
      --listen 127.0.0.1 --device "${SOFTROCE_DEV:-rxe0}" > /tmp/bench-memnode.out 2> /tmp/bench-memnode.log &
  mn=$!
  uri=
  for _ in $(seq 1 600); do
    uri=$(grep -o 'verbs://[^ ]*' /tmp/bench-memnode.out 2>/dev/null | head -n1)
    [ -n "$uri" ] || ! kill -0 "$mn" 2>/dev/null && break
    sleep 0.2
  done
  if [ -n "$uri" ]; then
    echo "kvdm bench transport --transport verbs (TCG emulation figures, not hardware ones):"
    .venv/bin/kvdm bench transport --transport verbs --memory-node "$uri" --clients 1 --batches 1 \
        --verbs read64,write64,cas,faa --iters 2000 --span 1M || echo "bench transport failed (exit $?)"
  else
    echo "bench: the verbs memory node did not start"; cat /tmp/bench-memnode.log
  fi
  kill "$mn" 2>/dev/null; wait "$mn" 2>/dev/null
fi
exit $rc
