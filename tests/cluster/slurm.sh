#!/usr/bin/env bash
# A real Slurm on this machine, configured for localhost by this test (Debian's
# slurm-wlm and munge; root needed), runs scripts/slurm/train.sbatch with the
# CPU backend and 2 tasks:
#   1. a job trains to its end, with checkpoints (ranks started by srun --mpi=pmix);
#   2. a second submission of the same run resumes it (train.steps raised;
#      ranks started by mpirun inside the allocation, as in the jobs after it);
#   3. the time-limit signal (USR1 to the batch script) makes the ranks save and
#      the job requeue itself; the restarted job finishes the run;
#   4. scancel of a running job (srun): its ranks save on SIGTERM, and the
#      last checkpoint verifies.
# Exit 77 (skipped) without root or without slurm/munge (scripts/setup.sh --cluster).
#   tests/cluster/slurm.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: slurm.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root to start slurmctld, slurmd and munged"
for t in slurmctld slurmd munged sbatch scontrol squeue scancel; do
  command -v "$t" >/dev/null || skip "$t missing: run scripts/setup.sh --cluster"
done

work=$(mktemp -d /tmp/moe-slurm-XXXXXX)
conf=$work/slurm.conf
host=$(hostname -s)
cleanup() {
  [ -f "$work/slurmd.pid" ] && kill "$(cat "$work/slurmd.pid")" 2>/dev/null
  [ -f "$work/slurmctld.pid" ] && kill "$(cat "$work/slurmctld.pid")" 2>/dev/null
  [ -f "$work/munged.pid" ] && kill "$(cat "$work/munged.pid")" 2>/dev/null
  sleep 1
  [ -n "${MOE_KEEP_WORK:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$work"/*.log "$work"/run/train.log; do [ -f "$f" ] && { echo "== $f"; tail -20 "$f"; }; done; exit 1; }

# munge with its own key and socket, so a system munge is left alone.
mkdir -p "$work/munge"
dd if=/dev/urandom of="$work/munge/key" bs=1024 count=1 status=none
chmod 700 "$work/munge"; chmod 400 "$work/munge/key"
munged --key-file="$work/munge/key" --socket="$work/munge/socket" --pid-file="$work/munged.pid" \
       --log-file="$work/munged.log" --seed-file="$work/munge/seed" --force
# The node's CPUs as slurmd detects them (hwloc): nproc would give OMP_NUM_THREADS
# when set, and a node of fewer CPUs than 2 tasks leaves every job pending.
cpus=$(slurmd -C | sed -n '1s/.* CPUs=\([0-9]*\) .*/\1/p')
[ -n "$cpus" ] || fail "slurmd -C printed no CPU count"
mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
cat > "$conf" <<CONF
ClusterName=moetest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits for its old credential to expire (default 120 s).
AuthInfo=socket=$work/munge/socket,cred_expire=5
CredType=cred/munge
SlurmctldPort=$((16800 + $$ % 1000))
SlurmdPort=$((17800 + $$ % 1000))
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=20
JobRequeue=1
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
mkdir -p "$work/state" "$work/spool"
export SLURM_CONF=$conf
slurmctld -f "$conf" -i
slurmd -f "$conf"
for _ in $(seq 60); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 0.5; done
sinfo -h -o %t | grep -q idle || fail "the node did not come up"

# Demo data and a small config: the tiny model, a few steps.
data=$work/data
mkdir -p "$data"
"$build/moe-shards" --out "$data" --val-every 10 /usr/share/common-licenses/* > /dev/null
cfg=$work/tiny.yaml
sed -e "s|data/fortunes/|$data/|" "$src/configs/tiny.yaml" > "$cfg"
run=$work/run
submit() {  # submit [sbatch options] -- [moe-train args]; prints the job id
  local opts=() ; while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done; shift
  MOE_CONFIG=$cfg MOE_RUN_DIR=$run MOE_EP=2 MOE_LAUNCHER=${launcher:-mpirun} MOE_BIN=$build/moe-train \
    sbatch --parsable --ntasks-per-node=2 --chdir="$work" --output="$work/job-%j.log" "${opts[@]}" \
    "$src/scripts/slurm/train.sbatch" --set optimizer.warmup_steps=5 --set eval.batches=2 --set log.every=10 "$@"
}
job_state() { scontrol show job -o "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
wait_gone() {  # until the job has ended for good (a requeued job passes through other states)
  for _ in $(seq 600); do
    case "$(job_state "$1")" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) return 0 ;; esac
    sleep 0.5
  done
  fail "job $1 has not ended (state $(job_state "$1"))"
}
latest_step() { sed 's/step-0*//' "$run/checkpoints/latest" 2>/dev/null || echo 0; }

# 1. a job to its end, its ranks started by srun through PMIx
job=$(launcher=srun submit -- --set train.steps=20 --set checkpoint.every=10 --set eval.every=0)
wait_gone "$job"
[ "$(latest_step)" = 20 ] || fail "job 1 ended without the step-20 checkpoint"
grep -q "layout: 2 ranks" "$run/train.log" || fail "job 1 did not run 2 ranks as one job"
echo "[$(date +%T)] ok: job $job trained 20 steps (srun --mpi=pmix)"

# 2. a second submission resumes (mpirun inside the allocation from here on)
job=$(submit -- --set train.steps=30 --set checkpoint.every=10 --set eval.every=0)
wait_gone "$job"
grep -q "resumed from .*step-00000020 at step 20" "$run/train.log" || fail "job 2 did not resume"
[ "$(latest_step)" = 30 ] || fail "job 2 did not reach step 30"
echo "[$(date +%T)] ok: job $job resumed at step 20 and trained to 30"

# 3. the time-limit signal: save, requeue, finish
job=$(submit -- --set train.steps=200 --set checkpoint.every=1000 --set eval.every=0)
for _ in $(seq 240); do grep -q "step    50/200" "$run/train.log" 2>/dev/null && break; sleep 0.5; done
scancel --batch --signal=USR1 "$job" || fail "cannot signal job $job"
for _ in $(seq 600); do grep -q "requeueing job $job" "$run/train.log" && break; sleep 0.5; done
grep -q "requeueing job $job" "$run/train.log" || fail "job $job did not requeue itself"
wait_gone "$job"
grep -q "stopped by a signal after step" "$run/train.log" || fail "the ranks did not stop with a checkpoint"
[ "$(latest_step)" = 200 ] || fail "the requeued job did not finish the run (latest: step $(latest_step))"
echo "[$(date +%T)] ok: job $job saved at the time-limit signal, requeued itself and finished"

# 4. scancel keeps the last good checkpoint
job=$(launcher=srun submit -- --set train.steps=2000 --set checkpoint.every=10 --set eval.every=0)
for _ in $(seq 600); do [ "$(latest_step)" -ge 240 ] && break; sleep 0.5; done
[ "$(latest_step)" -ge 240 ] || fail "job $job saved no checkpoint"
scancel "$job" || fail "cannot cancel job $job"
wait_gone "$job"
"$build/moe-checkpoint" inspect "$run" > "$work/inspect.log" 2>&1 || fail "the last checkpoint does not verify"
# srun's tasks get SIGTERM and KillWait to save (mpirun may kill its ranks sooner).
[ "$(grep -c "stopped by a signal" "$run/train.log")" = 2 ] || fail "the cancelled ranks did not save on SIGTERM"
echo "[$(date +%T)] ok: job $job cancelled at step $(latest_step), where its ranks saved; the checkpoint verifies"
echo PASS
