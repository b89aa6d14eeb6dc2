#!/usr/bin/env bash
# Everything that needs a GPU, for a machine lent for minutes, as two prepared
# device calls of at most 9 minutes each (every stage has a time limit, and
# the whole session a budget that ends it with its summary written):
#
#   scripts/gpu_session.sh OUT          the bring-up: build, the gpu tests (and the
#                                       largest errors of fast_math.cuh on this GPU and the 200-step
#                                       curve's distance from the CPU runs'), moe-bench on
#                                       both medium configs (with the ep 8 estimate; on
#                                       medium, cuBLASLt's 8 best-ranked algorithms timed
#                                       for each GEMM shape),
#                                       moe-opbench on medium, 200 steps of moe-train on
#                                       cuda with a resume checked bit for bit, and the
#                                       same run on the CPU beside it
#   scripts/gpu_session.sh OUT more     the rest: two ranks on the GPU through staged MPI
#                                       (all-to-all time and bytes, overlapped all-reduce
#                                       against --no-overlap), the router options on cuda
#                                       with a resume checked bit for bit, the unit and mpi
#                                       tests with that machine's libraries, compute-sanitizer
#   scripts/gpu_session.sh OUT STAGE... chosen stages: build test bench opbench train
#                                       staged options unit sanitize ab (build first); ab:
#                                       moe-bench medium as it runs, with mma.sync attention
#                                       (MOE_CUDA_ATTENTION), with one or two query heads an
#                                       attention block (MOE_CUDA_ATTENTION_HEADS=1, 2) and with
#                                       the experts' GEMMs on the main stream
#                                       (MOE_CUDA_EXPERT_STREAMS=0); torch (needs no build):
#                                       the PyTorch bar on the same GPU, tools/torch_bench.py
#                                       (its check against the reference, SDPA per backend and
#                                       grouped GEMMs at medium's shapes, medium and medium-tr
#                                       trained eager and under torch.compile); ncu: each
#                                       kernel of moe-opbench's medium ops under Nsight
#                                       Compute's counters (time, DRAM bytes, % of peak,
#                                       occupancy), a line a kernel (tools/ncu_summary.py)
#
# The build is native (build-gpu) where the machine has our build packages;
# where its configure or build fails, the pack that scripts/gpu_prebuilt.sh
# made (gpu-prebuilt/, carried) is unpacked and run instead. Device call:
#   run(command="bash scripts/gpu_session.sh $OUT", carry=["gpu-prebuilt"], timeout_s=600)
# OUT gets summary.txt (each stage's exit status and the headline figures),
# logs.tar.gz (every log and the runs' metrics), train-gpu-vs-cpu.png and
# options-gpu-vs-cpu.png.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: scripts/gpu_session.sh OUT [more | build|test|bench|opbench|train|staged|options|unit|sanitize|ab|torch|ncu ...]" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
case "${1:-}" in
  "") plan=bring-up; stages=(build test bench opbench train) ;;
  more) plan=more; stages=(build staged options unit sanitize) ;;
  *) plan=chosen; stages=("$@") ;;
esac
budget=${MOE_GPU_BUDGET_S:-520}  # seconds for the whole session: a 9-minute call, less the packing
native=${MOE_GPU_BUILD_DIR:-build-gpu}
state=/tmp/moe-gpu-session.env   # the build chosen by the build stage, sourced by the others
runs=/tmp/moe-gpu-runs
njobs=$(nproc --all)
export out native state runs njobs
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # the lent machines run commands as root
export NCCL_DEBUG=${NCCL_DEBUG:-VERSION}                            # NCCL names its version once
declare -A limit=([build]=200 [test]=240 [bench]=120 [opbench]=80 [train]=120
                  [staged]=200 [options]=120 [unit]=300 [sanitize]=400 [ab]=200 [torch]=300 [ncu]=240)
