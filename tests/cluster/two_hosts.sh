#!/bin/bash
# Two-node test on one machine: two network namespaces joined by a veth pair
# are two hosts, each with its own address and hostname; mpirun, started in
# host A, reaches host B through scripts/netns_agent.sh (in place of ssh) and
# trains the demo model with expert_parallel=2, one rank per host, over TCP
# between them. The 30 training losses must equal, as text, those of the same
# training with both ranks on one host (host A: also over TCP, and on any
# machine, even one whose only interface is lo, which Open MPI's TCP skips).
#
#   tests/cluster/two_hosts.sh BUILD_DIR
#
# Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN: `ip netns`, `unshare --uts`);
# exits 77 (ctest: skipped) where namespaces cannot be made, 1 on failure.
# Everything it makes (namespaces, processes in them, files under $TMPDIR) is
# removed on exit; MOE_KEEP_WORK=1 keeps the files (logs, runs).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$(cd "${1:?usage: two_hosts.sh BUILD_DIR}" && pwd)
agent=$root/scripts/netns_agent.sh
steps=30

skip() { echo "SKIP: two_hosts: $*"; exit 77; }
fail() { echo "FAIL: two_hosts: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || skip "not root: network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN"
for tool in ip unshare hostname mpirun; do
    command -v "$tool" >/dev/null || skip "'$tool' not found"
done

# Unique per run, so that parallel runs do not clash.
id=$$
subnet=10.77.$((id % 256))
ns_a=moe-a-$id ns_b=moe-b-$id
addr_a=$subnet.1 addr_b=$subnet.2
work=$(mktemp -d "${TMPDIR:-/tmp}/moe-two-hosts.XXXXXX")

child=  # the command running in host A, if any
cleanup() {
    local rc=$? pids try
    set +e
    case $rc in
        0 | 1 | 77 | 130 | 143) ;;
        *) echo "FAIL: two_hosts: a command failed (exit $rc)"; rc=1 ;;
    esac
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null  # timeout(1): passes it on to mpirun
    for try in 1 2 3 4 5 6 7 8 9 10; do  # then whatever is left in the hosts
        pids=$(for ns in "$ns_a" "$ns_b"; do [ -e "/run/netns/$ns" ] && ip netns pids "$ns"; done 2>/dev/null)
        [ -z "$pids" ] && break
        # shellcheck disable=SC2086  # one word a pid
        if ((try < 10)); then kill -TERM $pids 2>/dev/null; sleep 0.5; else kill -KILL $pids 2>/dev/null; fi
    done
    for ns in "$ns_a" "$ns_b"; do
        [ -e "/run/netns/$ns" ] && ip netns del "$ns"  # takes its end of the veth pair along
    done
    if [ "${MOE_KEEP_WORK:-0}" = 1 ]; then echo "two_hosts: files kept in $work"; else rm -rf "$work"; fi
    exit $rc
}
trap cleanup EXIT
trap 'echo "two_hosts: line $LINENO failed" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- two hosts --------------------------------------------------------------
ip netns add "$ns_a" 2>"$work/netns.err" || skip "cannot create a network namespace: $(cat "$work/netns.err")"
ip netns add "$ns_b"
ip netns exec "$ns_a" true 2>"$work/netns.err" || skip "cannot enter a network namespace: $(cat "$work/netns.err")"
unshare --uts true 2>"$work/netns.err" || skip "cannot create a UTS namespace: $(cat "$work/netns.err")"
ip -n "$ns_a" link add veth-a type veth peer name veth-b netns "$ns_b" 2>"$work/netns.err" ||
    skip "cannot create a veth pair: $(cat "$work/netns.err")"
ip -n "$ns_a" addr add "$addr_a/24" dev veth-a
ip -n "$ns_b" addr add "$addr_b/24" dev veth-b
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set veth-a up
ip -n "$ns_b" link set veth-b up
# Nothing joins the hosts but the veth pair: each has only lo and its veth.
for ns in "$ns_a" "$ns_b"; do
    links=$(ip -n "$ns" -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | sort | tr '\n' ' ')
    case $links in
        "lo veth-a " | "lo veth-b ") ;;
        *) fail "namespace $ns has links '$links', expected lo and one veth" ;;
    esac
done

# The agent's map: address -> namespace and hostname.
hosts=$work/hosts
printf '%s %s %s\n' "$addr_a" "$ns_a" "$ns_a" "$addr_b" "$ns_b" "$ns_b" >"$hosts"
export MOE_NETNS_HOSTS=$hosts
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

