#!/usr/bin/env python3
"""Nsight Compute's per-launch CSV as one line a kernel.

    ncu --csv --log-file ncu.csv --kernel-name-base demangled --metrics METRICS PROGRAM ...
    python3 tools/ncu_summary.py ncu.csv [--top N]

METRICS (gpu_session.sh's ncu stage gives these; a missing one prints as -):
gpu__time_duration.sum, dram__bytes_read.sum, dram__bytes_write.sum,
sm__throughput.avg.pct_of_peak_sustained_elapsed,
gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed,
sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed,
sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,
sm__warps_active.avg.pct_of_peak_sustained_active,
smsp__warp_issue_stalled_barrier_per_warp_active.pct, launch__registers_per_thread.

A kernel is its demangled name less namespaces and parameters (template
arguments kept: they tell the tile families and access widths apart). Per
kernel: launches, mean time a launch, DRAM bytes read and written a launch
and their rate, and the means of memory and SM throughput (% of peak), the
tensor pipe's busy cycles (% of peak: how well a tensor-core kernel keeps it
fed), the transcendental pipe's issue rate (% of peak: the exp2 of the
attention forward's softmax, which at head size 64 asks as many cycles of it
as of the tensor pipe), achieved occupancy (% of the warps an SM holds), the warps' issue slots
stalled at a block barrier (%: what kernels whose warps go in step lose)
and registers a thread; the heaviest kernels (total time) first. ncu scales units (usecond, Mbyte):
they are read back to seconds and bytes (ncu's Kbyte is 1000 bytes).
"""
import argparse
import csv
import re
import sys
from collections import defaultdict, namedtuple

TIME = "gpu__time_duration.sum"
READ, WRITE = "dram__bytes_read.sum", "dram__bytes_write.sum"
MEMORY = "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"
SM = "sm__throughput.avg.pct_of_peak_sustained_elapsed"
TENSOR = "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed"
TRANSCENDENTAL = "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
BARRIER = "smsp__warp_issue_stalled_barrier_per_warp_active.pct"
REGISTERS = "launch__registers_per_thread"

# A kernel's line: launches, then each metric's mean over them (None: not given).
Row = namedtuple("Row", "kernel n time read write memory sm tensor transcendental occupancy barrier registers")

SCALE = {
    "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0,
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
}


def value(unit, text):
    """A metric's value in seconds, bytes or as given (%, registers)."""
    number = float(text.replace(",", ""))
    return number * SCALE.get(unit, 1.0)


def kernel_name(demangled):
    """'void moe::(anonymous namespace)::f<A, 8>(int, float*)' -> 'f<A, 8>'."""
    name = re.sub(r"^void ", "", demangled.strip())
    depth, cut = 0, len(name)
    for i in range(len(name) - 1, -1, -1):  # the parameter list: the last top-level (...)
        if name[i] == ")":
            depth += 1
        elif name[i] == "(":
            depth -= 1
            if depth == 0:
                cut = i
                break
    name = name[:cut]
    name = re.sub(r"\(anonymous namespace\)::", "", name)
    return re.sub(r"\b[A-Za-z_][A-Za-z0-9_]*::", "", name)


def launches(path):
    """{launch id: (kernel, {metric: value})} from ncu's CSV (lines before its header skipped)."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"ncu_summary: {path} has no ncu CSV header (a line starting \"ID\"): was ncu given --csv?")
    out = {}
    for row in csv.DictReader(lines[start:]):
        if not row.get("ID") or row.get("Metric Value") is None:
            continue
        kernel, metrics = out.setdefault(row["ID"], (kernel_name(row["Kernel Name"]), {}))
        try:
            metrics[row["Metric Name"]] = value(row.get("Metric Unit", ""), row["Metric Value"])
        except ValueError:
            pass  # a value ncu could not take ("n/a")
    return out


def summarize(per_launch):
    kernels = defaultdict(lambda: {"n": 0, "sums": defaultdict(float), "counts": defaultdict(int)})
    for kernel, metrics in per_launch.values():
        k = kernels[kernel]
        k["n"] += 1
        for name, v in metrics.items():
            k["sums"][name] += v
            k["counts"][name] += 1
    rows = []
    for kernel, k in kernels.items():
        def mean(name):
            return k["sums"][name] / k["counts"][name] if k["counts"][name] else None
        rows.append(Row(kernel, k["n"], mean(TIME), mean(READ), mean(WRITE), mean(MEMORY), mean(SM), mean(TENSOR),
                        mean(TRANSCENDENTAL), mean(OCCUPANCY), mean(BARRIER), mean(REGISTERS)))
    rows.sort(key=lambda r: -(r.n * (r.time or 0)))
    return rows


def cell(v, fmt, scale=1.0):
    """v scaled in format fmt ('W.Pf'), or '-' as wide where it was not given."""
    return format(v * scale, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu --csv output (its --log-file)")
    ap.add_argument("--top", type=int, default=0, help="print only the N heaviest kernels")
    a = ap.parse_args()
    rows = summarize(launches(a.csv))
    total = sum(r.n * (r.time or 0) for r in rows)
    print(f"{'kernel':<60} {'calls':>5} {'us/call':>9} {'MB read':>9} {'MB written':>10} {'GB/s':>7} "
          f"{'mem %':>6} {'SM %':>6} {'TC %':>6} {'XU %':>6} {'occ %':>6} {'bar %':>6} {'regs':>5}")
    for r in rows[:a.top or None]:
        moved = r.read + r.write if r.read is not None and r.write is not None else None
        rate = moved / r.time if moved is not None and r.time else None
        print(f"{r.kernel[:60]:<60} {r.n:>5} {cell(r.time, '9.1f', 1e6)} {cell(r.read, '9.2f', 1e-6)} "
              f"{cell(r.write, '10.2f', 1e-6)} {cell(rate, '7.0f', 1e-9)} {cell(r.memory, '6.1f')} "
              f"{cell(r.sm, '6.1f')} {cell(r.tensor, '6.1f')} {cell(r.transcendental, '6.1f')} "
              f"{cell(r.occupancy, '6.1f')} {cell(r.barrier, '6.1f')} {cell(r.registers, '5.0f')}")
    print(f"{len(rows)} kernels, {sum(r.n for r in rows)} launches, {total * 1e3:.3f} ms in all")


if __name__ == "__main__":
    main()
