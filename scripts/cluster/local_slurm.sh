#!/bin/bash
# A throwaway single-node SLURM cluster on 127.0.0.1, for trying the cluster scripts on one machine
# (tests/test_cluster.py starts one per test module).
#
#   scripts/cluster/local_slurm.sh check          # SLURM and munge installed? (says how to install)
#   eval "$(scripts/cluster/local_slurm.sh start /tmp/slurm)"   # prints: export SLURM_CONF=...
#   sbatch ...; squeue; sinfo                     # any SLURM client, with SLURM_CONF exported
#   scripts/cluster/local_slurm.sh stop /tmp/slurm
#   scripts/cluster/local_slurm.sh run /tmp/slurm CMD ARGS...   # start, run CMD, stop (even on failure)
#
# Installs nothing: needs the Debian/Ubuntu packages slurm-wlm and munge (slurm 22.05 tested). Runs
# as root (slurmd starts job steps as the submitting user). `start DIR` writes everything under DIR
# (which must be new or empty): a munge key, socket, pid and log files for munged; slurm.conf with
# SlurmctldHost and one node named after this host (NodeAddr=127.0.0.1, so the node name resolves,
# as jax.distributed's SLURM detection needs), CPUs = $LOCAL_SLURM_CPUS (default: the cores here),
# one-CPU tasks packed side by side (select/cons_tres, CR_CPU), no cgroups, no accounting; the state
# and spool directories; the daemons' logs (DIR/log). It starts munged, slurmctld and slurmd, waits
# until the node is idle and prints the export line; on any failure it prints the daemons' log
# tails, stops what it started and exits non-zero. `stop DIR` cancels the cluster's jobs, then
# stops the daemons by the pids recorded in DIR (only processes whose command line names DIR).
# Ports: $LOCAL_SLURM_CTLD_PORT and $LOCAL_SLURM_SLURMD_PORT (default: free ports picked here).
# Job ids start at $LOCAL_SLURM_FIRST_JOB_ID (default random): jax.distributed derives its
# coordinator port from the job id, so two clusters on one machine should not share ids.
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin # the daemons, for users whose PATH lacks sbin

REQUIRED=(munged slurmctld slurmd sbatch srun sinfo squeue scancel scontrol)
INSTALL_HINT="install them with: apt-get install -y slurm-wlm munge   (Debian/Ubuntu, as root)"

die() {
  echo "local_slurm: $*" >&2
  exit 1
}

check() {
  local missing=() name
  for name in "${REQUIRED[@]}"; do
    command -v "$name" >/dev/null 2>&1 || missing+=("$name")
  done
  if ((${#missing[@]})); then
    echo "local_slurm: missing SLURM/munge programs: ${missing[*]}; $INSTALL_HINT" >&2
    exit 3
  fi
}

free_port() {
  # A port nobody listens on, from the range below the kernel's ephemeral ports.
  local port used
  used=$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' || true)
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 12000))
    grep -qx "$port" <<<"$used" || {
      echo "$port"
      return
    }
  done
  die "no free port found"
}

# pid of daemon NAME recorded in DIR, if that process is alive and its command line names DIR.
our_pid() {
  local dir=$1 name=$2 pid
  [[ -s $dir/$name.pid ]] || return 1
  pid=$(tr -dc 0-9 <"$dir/$name.pid")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir" || return 1
  echo "$pid"
}

# Whether process PID runs (a zombie does not: this cluster's daemons are children of PID 1, which
# may be slow to reap them, or never reap them in a container).
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

stop() {
  local dir name pid
  dir=$(realpath -m "$1")
  [[ -d $dir ]] || return 0
  if our_pid "$dir" slurmctld >/dev/null && our_pid "$dir" munged >/dev/null; then
    # Jobs first (scancel signals their steps through slurmd), so no job outlives the cluster.
    SLURM_CONF=$dir/slurm.conf scancel --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 30); do
      [[ -z $(SLURM_CONF=$dir/slurm.conf squeue -h -o %i 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
  for name in slurmd slurmctld munged; do
    pid=$(our_pid "$dir" "$name") || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      alive "$pid" || break
      sleep 0.1
    done
    ! alive "$pid" || kill -KILL "$pid" 2>/dev/null || true
  done
}

log_tails() {
  local dir=$1 file
  for file in "$dir"/log/*.log; do
    [[ -s $file ]] && {
      echo "---- $file (last lines)"
      tail -n 15 "$file"
    }
  done >&2
}

start() {
  check
  local dir host cpus ctld_port slurmd_port first_job state _
  mkdir -p "$1"
  dir=$(realpath "$1")
  [[ -z $(ls -A "$dir") ]] || die "$dir is not empty (start wants a new folder; stop the old cluster first)"
  [[ $(id -u) == 0 ]] || die "run as root: slurmd starts job steps as the submitting user"
  # Stop whatever started if anything below fails.
  STARTING=$dir
  trap 'status=$?; if ((status)); then log_tails "$STARTING"; stop "$STARTING"; fi' EXIT
  host=$(hostname -s)
  getent hosts "$host" >/dev/null || die "this host's name $host does not resolve (add it to /etc/hosts)"
  cpus=${LOCAL_SLURM_CPUS:-$(nproc)}
  ctld_port=${LOCAL_SLURM_CTLD_PORT:-$(free_port)}
  slurmd_port=${LOCAL_SLURM_SLURMD_PORT:-$(free_port)}
  [[ $ctld_port != "$slurmd_port" ]] || slurmd_port=$((ctld_port + 1))
  first_job=${LOCAL_SLURM_FIRST_JOB_ID:-$((1000 + RANDOM % 60000))}
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
  chmod 700 "$dir/munge"

  # munge: a fresh key, and every path under DIR (-f: as root, accept the permissive temp folders).
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged -f --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"
  for _ in $(seq 50); do
    [[ -S $dir/munge/munge.socket ]] && break
    sleep 0.1
  done
  [[ -S $dir/munge/munge.socket ]] || die "munged did not create its socket"

  cat >"$dir/slurm.conf" <<EOF
# Written by scripts/cluster/local_slurm.sh: a one-node cluster on 127.0.0.1.
ClusterName=vaeauglocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
FirstJobId=$first_job
KillWait=5
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

  slurmctld -f "$dir/slurm.conf" -i
  slurmd -f "$dir/slurm.conf"
  export SLURM_CONF=$dir/slurm.conf
  for _ in $(seq 120); do
    state=$(sinfo -h -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.5
  done
  [[ $state == idle ]] || die "the node did not become idle within 60 s (sinfo state: ${state:-none})"
  our_pid "$dir" slurmctld >/dev/null && our_pid "$dir" slurmd >/dev/null && our_pid "$dir" munged >/dev/null ||
    die "a daemon is not running"
  trap - EXIT
  echo "export SLURM_CONF=$dir/slurm.conf"
}

run() {
  (($# > 1)) || die "usage: local_slurm.sh run DIR CMD [ARGS...]"
  start "$1" >/dev/null
  RUNNING=$(realpath "$1")
  trap 'stop "$RUNNING"' EXIT
  export SLURM_CONF=$RUNNING/slurm.conf
  shift
  "$@"
}

case ${1:-} in
check) check ;;
start) start "${2:?usage: local_slurm.sh start DIR}" ;;
stop) stop "${2:?usage: local_slurm.sh stop DIR}" ;;
run) run "${2:?usage: local_slurm.sh run DIR CMD [ARGS...]}" "${@:3}" ;;
*)
  echo "usage: local_slurm.sh check | start DIR | stop DIR | run DIR CMD [ARGS...]" >&2
  exit 2
  ;;
esac
