#!/usr/bin/env bash
# Turns the English text of Debian's `fortunes` package into byte-level token
# shards under data/fortunes (train and validation), once.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/fortunes
[ -f "$out/stats.txt" ] && exit 0
src=/usr/share/games/fortunes
if [ ! -d "$src" ]; then
  echo "prepare: $src is missing: install Debian's 'fortunes' package (scripts/setup.sh does)" >&2
  exit 1
fi
# The plain text files: not the .dat indexes, not the .u8 duplicates, not links.
mapfile -t files < <(find "$src" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
rm -rf "$out"  # a run cut short leaves shards without stats.txt: start over
build/moe-shards --out "$out" "${files[@]}"
