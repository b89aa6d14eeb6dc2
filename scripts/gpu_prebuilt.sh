#!/usr/bin/env bash
# The GPU machine's fallback build, made on this machine: what
# scripts/gpu_session.sh runs (cmake target gpu_session: the gpu tests,
# moe-train, moe-bench, moe-opbench, moe-shards, moe-plot, mpi_parallel), CUDA
# for sm_90a (and compute_90 PTX), Release, with the shared libraries the lent
# machine may lack (yaml-cpp, spdlog, fmt, OpenMP's runtime, Open MPI with its
# plugins, PMIx) and
# the demo data, packed into gpu-prebuilt/ (ignored by git; carry it to the
# device). gpu_session.sh unpacks it when the native configure or build fails
# there. CUDA's own libraries (cudart, cuBLASLt, NCCL) are not carried: the
# machine has them, in its toolkit or in PyTorch's wheels.
#
# The build is configured under /tmp/moe-src, a link to this checkout; the GPU
# machine points the same link at its copy of the tree, so the paths the build
# holds (ctest's commands, the tests' MOE_SOURCE_DIR) are valid there too. The
# pack records a hash of the sources: gpu_session.sh refuses a pack of
# another tree.
#
#   scripts/gpu_prebuilt.sh           build and pack (about 10 minutes on 2 cores)
#   scripts/gpu_prebuilt.sh --check   run the pack as the GPU machine would where
#                                     yaml-cpp, spdlog, fmt, Open MPI and PMIx are
#                                     missing (root: a private mount namespace
#                                     hides this machine's copies)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
alias_dir=/tmp/moe-src
build=build-prebuilt
pack=gpu-prebuilt/moe-gpu-prebuilt.tar.xz
lib_dir=/usr/lib/x86_64-linux-gnu

# The system's own libraries, and CUDA's, which the GPU machine has.
base='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcudart|libcublasLt|libcublas|libnccl|libcuda)\.so'
# Open MPI plugins for networks a single GPU machine does not have (UCX,
# libfabric, InfiniBand, PSM, netlink) and for OpenSHMEM: left out, with the
# libraries only they need.
fabric='lib(ucp|ucs|uct|ucm|fabric|ibverbs|rdmacm|psm|psm2|psm_infinipath|infinipath|nl-3|nl-route-3|efa|oshmem)\.so'

log() { echo "gpu_prebuilt: $*"; }
die() { echo "gpu_prebuilt: $*" >&2; exit 1; }

# What a file needs beyond the base: "soname path" lines.
needs() { ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | grep -Ev "$base" || true; }

