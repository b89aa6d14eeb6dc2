#!/bin/bash
# Parity test: for each tiny config in tests/parity/configs, the engine's loss
# and every gradient (moe-train parity mode, in double) must match the PyTorch
# reference (tools/torch_reference.py, float64) to a relative error of 1e-5.
# Then two cases of a kind random weights never make: an expert that gets no
# token (its gradients zero in both), and a model trained a few steps with
# non-default settings and exported by moe-checkpoint, which the reference
# reads through the exported config.json.
#
#   tests/parity/run_parity.sh BUILD_DIR
#
# Exits 77 (ctest: skipped) when Debian's python3-torch is not installed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$(cd "${1:?usage: run_parity.sh BUILD_DIR}" && pwd)
python=/usr/bin/python3  # the system Python, where python3-torch lives
rtol=1e-5
seed=${PARITY_SEED:-7}  # the clamp check in test_reference.py reads the same variable

if ! "$python" -c "import torch, yaml, numpy" 2>/dev/null; then
    echo "SKIP: python3-torch not installed"
    exit 77
fi

"$python" "$here/test_reference.py"
# The PyTorch speed bar's model (tools/torch_bench.py) is the reference's network.
"$python" "$root/tools/torch_bench.py" --check --device cpu

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
make_inputs() {  # make_inputs NAME CONFIG: random weights and batch
    "$python" "$root/tools/torch_reference.py" --config "$2" --make-inputs --seed "$seed" \
        --weights "$work/$1.weights.safetensors" --batch "$work/$1.batch.safetensors"
}
# parity NAME ENGINE_CONFIG REFERENCE_CONFIG WEIGHTS: the engine's gradients and
# the reference's on NAME's batch; they must agree
parity() {
    "$build/moe-train" --config "$2" --set data.train=unused \
        --batch "$work/$1.batch.safetensors" --init-from "$4" \
        --dump-grads "$work/$1.engine.safetensors" --dtype f64
    "$python" "$root/tools/torch_reference.py" --config "$3" \
        --weights "$4" --batch "$work/$1.batch.safetensors" --out "$work/$1.torch.safetensors"
    if ! "$python" "$root/tools/compare_grads.py" --rtol "$rtol" --quiet \
        "$work/$1.engine.safetensors" "$work/$1.torch.safetensors"; then
        failed+=("$1")
    fi
}

for config in "$here"/configs/*.yaml; do
    name=$(basename "$config" .yaml)
    echo "== $name"
    make_inputs "$name" "$config"
    parity "$name" "$config" "$config" "$work/$name.weights.safetensors"
done

# An expert that gets no token in any layer has no autograd gradient; the
# reference must write zeros for it, as the engine does.
for name in token_id_top1 learned_top1; do
    config=$here/configs/$name.yaml
    echo "== $name, the last expert idle"
    make_inputs "$name.idle" "$config"
    "$python" "$here/idle_expert.py" --config "$config" \
        --weights "$work/$name.idle.weights.safetensors" --batch "$work/$name.idle.batch.safetensors"
    parity "$name.idle" "$config" "$config" "$work/$name.idle.weights.safetensors"
    "$python" "$here/idle_expert.py" --config "$config" --check "$work/$name.idle.engine.safetensors" ||
        failed+=("$name.idle (not idle)")
done

# A model trained a few steps with settings other than the defaults, exported;
# the reference takes its config.json, the engine the training config.
echo "== exported checkpoint"
config=$here/export.yaml
"$build/moe-shards" --out "$work/data" --val-every 10 "$root/README.md" > /dev/null
"$build/moe-train" --config "$config" --set data.train="$work/data/train_*.bin" \
    --set run.out_dir="$work/run" > "$work/train.log" 2>&1 || { cat "$work/train.log"; exit 1; }
"$build/moe-checkpoint" export "$work/run" --out "$work/exported"
make_inputs exported "$config"  # the batch; the trained weights replace the random ones
parity exported "$config" "$work/exported/config.json" "$work/exported/model.safetensors"

if ((${#failed[@]})); then
    echo "parity FAILED for: ${failed[*]}"
    exit 1
fi
echo "parity: all configs agree to rtol $rtol"
