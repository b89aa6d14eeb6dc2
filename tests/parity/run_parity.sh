#!/bin/bash
# Parity test: for each tiny config in tests/parity/configs, the engine's loss
# and every gradient (moe-train parity mode, in double) must match the PyTorch
# reference (tools/torch_reference.py, float64) to a relative error of 1e-5.
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for config in "$here"/configs/*.yaml; do
    name=$(basename "$config" .yaml)
    echo "== $name"
    "$python" "$root/tools/torch_reference.py" --config "$config" --make-inputs --seed "$seed" \
        --weights "$work/$name.weights.safetensors" --batch "$work/$name.batch.safetensors"
    "$build/moe-train" --config "$config" --set data.train=unused \
        --batch "$work/$name.batch.safetensors" --init-from "$work/$name.weights.safetensors" \
        --dump-grads "$work/$name.engine.safetensors" --dtype f64
    "$python" "$root/tools/torch_reference.py" --config "$config" \
        --weights "$work/$name.weights.safetensors" --batch "$work/$name.batch.safetensors" \
        --out "$work/$name.torch.safetensors"
    if ! "$python" "$root/tools/compare_grads.py" --rtol "$rtol" --quiet \
        "$work/$name.engine.safetensors" "$work/$name.torch.safetensors"; then
        failed+=("$name")
    fi
done

if ((${#failed[@]})); then
    echo "parity FAILED for: ${failed[*]}"
    exit 1
fi
echo "parity: all configs agree to rtol $rtol"
