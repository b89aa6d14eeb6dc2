#!/usr/bin/env bash
# Trains a SentencePiece BPE model on text files (spm_train) and turns the
# text into token shards with it (moe-shards --tokenizer):
#
#   scripts/train_tokenizer.sh OUT_DIR VOCAB FILE...
#
# writes OUT_DIR/tokenizer.model (OUT_DIR/tokenizer.vocab lists its pieces),
# then OUT_DIR/train_*.bin, val_*.bin, tokenizer.txt and stats.txt. Train on
# them with data.train/val at the shards, data.tokenizer at the model and
# model.vocab_size VOCAB. The model gives the text back exactly: no
# normalization, spaces and newlines kept, and a character it has no piece
# for spelt in bytes (byte fallback: 256 of the VOCAB pieces). Needs
# spm_train (Debian's sentencepiece) and build/moe-shards built with
# SentencePiece (libsentencepiece-dev); scripts/setup.sh installs both.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  echo "usage: scripts/train_tokenizer.sh OUT_DIR VOCAB FILE..." >&2
  exit 2
fi
out=$1 vocab=$2
shift 2
command -v spm_train >/dev/null || { echo "train_tokenizer: spm_train is missing: install Debian's 'sentencepiece' package (scripts/setup.sh does)" >&2; exit 1; }
[ -x build/moe-shards ] || { echo "train_tokenizer: build/moe-shards is missing: build first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$out"
input=$(IFS=,; echo "$*")
# Lines are spm_train's sentences: at most 2M of them are sampled (seeded)
# from a larger corpus. One BPE run is deterministic for the same input.
if ! spm_train --input="$input" --model_prefix="$out/tokenizer" --model_type=bpe --vocab_size="$vocab" \
      --normalization_rule_name=identity --add_dummy_prefix=false --remove_extra_whitespaces=false \
      --byte_fallback=true --character_coverage=1.0 --split_digits=true --allow_whitespace_only_pieces=true \
      --bos_id=-1 --eos_id=-1 --input_sentence_size=2000000 --shuffle_input_sentence=true --random_seed=1 \
      --num_threads="$(nproc)" --minloglevel=1 >"$out/spm_train.log" 2>&1; then
  tail -5 "$out/spm_train.log" >&2
  echo "train_tokenizer: spm_train failed (its log: $out/spm_train.log)" >&2
  exit 1
fi
rm -f "$out/spm_train.log"
build/moe-shards --out "$out" --tokenizer "$out/tokenizer.model" "$@"