summary="$out/summary.txt"
deadline=$((SECONDS + budget))
note() { echo "$*" >> "$summary"; }

# stage NAME: do_NAME within min(its limit, what the budget has left), output in OUT/NAME.log.
stage() {
  local name=$1 t0=$SECONDS left=$((deadline - SECONDS))
  local t=$(( left < ${limit[$name]} ? left : ${limit[$name]} ))
  if [ "$t" -lt 20 ]; then note "== $name: not run (the session's ${budget} s are spent)"; return 1; fi
  echo "running $name (at most $t s)"
  timeout --kill-after=10 "$t" bash -c "do_$name" > "$out/$name.log" 2>&1
  local rc=$? why=""
  [ $rc -eq 124 ] && why=" (stopped at its $t s limit)"
  note "== $name: exit $rc$why, $((SECONDS - t0)) s (log $name.log)"
  return $rc
}
source_hash() {  # as scripts/gpu_prebuilt.sh computes it
  find CMakeLists.txt engine kernels comm tools tests -type f ! -name '*.pyc' | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -c1-16
}

native_build() {
  cmake -S . -B "$native" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="90a-real;90-virtual" || return 1
  if grep -q "^MOE_NCCL_LIBRARY.*NOTFOUND\|^MOE_NCCL_INCLUDE.*NOTFOUND" "$native/CMakeCache.txt"; then
    local d lib  # no system NCCL: the one PyTorch's wheels bring, if any
    d=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)
    lib=$(ls "$d"/lib/libnccl.so* 2>/dev/null | head -1)
    if [ -n "$lib" ] && [ -f "$d/include/nccl.h" ]; then
      echo "no system NCCL; using $lib"
      cmake -S . -B "$native" -DMOE_NCCL_INCLUDE="$d/include" -DMOE_NCCL_LIBRARY="$lib" || return 1
    else
      echo "no NCCL found: the NCCL communicator and gpu_nccl are not built"
    fi
  fi
  cmake --build "$native" --target gpu_session -j "$njobs"
}

# The pack of scripts/gpu_prebuilt.sh, made on another machine from this tree.
prebuilt_build() {
  local pack=gpu-prebuilt/moe-gpu-prebuilt.tar.xz b=/tmp/moe-src/build-prebuilt
  [ -f "$pack" ] || { echo "no $pack: make it with scripts/gpu_prebuilt.sh and carry gpu-prebuilt"; return 1; }
  rm -rf build-prebuilt && tar -xJf "$pack" || return 1
  ln -sfn "$PWD" /tmp/moe-src
  local want have
  want=$(sed -n 's/^sources //p' "$b/runtime/MANIFEST")
  have=$(source_hash)
  if [ "$want" != "$have" ]; then
    echo "the pack was built from other sources ($want, this tree $have): rebuild it with scripts/gpu_prebuilt.sh"
    return 1
  fi
  cat "$b/runtime/MANIFEST"
  . "$b/runtime/env.sh"
  if ldd "$b/moe-train" "$b/gpu_tests" | grep "not found"; then
    echo "the pack's programs miss the libraries above on this machine"
    return 1
  fi
  { echo "build=$b"; echo ". $b/runtime/env.sh"; echo "build_kind=fallback"; } > "$state"
}

# The cuDNN that PyTorch's wheels bring, if any: its version says which fused
# attention and grouped-GEMM graphs a native cuDNN path could use there.
cudnn_found() {
  python3 - <<'PY' 2>/dev/null || echo "cuDNN: no wheel"
import glob, re
import nvidia.cudnn as m
d = list(m.__path__)[0]
h = open(d + "/include/cudnn_version.h").read()
v = ".".join(re.search(r"define CUDNN_%s (\d+)" % k, h).group(1) for k in ("MAJOR", "MINOR", "PATCHLEVEL"))
print(f"cuDNN: {v} at {d}, libraries {len(glob.glob(d + '/lib/libcudnn*.so*'))}")
PY
}

