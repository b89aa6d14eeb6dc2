#!/usr/bin/python3
"""Compares two gradient files (safetensors, as written by `moe-train
--dump-grads` and tools/torch_reference.py).

  compare_grads.py TESTED.safetensors REFERENCE.safetensors [--rtol 1e-5]

Per tensor it reports the max abs difference and the relative error
||a - b|| / ||b|| (b: the reference). The losses in the metadata ("loss",
"cross_entropy", "aux", those present in both) must agree to rtol relative
(absolute where the reference is 0). Exits 1 if anything fails, with one
line per failure.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

LOSS_KEYS = ("loss", "cross_entropy", "aux")


def relative_error(a, b):
    diff = np.linalg.norm(a - b)
    ref = np.linalg.norm(b)
    if ref == 0:
        return 0.0 if diff == 0 else float("inf")
    return diff / ref


def compare(tested_path, reference_path, rtol, verbose=True):
    """Returns the list of failure lines (empty: all agree)."""
    tested, tested_meta = safetensors_io.read(tested_path)
    reference, reference_meta = safetensors_io.read(reference_path)
    failures = []
    worst = 0.0
    for name in sorted(set(tested) | set(reference)):
        if name not in tested or name not in reference:
            where = tested_path if name not in tested else reference_path
            failures.append(f"FAIL {name}: missing from {where}")
            continue
        a, b = tested[name].astype(np.float64), reference[name].astype(np.float64)
        if a.shape != b.shape:
            failures.append(f"FAIL {name}: shape {list(a.shape)} vs reference {list(b.shape)}")
            continue
        rel = relative_error(a, b)
        worst = max(worst, rel)
        max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
        line = f"{name}: max abs diff {max_abs:.3e}, rel err {rel:.3e}, |ref| {np.linalg.norm(b):.3e}"
        if verbose:
            print(line)
        if not rel <= rtol:
            failures.append("FAIL " + line)
    for key in LOSS_KEYS:
        if key not in tested_meta or key not in reference_meta:
            continue
        a, b = float(tested_meta[key]), float(reference_meta[key])
        err = abs(a - b) / abs(b) if b != 0 else abs(a - b)
        line = f"{key}: {a!r} vs reference {b!r}, rel err {err:.3e}"
        if verbose:
            print(line)
        if not err <= rtol:
            failures.append("FAIL " + line)
    if "loss" not in tested_meta or "loss" not in reference_meta:
        failures.append("FAIL loss: metadata 'loss' missing from " +
                        (tested_path if "loss" not in tested_meta else reference_path))
    print(f"max gradient rel err {worst:.3e} over {len(reference)} tensors")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tested")
    ap.add_argument("reference")
    ap.add_argument("--rtol", type=float, default=1e-5, help="largest accepted relative error")
    ap.add_argument("--quiet", action="store_true", help="print only the failures")
    args = ap.parse_args()
    failures = compare(args.tested, args.reference, args.rtol, verbose=not args.quiet)
    for line in failures:
        print(line)
    if failures:
        print(f"{len(failures)} mismatches above rtol {args.rtol}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
