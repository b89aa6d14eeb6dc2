#!/usr/bin/env bash
# Everything that needs a GPU, in one go, for a machine lent for minutes:
# builds natively, runs the gpu tests, the medium benchmarks, the staged
# two-rank runs (dispatch/combine time, overlap of the gradient all-reduce),
# a short moe-train on the GPU with a resume (and the same on the CPU, both
# curves in one chart), the CPU test labels (this machine's compilers and
# libraries: Catch2 3, yaml-cpp 0.8), and on request compute-sanitizer on the
# kernel tests (the lent machines' gVisor kind has been seen refusing it, and
# ncu there reads no counters: time with moe-opbench's events instead). Each
# stage logs to OUT/<stage>.log,
# has a time limit, and the next one runs after a failure; the summary
# (OUT/summary.txt, printed last) has each stage's exit status and headline
# figures. The default stages fit one 10-minute call.
#
#   scripts/gpu_session.sh OUT [stage ...]
#   stages: build test bench staged train unit sanitize
#   (default: all but sanitize, in that order)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: scripts/gpu_session.sh OUT [build|test|bench|staged|train|unit|sanitize ...]" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test bench staged train unit)
build=build-gpu
njobs=$(nproc)
export out build njobs
# mpirun as root (the lent machines run commands as root)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# seconds each stage may take
declare -A limit=([build]=240 [test]=200 [bench]=200 [staged]=200 [train]=180 [unit]=180 [sanitize]=480)
summary="$out/summary.txt"
: > "$summary"

note() { echo "$*" >> "$summary"; }

# stage NAME: runs do_NAME within its time limit, output in OUT/NAME.log.
stage() {
  local name=$1 t0=$SECONDS
  echo "running $name (at most ${limit[$name]} s)"
  timeout --kill-after=10 "${limit[$name]}" bash -c "do_$name" > "$out/$name.log" 2>&1
  local rc=$?
  local why=""
  [ $rc -eq 124 ] && why=" (past its ${limit[$name]} s limit)"
  note "== $name: exit $rc$why, $((SECONDS - t0)) s (log $name.log)"
  return $rc
}

do_build() {
  nvidia-smi || true
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON || return 1
  if grep -q "^MOE_NCCL_LIBRARY.*NOTFOUND\|^MOE_NCCL_INCLUDE.*NOTFOUND" "$build/CMakeCache.txt"; then
    # No system NCCL: take the one PyTorch's wheels bring, if any.
    local d lib
    d=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)
    lib=$(ls "$d"/lib/libnccl.so* 2>/dev/null | head -1)
    if [ -n "$lib" ] && [ -f "$d/include/nccl.h" ]; then
      echo "no system NCCL; using $lib"
      cmake -S . -B "$build" -DMOE_NCCL_INCLUDE="$d/include" -DMOE_NCCL_LIBRARY="$lib" || return 1
    else
      echo "no NCCL found: the NCCL communicator and gpu_nccl are not built"
    fi
  fi
  cmake --build "$build" -j "$njobs"
}

do_test() { (cd "$build" && ctest -L gpu --output-on-failure --timeout 600); }

do_unit() { (cd "$build" && ctest -L "unit|mpi" --output-on-failure -j "$njobs"); }

# Races, out-of-bounds accesses and uninitialised reads in the kernels, on the
# op tests (small shapes; the model tests would take too long under the tool).
do_sanitize() {
  local rc=0 tool t
  command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer is not on the PATH"; return 1; }
  for tool in memcheck racecheck initcheck; do
    for t in dense attention router permute dynamics cross_entropy embedding; do
      echo "--- $tool gpu_cuda_$t"
      compute-sanitizer --tool "$tool" --error-exitcode 9 "$build/gpu_cuda_$t" || rc=1
    done
  done
  return $rc
}