do_build() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  nvcc --version 2>/dev/null | tail -2
  cudnn_found
  if native_build; then
    { echo "build=$native"; echo "build_kind=native"; } > "$state"
    echo "build: native ($native)"
  else
    echo "the native build failed: taking the carried pack"
    prebuilt_build || return 1
    echo "build: fallback (the carried pack of scripts/gpu_prebuilt.sh)"
  fi
}

# Where the attention test fails, the later stages run attention on mma.sync
# (the log says which kernels failed), so that their figures are of right
# results; the summary says so.
do_test() {
  . "$state"
  (cd "$build" && ctest -L gpu --output-on-failure --timeout 300)
  local rc=$?
  # The largest errors of fast_math.cuh's approximations on this GPU and how
  # far the 200-step curve lay from the CPU runs' (ctest keeps a passing
  # test's output in its log, off the screen).
  grep -hA1 "largest errors" "$build/Testing/Temporary/LastTest.log"
  grep -h "^200 steps:" "$build/Testing/Temporary/LastTest.log"
  if grep -qs ":gpu_cuda_attention$" "$build/Testing/Temporary/LastTestsFailed.log"; then
    echo "export MOE_CUDA_ATTENTION=mma_sync" >> "$state"
    echo "gpu_cuda_attention failed: the later stages run attention with MOE_CUDA_ATTENTION=mma_sync"
  fi
  return $rc
}

do_bench() {
  . "$state"
  local rc=0 c
  for c in medium medium-tr; do
    echo "--- $c"
    local candidates=()  # medium's GEMM shapes with cuBLASLt's next-ranked algorithms too
    [ "$c" = medium ] && candidates=(--gemm-candidates 8)
    "$build/moe-bench" --config "configs/bench/$c.yaml" --steps 20 --warmup 3 --phase-steps 5 --estimate-ep 8 \
      "${candidates[@]}" || rc=1
  done
  return $rc
}

do_opbench() { . "$state"; echo "--- medium, op by op"; "$build/moe-opbench" --config configs/bench/medium.yaml; }

# The backend's choices against each other on medium (same bits, other speed).
do_ab() {
  . "$state"
  local rc=0 choice
  for choice in "" MOE_CUDA_ATTENTION=mma_sync MOE_CUDA_ATTENTION_HEADS=1 MOE_CUDA_ATTENTION_HEADS=2 \
                MOE_CUDA_EXPERT_STREAMS=0; do
    echo "--- medium ${choice:-as it runs}"
    env $choice "$build/moe-bench" --config configs/bench/medium.yaml --steps 10 --warmup 2 --phase-steps 3 || rc=1
  done
  return $rc
}

# Each kernel of medium's ops under Nsight Compute's hardware counters (the
# clocks left alone, as on these machines ncu is given), a line a kernel;
# the raw CSV stays in ncu.csv.
do_ncu() {
  . "$state"
  command -v ncu >/dev/null || { echo "ncu is not on the PATH"; return 1; }
  local m known
  local metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread
  # Three more where this ncu knows them (a name it does not know stops its
  # whole run): the tensor pipe's busy cycles, the transcendental pipe's
  # issue rate (the softmax's exp2), and issue slots stalled at a block
  # barrier (what the attention kernels' warpgroups lose going in step).
  known=$(ncu --query-metrics 2>/dev/null)
  for m in sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed \
           sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active \
           smsp__warp_issue_stalled_barrier_per_warp_active.pct; do
    if grep -qE "^[[:space:]]*${m%%.*}[[:space:]]" <<< "$known"; then
      metrics+=",$m"
    else
      echo "ncu --query-metrics does not list ${m%%.*}: left out"
    fi
  done
  ncu --clock-control none --csv --log-file "$out/ncu.csv" --kernel-name-base demangled --metrics "$metrics" \
    "$build/moe-opbench" --config configs/bench/medium.yaml --reps 1 || return 1
  python3 tools/ncu_summary.py "$out/ncu.csv"
}

