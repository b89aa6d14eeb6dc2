#!/usr/bin/env bash
# One command from a fresh machine to a trained demo model: installs what is
# missing, builds, prepares the demo data and trains configs/tiny.yaml on the
# CPU. Extra arguments go to moe-train (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/prepare_demo_data.sh
build/moe-train --config configs/tiny.yaml "$@"
entropy=$(awk '/unigram_entropy_nats/ {print $2}' data/fortunes/stats.txt)
echo "unigram entropy of the training text: $entropy nats/token (what a model blind to context reaches)"
