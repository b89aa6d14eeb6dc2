#!/usr/bin/env bash
# One command from a fresh machine to a trained demo model: installs what is
# missing, builds, prepares the demo data and trains configs/tiny.yaml on the
# CPU as 2 processes (MOE_RANKS) with its experts split between them (expert
# parallel 2). MOE_DEMO=bpe trains configs/tiny-bpe.yaml instead: the same
# model on the same text encoded by a BPE tokenizer trained on it. Run again,
# it continues from the newest checkpoint in runs/tiny (runs/tiny-bpe; Ctrl-C
# saves one). It ends with the run's charts in runs/tiny/metrics.png, its
# tokenizer and validation bits per byte. Extra arguments go to moe-train
# (e.g. --set train.steps=2000 to train further).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${MOE_DEMO:-bytes}" in
  bytes) config=configs/tiny.yaml run=runs/tiny data=data/fortunes prepare=() ;;
  bpe) config=configs/tiny-bpe.yaml run=runs/tiny-bpe data=data/fortunes-bpe prepare=(--bpe) ;;
  *) echo "train: MOE_DEMO is '$MOE_DEMO': bytes (the default) or bpe" >&2; exit 2 ;;
esac
scripts/setup.sh
scripts/build.sh
scripts/prepare_demo_data.sh "${prepare[@]}"

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
mpirun_stoppable -np "$ranks" --bind-to none build/moe-train --config "$config" \
    --set parallel.expert_parallel="$ranks" --resume auto "$@" || rc=$?
[ "$rc" = 3 ] && echo "stopped with a checkpoint: run scripts/train.sh again to continue"
[ "$rc" = 0 ] || [ "$rc" = 3 ] || exit "$rc"

if [ -x build/moe-plot ]; then build/moe-plot "$run" --smooth 20; fi  # the run's charts: $run/metrics.png
entropy=$(awk '/unigram_entropy_nats/ {print $2}' "$data/stats.txt")
echo "unigram entropy of the training text: $entropy nats/token (what a model blind to context reaches)"
tokenizer=$(awk '/^  tokenizer:/ {gsub(/"/, "", $2); print $2}' "$run/config.yaml")
bpb=$(grep -o '"val_bpb": [^,}]*' "$run/metrics.jsonl" | tail -1 | awk '{printf "%.4f", $2}')
echo "tokenizer $tokenizer: validation bits per byte of text ${bpb:-unknown} (comparable whatever the tokenizer)"
