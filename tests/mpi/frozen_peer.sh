#!/usr/bin/env bash
# A rank that stops taking part (SIGSTOP, as a hung node would) in the middle
# of training: the other rank notices within parallel.collective_timeout_s,
# names it, and the whole job ends with an error instead of waiting forever.
#   tests/mpi/frozen_peer.sh BUILD_DIR
set -uo pipefail
build=$(cd "${1:?usage: frozen_peer.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/moe-frozen-XXXXXX)
job=""
frozen=""
cleanup() {
  [ -n "$frozen" ] && kill -CONT "$frozen" 2>/dev/null
  [ -n "$job" ] && kill -9 "$job" 2>/dev/null
  [ -n "$frozen" ] && kill -9 "$frozen" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "== log"; tail -20 "$work/log"; exit 1; }

"$build/moe-shards" --out "$work/data" --val-every 10 "$src/README.md" "$src"/engine/*/*.cpp > /dev/null ||
  fail "cannot make data"
mpirun -np 2 --bind-to none "$build/moe-train" --config "$src/configs/tiny.yaml" \
  --set "data.train=$work/data/train_*.bin" --set data.val= --set "run.out_dir=$work/run" \
  --set parallel.expert_parallel=2 --set parallel.collective_timeout_s=5 --set train.steps=1000000 \
  --set optimizer.warmup_steps=1 --set checkpoint.every=0 --set log.every=1 < /dev/null > "$work/log" 2>&1 &
job=$!
for _ in $(seq 600); do grep -q "step     3/" "$work/log" && break; sleep 0.1; done
grep -q "step     3/" "$work/log" || fail "the job did not start training"
for p in $(pgrep -P "$job"); do
  tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && frozen=$p
done
[ -n "$frozen" ] || fail "rank 1's process not found among mpirun's children"
kill -STOP "$frozen"
stopped_at=$SECONDS
for _ in $(seq 600); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
kill -0 "$job" 2>/dev/null && fail "the job still runs 60 s after rank 1 stopped"
wait "$job"
rc=$?
job=""
[ "$rc" -ne 0 ] || fail "the job exited 0"
grep -q "waited [0-9]* s for rank 1 (world rank 1) of a group of 2 ranks: it stopped taking part" "$work/log" ||
  fail "no message naming rank 1"
echo "PASS: the job stopped $((SECONDS - stopped_at)) s after rank 1 did, exit $rc, naming it:"
grep "stopped taking part" "$work/log" | head -1
