#!/bin/sh
# A stand-in for ssh as Open MPI's launch agent: runs a command "on" a host
# that is a Linux network namespace of this machine (tests/cluster/two_hosts.sh).
#
#   MOE_NETNS_HOSTS=/path/hosts mpirun --mca plm_rsh_agent /abs/path/netns_agent.sh ...
#   netns_agent.sh [ssh options] [USER@]HOST COMMAND...
#
# MOE_NETNS_HOSTS names a file of lines `ADDRESS NAMESPACE [HOSTNAME]` ('#'
# starts a comment), e.g. `10.77.0.2 moe-host-b`; HOST must be one of its
# addresses. With a HOSTNAME the command also gets a UTS namespace of its own
# with that hostname (else it sees this machine's), as on a real second node.
# Like ssh, the words of COMMAND are joined by spaces and the result is run by
# a shell (`sh -c`), here inside the namespace: Open MPI's plm_rsh passes the
# orted command line as words already quoted for that remote shell.
# Like ssh, the command starts in a fresh environment: only HOME, USER,
# LOGNAME, SHELL, LANG, PATH (this one's: same filesystem) and MOE_NETNS_HOSTS
# (for the agent's own use by a remote orted) pass; the rest must travel by
# `mpirun -x`, as it would to a real node.
# Options before HOST are skipped: Open MPI 4.1 adds `-x` only when the
# agent's name is "ssh", and whatever plm_rsh_args holds; ssh options that take
# a value take it along. Needs root (CAP_SYS_ADMIN, for `ip netns exec`).
# Exits 255 (ssh's "could not connect") when HOST is unknown.
set -eu

me=netns_agent
while [ $# -gt 0 ]; do
    case $1 in
        --) shift; break ;;
        -[BbcDEeFIiJLlmOoPpQRSWw]) shift; [ $# -gt 0 ] && shift ;;  # ssh options with a value
        -?*) shift ;;                                               # -x, -T, -n, -q, -oFoo=bar, ...
        *) break ;;
    esac
done
if [ $# -lt 2 ]; then
    echo "$me: usage: $me [ssh options] HOST COMMAND..." >&2
    exit 255
fi
host=${1#*@}
shift

hosts=${MOE_NETNS_HOSTS:-}
if [ -z "$hosts" ] || [ ! -r "$hosts" ]; then
    echo "$me: MOE_NETNS_HOSTS must name a readable file of 'ADDRESS NAMESPACE' lines (is '${hosts}')" >&2
    exit 255
fi
case $hosts in /*) ;; *) hosts=$(pwd)/$hosts ;; esac  # a remote orted starts elsewhere
line=$(awk -v h="$host" '{ sub(/#.*/, "") } NF >= 2 && $1 == h { print $2, $3; exit }' "$hosts")
ns=${line% *}
name=${line#* }
if [ -z "$ns" ]; then
    echo "$me: host '$host' is not in $hosts" >&2
    exit 255
fi

unset IFS
command="$*"  # the words joined by spaces, as ssh joins them
user=${USER:-$(id -un)}
set -- env -i "PATH=$PATH" "HOME=${HOME:-/}" "USER=$user" "LOGNAME=${LOGNAME:-$user}" \
    "SHELL=${SHELL:-/bin/sh}" "LANG=${LANG:-C.UTF-8}" "MOE_NETNS_HOSTS=$hosts" ip netns exec "$ns"
if [ -z "$name" ]; then
    exec "$@" sh -c "$command"
fi
# shellcheck disable=SC2016  # for the inner shell
exec "$@" unshare --uts sh -c 'hostname "$0" && exec sh -c "$1"' "$name" "$command"