# The PyTorch bar: the same network in PyTorch on this GPU (python3 there is
# the one with torch), first checked against tools/torch_reference.py.
do_torch() {
  local rc=0 c
  export PYTHONUNBUFFERED=1
  python3 tools/torch_bench.py --check --device cuda || rc=1
  python3 tools/torch_bench.py --config configs/bench/medium.yaml --ops || rc=1
  for c in medium medium-tr; do
    echo "--- $c"
    python3 tools/torch_bench.py --config "configs/bench/$c.yaml" --steps 10 --warmup 3 || rc=1
  done
  return $rc
}

# Two ranks on the one GPU through the staged MPI communicator (NCCL refuses
# two ranks on one GPU): dispatch/combine time and bytes per token, and the
# step with the gradient all-reduce overlapped against after the backward.
do_staged() {
  . "$state"
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

# The demo shards: the tree's, or made from the sources where it has none.
demo_data() {
  local data=data/fortunes
  if [ ! -f "$data/stats.txt" ]; then
    data="$runs/data"
    if [ ! -f "$data/stats.txt" ]; then
      mapfile -t files < <(find engine kernels comm tools tests -name '*.cpp' -o -name '*.h' -o -name '*.cu' | sort)
      "$build/moe-shards" --out "$data" "${files[@]}" README.md >&2 || return 1
    fi
  fi
  echo "$data"
}

# train_check NAME STEPS [ARGS...]: STEPS steps of the demo model (tiny.yaml
# and ARGS) on the GPU with checkpoints at the half and the end; a second run
# resumed from the half must give the rest bit for bit (scripts/resume_check.sh);
# the same steps on the CPU, both curves in OUT/NAME-gpu-vs-cpu.png.
train_check() {
  local name=$1 steps=$2 data
  shift 2
  data=$(demo_data) || return 1
  rm -rf "$runs/$name-"*
  local args=(--config configs/tiny.yaml --set "data.train=$data/train_*.bin" --set "data.val=$data/val_*.bin"
              --set log.every=25 "$@")
  scripts/resume_check.sh "$build/moe-train" "$runs/$name-gpu" "$steps" "${args[@]}" --set run.device=cuda || return 1
  "$build/moe-train" "${args[@]}" --set train.steps="$steps" --set checkpoint.every="$((steps / 2))" \
    --set eval.every="$((steps / 2))" --set run.device=cpu --set "run.out_dir=$runs/$name-cpu" || return 1
  if [ -x "$build/moe-plot" ]; then
    "$build/moe-plot" "$runs/$name-gpu/full" "$runs/$name-cpu" --smooth 10 -o "$out/$name-gpu-vs-cpu.png"
  else
    echo "no moe-plot (built only where cmake finds zlib): no $name-gpu-vs-cpu.png"
  fi
}

# 200 steps of the demo model as configured.
do_train() { . "$state"; train_check train 200; }

# The router options of docs/MODEL-OPTIONS.md all at once on the GPU
# (tests/router_options.set).
do_options() {
  . "$state"
  local options=() line
  while read -r line; do [[ -z "$line" || "$line" == \#* ]] || options+=(--set "$line"); done < tests/router_options.set
  train_check options 60 "${options[@]}" --set optimizer.warmup_steps=5
}

# The CPU labels with this machine's compilers and libraries (native only).
do_unit() {
  . "$state"
  [ "$build_kind" = native ] || { echo "skipped: the carried pack holds no unit or mpi tests"; return 0; }
  cmake --build "$build" -j "$njobs" && (cd "$build" && ctest -L "unit|mpi" --output-on-failure -j "$njobs")
}

# Races, out-of-bounds accesses and uninitialised reads in the kernels, on the
# op tests (small shapes; the model tests would take too long under the tool).
do_sanitize() {
  . "$state"
  local rc=0 tool t
  command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer is not on the PATH"; return 1; }
  for tool in memcheck racecheck initcheck; do
    for t in elementwise rmsnorm matmul activations adamw attention router permute dynamics cross_entropy embedding; do
      echo "--- $tool gpu_cuda_$t"
      compute-sanitizer --tool "$tool" --error-exitcode 9 "$build/gpu_tests" "-#" "[#test_cuda_$t]" || rc=1
    done
  done
  return $rc
}

# The headline figures of the logs, after the stages' lines.
summarize() {
  local f
  note ""
  [ -f "$out/build.log" ] && grep -hE "^build: |no system NCCL|no NCCL found|^sources |^built |^commit |^NVIDIA|^Cuda compilation|^cuDNN: " \
    "$out/build.log" >> "$summary"
  grep -hoE "NCCL version [^ ]+" "$out"/*.log 2>/dev/null | head -1 >> "$summary"
  for f in test unit; do
    [ -f "$out/$f.log" ] && grep -hE "Test +#|tests passed|tests failed|\(Failed\)|\(Not Run\)|MOE_CUDA_ATTENTION|largest errors|in \[0\.5, 2\]|^200 steps:" \
      "$out/$f.log" >> "$summary"
  done
  for f in bench opbench staged ab; do
    [ -f "$out/$f.log" ] && grep -hE "^--- |^step time|^tokens/s|^model TFLOP|^GPU memory|^grad sync|^all-to-all|^phases|^  [a-z]|^these ops|^their floors|^ep [0-9]+ estimate|^  [0-9]+\.[0-9]+ |^GEMMs a step" \
      "$out/$f.log" >> "$summary"
  done
  [ -f "$out/torch.log" ] && grep -hE "^--- |^torch |^attention |^experts |^check" "$out/torch.log" >> "$summary"
  [ -f "$out/ncu.log" ] && grep -hA16 "^kernel " "$out/ncu.log" >> "$summary"
  for f in train options; do
    [ -f "$out/$f.log" ] && grep -hE "^resume: |final validation loss|done: |gpu-vs-cpu.png" "$out/$f.log" >> "$summary"
  done
  [ -f "$out/sanitize.log" ] && grep -hE "^--- |ERROR SUMMARY" "$out/sanitize.log" >> "$summary"
}

# At most 8 files come back: the logs and the runs' metrics go in one archive.
pack_logs() {
  local d files
  for d in "$runs"/*/ "$runs"/*/*/; do
    [ -f "$d/metrics.jsonl" ] && cp "$d/metrics.jsonl" "$out/$(realpath --relative-to="$runs" "$d" | tr / -).metrics.jsonl"
  done
  files=$(cd "$out" && shopt -s nullglob && echo *.log *.metrics.jsonl)
  [ -n "$files" ] && (cd "$out" && tar -czf logs.tar.gz --remove-files $files)
}

export -f source_hash native_build prebuilt_build cudnn_found demo_data train_check
export -f do_build do_test do_bench do_opbench do_staged do_train do_options do_unit do_sanitize do_ab do_torch do_ncu
: > "$summary"
note "gpu_session $plan, $(date -u +%FT%TZ), stages: ${stages[*]}"
failed=0
[ "${stages[0]}" = build ] || [ -f "$state" ] || [ "${stages[*]}" = torch ] ||
  note "no build stage and no earlier build: the stages will fail"
for s in "${stages[@]}"; do
  case $s in
    build | test | bench | opbench | train | staged | options | unit | sanitize | ab | torch | ncu)
      stage "$s" || failed=1
      [ "$s" = build ] && [ "$failed" = 1 ] && { note "the build failed: nothing else can run"; break; } ;;
    *) note "unknown stage '$s' (build test bench opbench train staged options unit sanitize ab torch ncu)"; failed=1 ;;
  esac
done
summarize
pack_logs
echo
cat "$summary"
exit $failed