do_bench() {
  local rc=0 c
  for c in medium medium-tr; do
    echo "--- $c"
    "$build/moe-bench" --config "configs/bench/$c.yaml" --steps 20 --warmup 3 --phase-steps 5 --estimate-ep 8 || rc=1
    echo "--- $c, op by op"
    "$build/moe-opbench" --config "configs/bench/$c.yaml" || rc=1
  done
  return $rc
}

# Two ranks on the one GPU through the staged MPI communicator (NCCL refuses
# two ranks on one GPU): dispatch/combine time and bytes per token, and the
# step with the gradient all-reduce overlapped against after the backward.
# Each rank holds half the experts: two ranks of medium fit in 80 GB.
do_staged() {
  local rc=0 c overlap
  local common=(--set parallel.allow_shared_gpu=true --set parallel.comm=mpi --set parallel.expert_parallel=2
                --steps 10 --warmup 2 --phase-steps 0)
  for c in medium medium-tr; do
    for overlap in "" --no-overlap; do
      echo "--- $c ep 2 staged ${overlap:-(overlap)}"
      mpirun -np 2 "$build/moe-bench" --config "configs/bench/$c.yaml" "${common[@]}" $overlap || rc=1
    done
  done
  return $rc
}

# A short real run: demo data if present, else shards of this repository's
# text; then a resume from its checkpoint; then the same two runs on the CPU,
# both curves in OUT/train-gpu-vs-cpu.png.
do_train() {
  local data=data/fortunes
  if [ ! -f "$data/stats.txt" ]; then
    data="$out/train-data"
    mapfile -t files < <(git ls-files '*.md' '*.cpp' '*.h' '*.cu' | head -200)
    "$build/moe-shards" --out "$data" "${files[@]}" || return 1
  fi
  local run="$out/train-gpu"
  rm -rf "$run"
  local args=(--config configs/tiny.yaml --set "data.train=$data/train_*.bin" --set "data.val=$data/val_*.bin")
  local cpu="$out/train-cpu" device
  rm -rf "$cpu"
  for device in cuda cpu; do
    local dir=$run
    [ $device = cpu ] && dir=$cpu
    "$build/moe-train" "${args[@]}" --set run.device=$device --set "run.out_dir=$dir" --set train.steps=200 &&
      "$build/moe-train" "${args[@]}" --set run.device=$device --set "run.out_dir=$dir" --set train.steps=300 \
        --resume auto || return 1
  done
  if [ -x "$build/moe-plot" ]; then
    "$build/moe-plot" "$run" "$cpu" --smooth 10 -o "$out/train-gpu-vs-cpu.png"
  else
    echo "no moe-plot (built only where cmake finds zlib): no train-gpu-vs-cpu.png"
  fi
}

export -f do_build do_test do_unit do_sanitize do_bench do_staged do_train
failed=0
for s in "${stages[@]}"; do
  case $s in
    build | test | bench | staged | train | unit | sanitize) stage "$s" || failed=1 ;;
    *) note "unknown stage '$s' (build test bench staged train unit sanitize)"; failed=1 ;;
  esac
done

# Headline figures from the logs.
[ -f "$out/build.log" ] && grep -E "^-- moe:|no system NCCL|no NCCL found" "$out/build.log" | sort -u >> "$summary"
for f in bench staged; do
  [ -f "$out/$f.log" ] && grep -E "^--- |^step time|^tokens/s|^model TFLOP|^GPU memory|^grad sync|^all-to-all|^  [a-z]|^these ops|^ep [0-9]+ estimate|^  [0-9.]+ " \
    "$out/$f.log" >> "$summary"
done
[ -f "$out/train.log" ] && grep -E "final validation loss|train-gpu-vs-cpu.png" "$out/train.log" >> "$summary"
for f in test unit; do
  [ -f "$out/$f.log" ] && grep -E "tests passed|tests failed|\(Failed\)|\(Not Run\)|Skipped" "$out/$f.log" >> "$summary"
done
echo
cat "$summary"
exit $failed
