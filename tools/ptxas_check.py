#!/usr/bin/env python3
"""What ptxas makes of every CUDA kernel, checked without a GPU.

    python3 tools/ptxas_check.py --nvcc NVCC [--arch sm_90a] [--budgets FILE] [-I DIR]... SOURCE.cu...

Each source is compiled to PTX (nvcc -ptx) and the PTX to machine code
(ptxas -v, which reports each kernel's registers, stack frame and spills).
Every kernel must come out with no spill stores or loads and no stack frame,
and ptxas must warn of nothing, nor report any of its wgmma notes (C75xx:
wgmma serialized, as where a branch merges around products in flight, or a
warpgroup.arrive it had to inject), which cost the wgmma kernels their
overlap. A kernel of the WarpgroupMma
tile family must hold wgmma.mma_async and no mma.sync, one of the WarpMma
family the reverse: the family a kernel is named for is the one it runs.

FILE lists kernels (as tools/ncu_summary.py names them: template arguments
kept) with the blocks an SM must hold as far as registers go: 65536 registers
an SM, allocated per warp in units of 256 (8 a thread), and 2048 threads an
SM; the block size is the kernel's __launch_bounds__ (PTX .maxntid), which a
listed kernel must have. Shared memory may allow fewer blocks; what is
guarded here is that a change does not cost occupancy through registers
unnoticed. A listed kernel that no source compiles is an error (a stale
line). Prints a line per listed kernel and a summary; exits 1 on any
failure, naming each.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncu_summary import kernel_name  # noqa: E402

REGISTERS_AN_SM, THREADS_AN_SM, BLOCKS_AN_SM = 65536, 2048, 32
FAMILIES = {  # tile family in a kernel's name: (instruction it must hold, one it must not)
    "WarpgroupMma": ("wgmma.mma_async", "mma.sync"),
    "WarpMma": ("mma.sync", "wgmma.mma_async"),
}


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"ptxas_check: {' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def demangle(names):
    if not names:
        return {}
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        sys.exit("ptxas_check: c++filt (binutils) is not on PATH; it names the kernels")
    return dict(zip(names, out.splitlines()))


def ptx_entries(ptx):
    """{mangled name: (body, threads or None)} of the PTX's kernels."""
    out = {}
    pieces = re.split(r"^(?:\.(?:visible|weak)\s+)*\.entry\s+([^\s(]+)\(", ptx, flags=re.M)
    for name, body in zip(pieces[1::2], pieces[2::2]):
        threads = re.search(r"^\.maxntid (\d+), (\d+), (\d+)", body, flags=re.M)
        out[name] = (body, None if threads is None else
                     int(threads.group(1)) * int(threads.group(2)) * int(threads.group(3)))
    return out


def ptxas_entries(report):
    """{mangled name: {registers, stack, spill_stores, spill_loads}} from ptxas -v, and its warnings."""
    out, current = {}, None
    for line in report.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
    warnings = [line for line in report.splitlines() if "warning" in line.lower() or re.search(r"\(C75\d\d\)", line)]
    return out, warnings


def blocks_by_registers(registers, threads):
    warp_registers = (registers + 7) // 8 * 8 * 32
    warps = (threads + 31) // 32
    return min(REGISTERS_AN_SM // (warp_registers * warps), THREADS_AN_SM // (warps * 32), BLOCKS_AN_SM)


def read_budgets(path):
    """[(kernel, blocks, line number)] of FILE: 'kernel<...>  BLOCKS  # why' lines."""
    out = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            m = re.fullmatch(r"(.+?)\s+(\d+)", text)
            if not m:
                sys.exit(f"ptxas_check: {path}:{number}: expected 'kernel BLOCKS', got '{text}'")
            out.append((m.group(1), int(m.group(2)), number))
    return out


def compile_source(args, source, work):
    base = os.path.join(work, os.path.basename(source))
    flags = ["-O3", "-DNDEBUG", "-std=c++17", "--expt-relaxed-constexpr", "-DMOE_HAVE_CUDA=1"]
    flags += [f"-I{d}" for d in args.include]
    run([args.nvcc, *flags, f"-arch={args.arch}", "-ptx", source, "-o", base + ".ptx"])
    ptxas = os.path.join(os.path.dirname(args.nvcc), "ptxas")
    report = run([ptxas, f"-arch={args.arch}", "-v", base + ".ptx", "-o", base + ".cubin"])
    with open(base + ".ptx") as f:
        return f.read(), report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nvcc", required=True)
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--budgets")
    parser.add_argument("-I", dest="include", action="append", default=[])
    parser.add_argument("sources", nargs="+")
    args = parser.parse_args()

    failures, kernels = [], {}  # kernels: short name -> [(resources, threads)], one a source that has it
    with tempfile.TemporaryDirectory() as work:
        for source in args.sources:
            ptx, report = compile_source(args, source, work)
            entries = ptx_entries(ptx)
            resources, warnings = ptxas_entries(report)
            failures += [f"{source}: ptxas: {w.strip()}" for w in warnings]
            names = demangle(list(entries))
            for mangled, (body, threads) in entries.items():
                name = kernel_name(names[mangled])
                r = resources.get(mangled)
                if r is None or "registers" not in r:
                    failures.append(f"{source}: {name}: no ptxas figures for it")
                    continue
                kernels.setdefault(name, []).append((r, threads))
                if r["spill_stores"] or r["spill_loads"]:
                    failures.append(f"{name}: spills ({r['spill_stores']} bytes stored, {r['spill_loads']} loaded) "
                                    f"at {r['registers']} registers")
                if r["stack"]:
                    failures.append(f"{name}: a {r['stack']}-byte stack frame (local memory)")
                for family, (must, must_not) in FAMILIES.items():
                    if re.search(rf"\b{family}\b", name):
                        if must not in body:
                            failures.append(f"{name}: no {must} in its PTX")
                        if must_not in body:
                            failures.append(f"{name}: {must_not} in its PTX")

    for kernel, blocks, number in read_budgets(args.budgets) if args.budgets else []:
        if kernel not in kernels:
            failures.append(f"{args.budgets}:{number}: {kernel}: no source compiles it (a stale line?)")
            continue
        if len(kernels[kernel]) > 1:
            failures.append(f"{args.budgets}:{number}: {kernel}: several sources compile a kernel of that name")
            continue
        r, threads = kernels[kernel][0]
        if threads is None:
            failures.append(f"{kernel}: listed in {args.budgets} but has no __launch_bounds__ to size its block")
            continue
        held = blocks_by_registers(r["registers"], threads)
        print(f"{kernel:<50} {r['registers']:>3} registers x {threads:>4} threads: blocks an SM {held} "
              f"(at least {blocks})")
        if held < blocks:
            failures.append(f"{kernel}: {r['registers']} registers at {threads} threads leave room for {held} "
                            f"blocks an SM, {args.budgets}:{number} asks {blocks}")

    compiled = [(name, r["registers"]) for name, found in kernels.items() for r, _ in found]
    most = max(compiled, key=lambda item: item[1], default=None)
    print(f"{len(compiled)} kernels from {len(args.sources)} sources for {args.arch}"
          + (f"; most registers: {most[0]} ({most[1]})" if most else ""))
    for failure in failures:
        print(f"FAIL {failure}")
    if failures:
        sys.exit(1)
    print("no spills, no stack frames, no ptxas warnings, each tile family's instructions where named")


if __name__ == "__main__":
    main()
