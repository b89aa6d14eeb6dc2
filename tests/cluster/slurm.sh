#!/usr/bin/env bash
# A real Slurm on this machine, configured for localhost by this test (Debian's
# slurm-wlm and munge; root needed), runs scripts/slurm/train.sbatch with the
# CPU backend and 2 tasks:
#   0. a job the node cannot run (more tasks than CPUs) is reported at once with
#      its pending reason (as is any job pending 30 s: the node is otherwise idle);
#   1. a job trains to its end, with checkpoints (ranks started by srun --mpi=pmix);
#   2. a second submission of the same run resumes it (train.steps raised;
#      ranks started by mpirun inside the allocation, as in the jobs after it);
#   3. the time-limit signal (USR1 to the batch script) makes the ranks save and
#      the job requeue itself; the restarted job finishes the run;
#   4. scancel of a running job (srun): its ranks save on SIGTERM, and the
#      last checkpoint verifies.
# Everything it started is stopped on every path: after 240 s (MOE_SLURM_DEADLINE_S)
# by a watchdog, since ctest's TIMEOUT kills with SIGKILL; and what a run killed
# that way left running is stopped by the next run.
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

# Every process of the run in work directory $1, this run's or an earlier one's:
# the job steps with their tasks, then the daemons. Returns 1 when none is left.
stop_all() {
  local dir=$1 pid d steps daemons
  # slurmd hands its config path to each slurmstepd; a step's tasks descend from it.
  tree=()
  for pid in $(pgrep -x slurmstepd); do
    tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ" | grep -qxF "SLURM_CONF=$dir/slurm.conf" && add_tree "$pid"
  done
  steps=("${tree[@]}") tree=()
  for d in slurmd slurmctld munged; do
    pid=$(cat "$dir/$d.pid" 2>/dev/null) || continue
    # a stale pid file's pid may have been reused: the daemon names a file under $dir
    tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "$dir/" && add_tree "$pid"
  done
  daemons=("${tree[@]}")
  [ $((${#steps[@]} + ${#daemons[@]})) -gt 0 ] || return 1
  [ ${#steps[@]} -eq 0 ] || kill -KILL "${steps[@]}" 2>/dev/null || true
  [ ${#daemons[@]} -gt 0 ] || return 0
  kill "${daemons[@]}" 2>/dev/null || true
  for _ in $(seq 10); do kill -0 "${daemons[@]}" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "${daemons[@]}" 2>/dev/null || true
}
add_tree() { local c; tree+=("$1"); for c in $(pgrep -P "$1"); do add_tree "$c"; done; }

# An earlier run killed before its cleanup (ctest's TIMEOUT kills with SIGKILL)
# leaves its daemons, and maybe jobs, running: stop those whose slurm.sh is gone.
for dir in /tmp/moe-slurm-*; do
  [ -d "$dir" ] || continue
  if [ -f "$dir/owner.pid" ]; then
    tr '\0' ' ' 2>/dev/null < "/proc/$(cat "$dir/owner.pid")/cmdline" | grep -q "cluster/slurm.sh" && continue
  else  # from before owner.pid: no run outlives ctest's 300 s TIMEOUT
    [ -n "$(find "$dir" -maxdepth 0 -mmin +10)" ] || continue
  fi
  # a directory kept by MOE_KEEP_WORK has nothing running and stays
  stop_all "$dir" && { echo "stopped what an earlier run left running in $dir"; rm -rf "$dir"; }
done

work=$(mktemp -d /tmp/moe-slurm-XXXXXX)
echo $$ > "$work/owner.pid"
conf=$work/slurm.conf
host=$(hostname -s)
logs() { for f in "$work"/*.log "$work"/run/train.log; do [ ! -f "$f" ] || { echo "== $f"; tail -20 "$f"; }; done; }
cleanup() {
  set +e
  [ -n "${watchdog:-}" ] && kill "$watchdog" 2>/dev/null
  stop_all "$work"
  if [ -n "${MOE_KEEP_WORK:-}" ]; then touch "$work/kept"; echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 1' TERM INT HUP
fail() { echo "FAIL: $*"; logs; exit 1; }

# ctest's TIMEOUT (300 s) kills with SIGKILL, which skips the EXIT trap: stop
# everything before that, however the run is stuck. A run takes about 2 minutes.
deadline=${MOE_SLURM_DEADLINE_S:-240}
(
  set +e
  end=$(($(date +%s) + deadline))
  while [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
  echo "FAIL: not done after $deadline s; stopping the jobs and daemons"
  logs
  # The script's EXIT trap stops them, unless the script is gone (its pid maybe
  # reused) or stays blocked on a daemon.
  tr '\0' ' ' 2>/dev/null < /proc/$$/cmdline | grep -q "cluster/slurm.sh" && kill -TERM $$
  for _ in $(seq 10); do kill -0 $$ 2>/dev/null || break; sleep 1; done
  stop_all "$work"
) &
watchdog=$!

# The node's CPUs as slurmd detects them (hwloc): nproc would give OMP_NUM_THREADS
# when set, and a node of fewer CPUs than 2 tasks leaves every job pending.
cpus=$(slurmd -C | sed -n '1s/.* CPUs=\([0-9]*\) .*/\1/p')
[ -n "$cpus" ] || fail "slurmd -C printed no CPU count"

# munge with its own key and socket, so a system munge is left alone.
mkdir -p "$work/munge"
dd if=/dev/urandom of="$work/munge/key" bs=1024 count=1 status=none
chmod 700 "$work/munge"; chmod 400 "$work/munge/key"
munged --key-file="$work/munge/key" --socket="$work/munge/socket" --pid-file="$work/munged.pid" \
       --log-file="$work/munged.log" --seed-file="$work/munge/seed" --force
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
# srun's PMIx makes TmpFS/spmix_appdir_<uid>_<job>.<step> (default /tmp): a step
# killed with its run leaves it, and it fails that step id in every later run.
TmpFS=$work/tmp
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
# The main scheduling loop every 2 s (default 60): a requeued job then starts
# soon after its BeginTime (cred_expire), so a job pending longer cannot start.
SchedulerParameters=sched_interval=2
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
mkdir -p "$work/state" "$work/spool" "$work/tmp"
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
# Whether job $1 cannot start ($why then says why): it is pending for a reason
# that no wait resolves (a request beyond the node or the partition), or for any
# reason longer than $pending_limit s, as the node runs nothing but this test's
# jobs, one at a time (a requeued job pends a few seconds for its BeginTime).
pending_limit=${MOE_SLURM_PENDING_S:-30}
declare -A pending_since
stuck() {
  local info state reason
  info=$(scontrol show job -o "$1" 2>/dev/null)
  state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<< "$info")
  reason=$(sed -n 's/.* Reason=\([^ ]*\).*/\1/p' <<< "$info")
  [ "$state" = PENDING ] || { unset "pending_since[$1]"; return 1; }
  : "${pending_since[$1]:=$SECONDS}"
  why="pending for $((SECONDS - pending_since[$1])) s, reason $reason"
  case "$reason" in
    PartitionConfig|PartitionNodeLimit|PartitionTimeLimit|BadConstraints|ReqNodeNotAvail*|JobHeld*|DependencyNeverSatisfied) return 0 ;;
  esac
  [ $((SECONDS - pending_since[$1])) -ge "$pending_limit" ]
}
wait_until() {  # wait_until JOB SECONDS COMMAND...: polls COMMAND; fails at once if JOB cannot start
  local job=$1 end=$((SECONDS + $2)); shift 2
  until "$@"; do
    ! stuck "$job" || fail "job $job cannot start: $why"
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.5
  done
}
ended() { case "$(job_state "$1")" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) return 0 ;; esac; return 1; }
wait_gone() {  # until the job has ended for good (a requeued job passes through other states)
  wait_until "$1" 300 ended "$1" || fail "job $1 has not ended (state $(job_state "$1"))"
}
latest_step() { sed 's/step-0*//' "$run/checkpoints/latest" 2>/dev/null || echo 0; }
reached() { [ "$(latest_step)" -ge "$1" ]; }
logged() { grep -q "$1" "$run/train.log" 2>/dev/null; }

# 0. a job the node cannot run (more tasks than CPUs) fails the wait for it
#    within seconds, with its pending reason, instead of holding it to the deadline
job=$(sbatch --parsable --ntasks-per-node=$((cpus + 1)) --chdir="$work" --output=/dev/null --wrap "true") ||
  fail "sbatch refused a job of $((cpus + 1)) tasks instead of queueing it"
t0=$SECONDS
! out=$(wait_gone "$job") || fail "the wait for job $job of $((cpus + 1)) tasks on $cpus CPUs did not fail"
out=$(head -1 <<< "$out")
[ $((SECONDS - t0)) -le $((pending_limit + 5)) ] || fail "job $job was reported after $((SECONDS - t0)) s: $out"
[[ "$out" = "FAIL: job $job cannot start: pending for "*", reason "?* ]] || fail "unexpected report for job $job: $out"
scancel "$job"
echo "[$(date +%T)] ok: job $job of $((cpus + 1)) tasks on $cpus CPUs reported after $((SECONDS - t0)) s (${out#FAIL: })"

# 1. a job to its end, its ranks started by srun through PMIx
job=$(launcher=srun submit -- --set train.steps=20 --set checkpoint.every=10 --set eval.every=0) || fail "sbatch refused job 1"
wait_gone "$job"
[ "$(latest_step)" = 20 ] || fail "job 1 ended without the step-20 checkpoint"
grep -q "layout: 2 ranks" "$run/train.log" || fail "job 1 did not run 2 ranks as one job"
echo "[$(date +%T)] ok: job $job trained 20 steps (srun --mpi=pmix)"

# 2. a second submission resumes (mpirun inside the allocation from here on)
job=$(submit -- --set train.steps=30 --set checkpoint.every=10 --set eval.every=0) || fail "sbatch refused job 2"
wait_gone "$job"
grep -q "resumed from .*step-00000020 at step 20" "$run/train.log" || fail "job 2 did not resume"
[ "$(latest_step)" = 30 ] || fail "job 2 did not reach step 30"
echo "[$(date +%T)] ok: job $job resumed at step 20 and trained to 30"

# 3. the time-limit signal: save, requeue, finish
job=$(submit -- --set train.steps=200 --set checkpoint.every=1000 --set eval.every=0) || fail "sbatch refused job 3"
wait_until "$job" 120 logged "step    50/200" || fail "job $job did not reach step 50"
scancel --batch --signal=USR1 "$job" || fail "cannot signal job $job"
wait_until "$job" 300 logged "requeueing job $job" || fail "job $job did not requeue itself"
wait_gone "$job"
grep -q "stopped by a signal after step" "$run/train.log" || fail "the ranks did not stop with a checkpoint"
[ "$(latest_step)" = 200 ] || fail "the requeued job did not finish the run (latest: step $(latest_step))"
echo "[$(date +%T)] ok: job $job saved at the time-limit signal, requeued itself and finished"

# 4. scancel keeps the last good checkpoint
job=$(launcher=srun submit -- --set train.steps=2000 --set checkpoint.every=10 --set eval.every=0) ||
  fail "sbatch refused job 4"
wait_until "$job" 300 reached 240 || fail "job $job saved no checkpoint"
scancel "$job" || fail "cannot cancel job $job"
wait_gone "$job"
"$build/moe-checkpoint" inspect "$run" > "$work/inspect.log" 2>&1 || fail "the last checkpoint does not verify"
# srun's tasks get SIGTERM and KillWait to save (mpirun may kill its ranks sooner).
[ "$(grep -c "stopped by a signal" "$run/train.log")" = 2 ] || fail "the cancelled ranks did not save on SIGTERM"
echo "[$(date +%T)] ok: job $job cancelled at step $(latest_step), where its ranks saved; the checkpoint verifies"
echo PASS
