#!/usr/bin/env bash
# moe-train on the emulated GPU (run.device cuda): small steps of the demo
# model, then of it with every router option (tests/router_options.set), each
# resumed at its half and checked bit for bit (scripts/resume_check.sh).
#
#   tests/emulated/train_resume.sh BUILD_DIR OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
build=$1 out=$2
mkdir -p "$out"
data="$out/data"
if [ ! -f "$data/stats.txt" ]; then
  "$build/moe-shards" --out "$data" engine/*/*.cpp kernels/cpu/*.cpp tools/*.cpp README.md > "$out/shards.log" || exit 1
fi
small=(--config configs/tiny.yaml --set "data.train=$data/train_*.bin" --set "data.val=$data/val_*.bin"
       --set run.device=cuda --set parallel.comm=mpi --set train.seq_len=32 --set train.micro_batch_size=2
       --set eval.batches=1 --set log.every=1 --set optimizer.warmup_steps=1)
options=()
while read -r line; do [[ -z "$line" || "$line" == \#* ]] || options+=(--set "$line"); done < tests/router_options.set
scripts/resume_check.sh "$build/moe-train-emulated" "$out/tiny" 4 "${small[@]}" || exit 1
scripts/resume_check.sh "$build/moe-train-emulated" "$out/options" 4 "${small[@]}" "${options[@]}" || exit 1