# in_host_a SECONDS LOG COMMAND...: runs COMMAND in host A (its namespace and
# hostname) for at most SECONDS, output to LOG. In the background, so that a
# signal to this script is handled at once.
in_host_a() {
    local limit=$1 log=$2
    shift 2
    # shellcheck disable=SC2016  # for the inner shell
    timeout -k 5 "$limit" ip netns exec "$ns_a" unshare --uts \
        sh -c 'hostname "$0" && exec "$@"' "$ns_a" "$@" >"$log" 2>&1 &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=
    return $rc
}
# shellcheck disable=SC2054  # commas inside arguments
mpi_flags=(--allow-run-as-root --bind-to none
           --mca btl tcp,self --mca btl_tcp_if_include "$subnet.0/24" --mca oob_tcp_if_include "$subnet.0/24"
           -x OMP_NUM_THREADS -x OMP_WAIT_POLICY)
two_hosts=(-np 2 --host "$addr_a:1,$addr_b:1" --mca plm_rsh_agent "$agent")

cd "$work"
show_log() { echo "---- $1"; tail -n 40 "$1"; }

# ---- each rank on its own host ----------------------------------------------
# shellcheck disable=SC2016  # expanded by the ranks' shells
probe='echo "rank $OMPI_COMM_WORLD_RANK on $(hostname) at $(ip -o -4 addr show scope global | awk "{ print \$4 }")"'
if ! in_host_a 30 probe.log mpirun "${mpi_flags[@]}" "${two_hosts[@]}" sh -c "$probe"; then
    show_log probe.log
    fail "mpirun through $agent did not start ranks in both namespaces"
fi
expected="rank 0 on $ns_a at $addr_a/24
rank 1 on $ns_b at $addr_b/24"
if [ "$(sort probe.log)" != "$expected" ]; then
    show_log probe.log
    fail "ranks are not one per host; expected:
$expected"
fi
sort probe.log

# ---- the demo, two hosts and one host ---------------------------------------
data=(/usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0)
[ -r "${data[0]}" ] && [ -r "${data[1]}" ] || data=("$root/README.md" "$root"/engine/*.cpp)
"$build/moe-shards" --out "$work/data" "${data[@]}" >shards.log 2>&1 || { show_log shards.log; fail "moe-shards"; }

train() {  # OUT_DIR: the training's command line, in the array `train`
    train=("$build/moe-train" --config "$root/configs/tiny.yaml" --set parallel.expert_parallel=2
           --set "train.steps=$steps" --set optimizer.warmup_steps=5 --set checkpoint.every=0 --set eval.every=0
           --set "data.train=$work/data/train_*.bin" --set data.val= --set "run.out_dir=$1")
}
veth_bytes() { ip netns exec "$ns_a" cat /sys/class/net/veth-a/statistics/tx_bytes; }

# Through the hostfile launcher users run (scripts/launch_hostfile.sh), one rank per host.
start=$SECONDS
sent_before=$(veth_bytes)
train "$work/two"
printf '%s slots=1\n%s slots=1\n' "$addr_a" "$addr_b" >hostfile
if ! in_host_a 90 two.log env MOE_RSH_AGENT="$agent" MOE_IFACE="$subnet.0/24" MOE_RUN_DIR="$work/two" \
        MOE_BIN="$build/moe-train" "$root/scripts/launch_hostfile.sh" hostfile 1 "${train[@]:2}"; then
    show_log two.log
    fail "training on two hosts failed"
fi
sent=$(( $(veth_bytes) - sent_before ))
grep -m 1 'layout:' two.log || true
echo "two hosts: $((SECONDS - start)) s, host A sent $((sent / 1024)) KiB over veth-a"
((sent > 1024 * 1024)) || fail "host A sent only $sent bytes to host B: the ranks did not talk over the veth"

start=$SECONDS
train "$work/one"
if ! in_host_a 90 one.log mpirun "${mpi_flags[@]}" -np 2 --host "$addr_a:2" "${train[@]}"; then
    show_log one.log
    fail "training on one host failed"
fi
echo "one host: $((SECONDS - start)) s"

losses() { grep -o '"step": [0-9]*, "loss": [^,]*' "$1/metrics.jsonl"; }
losses "$work/two" >two.losses || true
losses "$work/one" >one.losses || true
n=$(wc -l <one.losses)
[ "$n" -eq "$steps" ] || fail "one-host run logged $n losses, expected $steps"
if ! diff one.losses two.losses >losses.diff; then
    head -n 20 losses.diff
    fail "two-host losses differ from one-host losses (< one host, > two hosts)"
fi
echo "PASS: two_hosts: ep=2 on two hosts ($addr_a, $addr_b) matches one host over $steps steps: $(tail -n 1 two.losses)"
