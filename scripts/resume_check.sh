#!/usr/bin/env bash
# An exact resume, checked: STEPS steps of TRAIN (moe-train, or a build of it)
# with ARGS into DIR/full, checkpointed and evaluated at the half and the end;
# then the same run resumed from the half into DIR/resumed, whose losses after
# the half (training and validation) must equal the first run's bit for bit.
#
#   scripts/resume_check.sh TRAIN DIR STEPS [ARGS...]
#
# Prints one "resume: ..." line; exits 1 where the runs differ or a run fails.
set -uo pipefail
if [ $# -lt 3 ]; then
  echo "usage: scripts/resume_check.sh TRAIN DIR STEPS [ARGS...]" >&2
  exit 2
fi
train=$1 dir=$2 steps=$3
shift 3
half=$((steps / 2))
if [ "$half" -lt 1 ]; then
  echo "resume_check: STEPS must be at least 2, to resume at the half" >&2
  exit 2
fi
rm -rf "$dir/full" "$dir/resumed"
mkdir -p "$dir"
args=("$@" --set train.steps="$steps" --set checkpoint.every="$half" --set eval.every="$half")

# The step and evaluation lines of a metrics file after step $2 (not the expert
# telemetry, whose intervals restart on resume), without the timings (which differ
# from run to run).
losses_from() {
  awk -v from="$2" '/"(val_)?loss"/ && match($0, /"step": [0-9]+/) && substr($0, RSTART + 8, RLENGTH - 8) + 0 > from' "$1" |
    sed -E 's/, "(tokens_per_s|step_s|all_to_all_s)": [^,}]*//g'
}

"$train" "${args[@]}" --set "run.out_dir=$dir/full" || exit 1
"$train" "${args[@]}" --set "run.out_dir=$dir/resumed" --resume "$dir/full/checkpoints/$(printf 'step-%08d' "$half")" ||
  exit 1
losses_from "$dir/full/metrics.jsonl" "$half" > "$dir/full.losses"
losses_from "$dir/resumed/metrics.jsonl" "$half" > "$dir/resumed.losses"
if [ ! -s "$dir/full.losses" ]; then
  echo "resume: the run logged no loss after step $half (set log.every to at most $half)"
  exit 1
fi
if diff "$dir/full.losses" "$dir/resumed.losses" > "$dir/resume.diff"; then
  echo "resume: steps $((half + 1))-$steps of the run resumed at step $half equal the uninterrupted run's bit for bit" \
       "($(wc -l < "$dir/full.losses") metric lines)"
else
  echo "resume: the resumed run differs from the uninterrupted one:"
  head -4 "$dir/resume.diff"
  exit 1
fi
