#!/usr/bin/python3
"""Makes a parity case in which the last expert gets no token in any layer, as
in a trained model whose router has given an expert up, and checks that the
engine saw it so. Run by tests/parity/run_parity.sh.

  idle_expert.py --config C.yaml --weights W.safetensors --batch B.safetensors   # rewrites W or B
  idle_expert.py --config C.yaml --check G.safetensors                           # the engine's gradients

token_id router: the batch's input ids that map to the last expert move to the
id before (another expert). Learned top-1 router: in every layer row 1 of the
router is minus row 0 and the other rows are 0, so one of experts 0 and 1 has
the largest logit, never less than the others' 0 (ties go to the lower index).
--check: the last expert's gradients are exactly zero, every other expert's not.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import safetensors_io  # noqa: E402
import torch_reference as ref  # noqa: E402


def make_idle(m, weights_path, batch_path):
    moe = m["moe"]
    E = moe["num_experts"]
    if moe["router"] == "token_id":
        batch, meta = safetensors_io.read(batch_path)
        ids = batch["inputs"]
        batch["inputs"] = np.where(ids % E == E - 1, ids - 1, ids).astype(np.int32)
        safetensors_io.write(batch_path, batch, meta)
    elif moe["top_k"] == 1:
        weights, meta = safetensors_io.read(weights_path)
        for l in range(m["num_layers"]):
            router = weights[f"layers.{l}.moe.router.weight"]
            router[1] = -router[0]
            router[2:] = 0
        safetensors_io.write(weights_path, weights, meta)
    else:
        sys.exit("idle_expert.py: needs the token_id router or a learned top-1 router")


def check(m, grads_path):
    grads, _ = safetensors_io.read(grads_path)
    E = m["moe"]["num_experts"]
    for l in range(m["num_layers"]):
        for e in range(E):
            for w in ("w_gate", "w_up", "w_down"):
                name = f"layers.{l}.moe.experts.{e}.{w}"
                zero = not np.any(grads[name])
                if zero != (e == E - 1):
                    sys.exit(f"idle_expert.py: {grads_path}: '{name}' has {'a zero' if zero else 'a non-zero'} "
                             f"gradient: expert {E - 1} must get no token and the others some")
    print(f"idle_expert.py: expert {E - 1} got no token in any layer (zero gradients), the others got some")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the parity config (YAML)")
    ap.add_argument("--weights", help="weights to rewrite (learned router)")
    ap.add_argument("--batch", help="batch to rewrite (token_id router)")
    ap.add_argument("--check", metavar="GRADS", help="gradients to check instead")
    args = ap.parse_args()
    m = ref.load_config(args.config)["model"]
    if args.check:
        check(m, args.check)
    elif args.weights and args.batch:
        make_idle(m, args.weights, args.batch)
    else:
        ap.error("pass --weights and --batch, or --check")


if __name__ == "__main__":
    main()