make_runtime() {
  local rt=$1 ompi_lib=$lib_dir/openmpi/lib pmix=$lib_dir/pmix2
  rm -rf "$rt"
  mkdir -p "$rt/lib" "$rt/openmpi/bin" "$rt/openmpi/lib/openmpi3" "$rt/openmpi/share" "$rt/openmpi/etc" \
           "$rt/pmix/lib/pmix" "$rt/pmix/share" "$rt/pmix/etc"
  [ -x /usr/bin/orterun ] && [ -d "$ompi_lib/openmpi3" ] || die "Open MPI 4 is not installed here (scripts/setup.sh)"
  cp -L /usr/bin/orterun /usr/bin/orted "$rt/openmpi/bin/"
  ln -s orterun "$rt/openmpi/bin/mpirun"
  ln -s orterun "$rt/openmpi/bin/mpiexec"
  local plugin kept=0 dropped=()
  for plugin in "$ompi_lib"/openmpi3/*.so; do
    if ldd "$plugin" | grep -Eq "$fabric"; then dropped+=("$(basename "$plugin" .so)"); continue; fi
    cp "$plugin" "$rt/openmpi/lib/openmpi3/"
    kept=$((kept + 1))
  done
  log "Open MPI: $kept plugins kept, ${#dropped[@]} left out (${dropped[*]})"
  cp -r /usr/share/openmpi "$rt/openmpi/share/"
  cp /etc/openmpi/openmpi-mca-params.conf "$rt/openmpi/etc/"
  cp "$pmix"/lib/pmix/*.so "$rt/pmix/lib/pmix/"
  cp -r "$pmix/share/pmix" "$rt/pmix/share/"
  [ -f /etc/openmpi/pmix-mca-params.conf ] && cp /etc/openmpi/pmix-mca-params.conf "$rt/pmix/etc/"
  cat > "$rt/env.sh" <<'ENV'
# Sourced by scripts/gpu_session.sh (and gpu_prebuilt.sh --check) to run the
# carried build: its libraries first, Open MPI and PMIx relocated here.
rt=/tmp/moe-src/build-prebuilt/runtime
export LD_LIBRARY_PATH="$rt/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$rt/openmpi/bin:$PATH"
export OPAL_PREFIX="$rt/openmpi" OPAL_EXEC_PREFIX="$rt/openmpi" OPAL_BINDIR="$rt/openmpi/bin"
export OPAL_LIBDIR="$rt/lib" OPAL_PKGLIBDIR="$rt/openmpi/lib/openmpi3" OPAL_DATAROOTDIR="$rt/openmpi/share"
export OPAL_DATADIR="$rt/openmpi/share" OPAL_PKGDATADIR="$rt/openmpi/share/openmpi" OPAL_SYSCONFDIR="$rt/openmpi/etc"
export PMIX_INSTALL_PREFIX="$rt/pmix" PMIX_PKGLIBDIR="$rt/pmix/lib/pmix" PMIX_PKGDATADIR="$rt/pmix/share/pmix"
export PMIX_SYSCONFDIR="$rt/pmix/etc" PMIX_LIBDIR="$rt/lib"
# CUDA's libraries: from the loader's cache, else the toolkit's folders, else
# the NVIDIA wheels beside PyTorch.
for soname in libcudart.so.13 libcublasLt.so.13 libnccl.so.2; do
  ldconfig -p 2>/dev/null | grep -q "$soname " && continue
  found=""
  for dir in ${LD_LIBRARY_PATH//:/ } /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$dir/$soname" ] && { found=$dir; break; }
  done
  if [ -z "$found" ]; then
    for site in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
      hit=$(find "$site/nvidia" -name "$soname" 2>/dev/null | head -1)
      [ -n "$hit" ] && { found=$(dirname "$hit"); break; }
    done
  fi
  [ -n "$found" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$found"
done
unset rt soname found dir site hit
ENV
}

# Every library the programs and the kept plugins need beyond the base, with
# what those libraries need in turn, into runtime/lib.
copy_libraries() {
  local rt=$1 queue=() seen=" " f soname path
  for f in "$alias_dir/$build"/moe-* "$alias_dir/$build"/gpu_* "$alias_dir/$build"/mpi_parallel \
           "$rt"/openmpi/bin/orterun "$rt"/openmpi/bin/orted "$rt"/openmpi/lib/openmpi3/*.so "$rt"/pmix/lib/pmix/*.so; do
    queue+=("$f")
  done
  while [ ${#queue[@]} -gt 0 ]; do
    f=${queue[0]}
    queue=("${queue[@]:1}")
    while read -r soname path; do
      case $seen in *" $soname "*) continue ;; esac
      seen="$seen$soname "
      cp -L "$path" "$rt/lib/$soname"
      queue+=("$path")
    done < <(needs "$f")
  done
  log "libraries carried:$seen"
}

# A hash of the sources the build is made from; gpu_session.sh computes the
# same on the GPU machine's copy.
source_hash() {
  (cd "$1" && find CMakeLists.txt engine kernels comm tools tests -type f ! -name '*.pyc' | LC_ALL=C sort |
     xargs sha256sum | sha256sum | cut -c1-16)
}

build_and_pack() {
  ln -sfn "$repo" "$alias_dir"
  local src=$alias_dir rt=$alias_dir/$build/runtime
  mkdir -p "$src/$build"
  make_runtime "$rt"
  scripts/prepare_demo_data.sh >/dev/null 2>&1 || true  # needs build/moe-shards; the GPU machine makes data otherwise
  cmake -S "$src" -B "$src/$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="90a-real;90-virtual" \
        -DMPIEXEC_EXECUTABLE="$rt/openmpi/bin/mpiexec" > "$src/$build/configure.log" ||
    die "configure failed: $src/$build/configure.log"
  grep -q "^MOE_NCCL_LIBRARY:FILEPATH=.*libnccl" "$src/$build/CMakeCache.txt" ||
    die "no NCCL found here: the pack would lack the NCCL communicator"
  cmake --build "$src/$build" --target gpu_session -j "$(nproc --all)"
  copy_libraries "$rt"
  {
    echo "sources $(source_hash "$repo")"
    echo "built $(date -u +%FT%TZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!gpu-prebuilt' || echo ' (with local changes)')"
    echo "nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), $(c++ --version | head -1)"
  } > "$rt/MANIFEST"
  local files=()
  mapfile -t files < <(cd "$src" && find "$build" -maxdepth 1 -type f \( -name '*.cmake' -o -perm -u+x \) | sort)
  [ -f data/fortunes/stats.txt ] && files+=(data/fortunes)
  mkdir -p gpu-prebuilt
  tar -C "$src" -cf - "${files[@]}" "$build/runtime" | xz -9 -T1 > "$pack.tmp"
  mv "$pack.tmp" "$pack"
  log "$pack: $(du -h "$pack" | cut -f1) ($(cat "$rt/MANIFEST" | head -1))"
  local size
  size=$(du -sm --apparent-size gpu-prebuilt | cut -f1)
  [ "$size" -lt 56 ] || die "gpu-prebuilt is $size MiB: the device carries at most 64 MiB with the tree"
}

# Runs the pack where this machine's yaml-cpp, spdlog, fmt, Open MPI and PMIx
# (libraries, CMake packages, programs) are hidden, as on a GPU machine that
# lacks them: gpu_session.sh's native configure must fail, its fallback take
# the pack, the programs start, train on the CPU, run two ranks under the
# carried mpirun, and the gpu tests skip cleanly (no GPU here).
check() {
  [ "$(id -u)" = 0 ] || die "--check needs root (a private mount namespace)"
  [ -f "$pack" ] || die "no $pack: run scripts/gpu_prebuilt.sh first"
  local hide=/tmp/moe-hide out=/tmp/moe-prebuilt-check
  rm -rf "$hide" "$out" && mkdir -p "$hide" "$out"
  cp -al "$lib_dir" "$hide/lib"
  rm -rf "$hide"/lib/openmpi "$hide"/lib/pmix2 "$hide"/lib/cmake/{yaml-cpp,spdlog,fmt} "$hide"/lib/lib{yaml-cpp,spdlog,fmt,mpi,open-rte,open-pal,pmix}.so*
  cp -al /usr/bin "$hide/bin"
  rm -f "$hide"/bin/{orterun,orted,mpirun,mpiexec,mpirun.openmpi,mpiexec.openmpi}
  mkdir -p "$hide/empty"
  unshare --mount --propagation private bash -euo pipefail -c '
    hide=$1 lib_dir=$2 out=$3
    mount --bind "$hide/lib" "$lib_dir"
    mount --bind "$hide/bin" /usr/bin
    for d in /etc/openmpi /usr/share/openmpi /usr/include/yaml-cpp /usr/include/spdlog /usr/include/fmt; do
      [ -d "$d" ] && mount --bind "$hide/empty" "$d"
    done
    ldconfig -X -C "$hide/ld.so.cache" 2>/dev/null && mount --bind "$hide/ld.so.cache" /etc/ld.so.cache
    command -v mpirun && { echo "mpirun still visible"; exit 1; }
    rm -rf /tmp/moe-check-native  # a fresh native configure, which must fail here
    MOE_GPU_BUILD_DIR=/tmp/moe-check-native bash scripts/gpu_session.sh "$out" build test train || true
    tar -xzf "$out/logs.tar.gz" -C "$out"
    echo "=== summary"; cat "$out/summary.txt"
    grep -q "build: fallback" "$out/summary.txt" || { echo "FAIL: the fallback was not taken"; exit 1; }
    skipped=$(grep -c "(Skipped)" "$out/test.log" || true)
    grep -q "100% tests passed" "$out/test.log" && [ "$skipped" -ge 11 ] ||
      { echo "FAIL: the gpu tests did not all skip cleanly ($skipped skipped)"; exit 1; }
    echo "check: $skipped gpu tests skipped cleanly (no GPU here)"
    . /tmp/moe-src/build-prebuilt/runtime/env.sh
    b=/tmp/moe-src/build-prebuilt
    ldd "$b/moe-train" | grep -q "not found" && { ldd "$b/moe-train"; echo "FAIL: unresolved libraries"; exit 1; }
    ldd "$b/moe-train" | grep -E "libyaml|libspdlog|libmpi" | grep -vq "$b/runtime" && { echo "FAIL: a system library was used"; exit 1; }
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    tmp=$(mktemp -d)
    mpirun -np 2 "$b/moe-train" --config configs/tiny.yaml --set run.device=cpu --set parallel.expert_parallel=2 \
      --set train.steps=3 --set optimizer.warmup_steps=1 --set eval.every=0 --set "run.out_dir=$tmp/run" \
      --set "data.train=data/fortunes/train_*.bin" --set "data.val=data/fortunes/val_*.bin" > "$out/mpirun.log" 2>&1 ||
      { cat "$out/mpirun.log"; echo "FAIL: two ranks under the carried mpirun"; exit 1; }
    grep -q "layout: 2 ranks" "$out/mpirun.log" || { cat "$out/mpirun.log"; echo "FAIL: not one job of 2 ranks"; exit 1; }
    rm -rf "$tmp"
    echo "check: the carried mpirun ran 2 ranks of moe-train (3 steps, ep 2)"
  ' check "$hide" "$lib_dir" "$out"
  local rc=$?
  rm -rf "$hide"
  [ $rc -eq 0 ] && log "check passed (logs in $out)"
  return $rc
}

case "${1:-}" in
  "") build_and_pack ;;
  --check) check ;;
  *) die "unknown argument '$1' (none: build and pack; --check: run the pack with the system's libraries hidden)" ;;
esac
