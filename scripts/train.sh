#!/usr/bin/env bash
# One command from a fresh machine to a trained demo model: installs what is
# missing, builds, prepares the demo data and trains configs/tiny.yaml on the
# CPU as 2 processes (MOE_RANKS) with its experts split between them (expert
# parallel 2). Run again, it continues from the newest checkpoint in
# runs/tiny (Ctrl-C saves one). It ends with the run's charts in
# runs/tiny/metrics.png. Extra arguments go to moe-train (e.g.
# --set train.steps=2000 to train further).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/prepare_demo_data.sh

ranks=${MOE_RANKS:-2}
# The cores are shared among the ranks; each rank's OpenMP threads stay unbound.
threads=$(( $(nproc --all) / ranks ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}
if [ "$(id -u)" = 0 ]; then  # Open MPI refuses root unless told
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
if [ "$(nproc --all)" -lt "$ranks" ]; then export OMPI_MCA_rmaps_base_oversubscribe=1; fi
. scripts/mpirun_stoppable.sh  # Ctrl-C: the ranks save, and the script goes on below
rc=0
mpirun_stoppable -np "$ranks" --bind-to none build/moe-train --config configs/tiny.yaml \
    --set parallel.expert_parallel="$ranks" --resume auto "$@" || rc=$?
[ "$rc" = 3 ] && echo "stopped with a checkpoint: run scripts/train.sh again to continue"
[ "$rc" = 0 ] || [ "$rc" = 3 ] || exit "$rc"

if [ -x build/moe-plot ]; then build/moe-plot runs/tiny --smooth 20; fi  # the run's charts: runs/tiny/metrics.png
entropy=$(awk '/unigram_entropy_nats/ {print $2}' data/fortunes/stats.txt)
echo "unigram entropy of the training text: $entropy nats/token (what a model blind to context reaches)"
