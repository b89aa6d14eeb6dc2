#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test this machine can run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --parity --cluster
scripts/build.sh
cd build
ctest --output-on-failure -L "unit|mpi|gpu|cluster|faults" -j "$(nproc --all)"
