#!/usr/bin/env bash
# Trains a config across machines listed in an Open MPI hostfile, one rank per
# GPU (or per core group on CPUs), without a scheduler:
#
#   scripts/launch_hostfile.sh HOSTFILE RANKS_PER_NODE CONFIG [moe-train args...]
#
# HOSTFILE lines are `host slots=N`. Every host needs the same paths (a shared
# filesystem, or the same checkout and data everywhere) and passwordless ssh
# from this one (MOE_RSH_AGENT replaces ssh, e.g. scripts/netns_agent.sh).
# The run goes to runs/<config name>-<date> unless MOE_RUN_DIR is set, and
# continues from its newest checkpoint when that directory holds one.
# Variables: MOE_EP (parallel.expert_parallel), MOE_RUN_DIR, MOE_BIN,
# MOE_RSH_AGENT, MOE_IFACE (the network for MPI's own traffic, e.g. eth0 or
# 10.0.0.0/16), OMP_NUM_THREADS, and NCCL_* (passed to every rank as set).
set -euo pipefail
hostfile=${1:?usage: launch_hostfile.sh HOSTFILE RANKS_PER_NODE CONFIG [args]}
per_node=${2:?usage: launch_hostfile.sh HOSTFILE RANKS_PER_NODE CONFIG [args]}
config=${3:?usage: launch_hostfile.sh HOSTFILE RANKS_PER_NODE CONFIG [args]}
shift 3
[ -f "$hostfile" ] || { echo "launch_hostfile: no hostfile '$hostfile'" >&2; exit 2; }
nodes=$(grep -cv '^\s*\(#\|$\)' "$hostfile")
run_dir=${MOE_RUN_DIR:-runs/$(basename "$config" .yaml)-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$run_dir"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
flags=(--hostfile "$hostfile" -np $((nodes * per_node)) --map-by "ppr:${per_node}:node" --bind-to none
       -x OMP_NUM_THREADS)
for v in $(env | sed -n 's/^\(NCCL_[A-Z0-9_]*\)=.*/\1/p'); do flags+=(-x "$v"); done
[ -n "${MOE_RSH_AGENT:-}" ] && flags+=(--mca plm_rsh_agent "$MOE_RSH_AGENT")
[ -n "${MOE_IFACE:-}" ] && flags+=(--mca btl_tcp_if_include "$MOE_IFACE" --mca oob_tcp_if_include "$MOE_IFACE")
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
args=(--config "$config" --set run.out_dir="$run_dir" --resume auto)
[ -n "${MOE_EP:-}" ] && args+=(--set parallel.expert_parallel="$MOE_EP")

echo "launch_hostfile: $nodes node(s) x $per_node ranks, run directory $run_dir"
. "$(dirname "$0")/mpirun_stoppable.sh"  # Ctrl-C or SIGTERM: the ranks save and the launch exits 3
mpirun_stoppable "${flags[@]}" "${MOE_BIN:-build/moe-train}" "${args[@]}" "$@" > >(tee -a "$run_dir/train.log") 2>&1
