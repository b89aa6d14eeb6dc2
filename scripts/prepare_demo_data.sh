#!/usr/bin/env bash
# Turns the English text of Debian's `fortunes` package into token shards,
# once: byte-level under data/fortunes (configs/tiny.yaml), or with --bpe
# encoded by a BPE model of 1024 tokens trained on the same text under
# data/fortunes-bpe (configs/tiny-bpe.yaml; scripts/train_tokenizer.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") out=data/fortunes ;;
  --bpe) out=data/fortunes-bpe ;;
  *) echo "prepare: unknown option '$1' (--bpe)" >&2; exit 2 ;;
esac
[ -f "$out/stats.txt" ] && exit 0
src=/usr/share/games/fortunes
if [ ! -d "$src" ]; then
  echo "prepare: $src is missing: install Debian's 'fortunes' package (scripts/setup.sh does)" >&2
  exit 1
fi
# The plain text files: not the .dat indexes, not the .u8 duplicates, not links.
mapfile -t files < <(find "$src" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
rm -rf "$out"  # a run cut short leaves shards without stats.txt: start over
if [ "$out" = data/fortunes ]; then
  build/moe-shards --out "$out" "${files[@]}"
else
  scripts/train_tokenizer.sh "$out" 1024 "${files[@]}"
fi
