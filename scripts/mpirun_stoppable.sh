# Sourced by the launch scripts: mpirun_stoppable ARGS... runs `mpirun ARGS...`
# so that a stop reaches the ranks as a clean one. SIGINT or SIGTERM to the
# script becomes SIGUSR1 to mpirun, which Open MPI passes on to the ranks:
# they finish the step, save a checkpoint and exit with 3, and mpirun returns
# that 3. (A SIGTERM to mpirun itself reaches the ranks too, and they save,
# but Open MPI then reports the job as failed: exit 1.)
mpirun_stoppable() {
  mpirun "$@" &
  local job=$! rc
  trap 'kill -USR1 "$job" 2>/dev/null' INT TERM
  while :; do
    wait "$job"
    rc=$?
    kill -0 "$job" 2>/dev/null || break  # wait returned for the trap, not for the exit
  done
  trap - INT TERM
  return "$rc"
}
