#!/usr/bin/env bash
# A stop of a launch script's mpirun (scripts/mpirun_stoppable.sh): SIGTERM
# to the script makes the ranks save a checkpoint, and the launch exits 3
# (stopped with a checkpoint), not the 1 that mpirun gives for a TERM of its own.
#   tests/mpi/stop_exit_code.sh BUILD_DIR
set -uo pipefail
build=$(cd "${1:?usage: stop_exit_code.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/moe-stop-XXXXXX)
launch=""
trap '[ -n "$launch" ] && kill -9 "$launch" 2>/dev/null; pkill -9 -f "$work" 2>/dev/null; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; tail -20 "$work/log"; exit 1; }

"$build/moe-shards" --out "$work/data" --val-every 10 "$src/README.md" "$src"/engine/*/*.cpp > /dev/null ||
  fail "cannot make data"
bash -c '. "$0"; mpirun_stoppable "$@"' "$src/scripts/mpirun_stoppable.sh" -np 2 --bind-to none \
  "$build/moe-train" --config "$src/configs/tiny.yaml" --set "data.train=$work/data/train_*.bin" --set data.val= \
  --set "run.out_dir=$work/run" --set parallel.expert_parallel=2 --set train.steps=1000000 \
  --set optimizer.warmup_steps=1 --set checkpoint.every=0 --set log.every=1 < /dev/null > "$work/log" 2>&1 &
launch=$!
for _ in $(seq 600); do grep -q "step     3/" "$work/log" && break; sleep 0.1; done
grep -q "step     3/" "$work/log" || fail "the job did not start training"
kill -TERM "$launch"
for _ in $(seq 600); do kill -0 "$launch" 2>/dev/null || break; sleep 0.1; done
kill -0 "$launch" 2>/dev/null && fail "the launch still runs 60 s after SIGTERM"
wait "$launch"
rc=$?
launch=""
[ "$rc" = 3 ] || fail "the launch exited $rc, not 3"
grep -q "stopped by a signal after step" "$work/log" || fail "the ranks did not stop with a checkpoint"
[ -f "$work/run/checkpoints/latest" ] || fail "no checkpoint"
echo "PASS: SIGTERM to the launch: checkpoint $(cat "$work/run/checkpoints/latest"), exit 3"
