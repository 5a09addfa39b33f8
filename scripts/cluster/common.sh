# shellcheck shell=bash
# Launch logic shared by the cluster scripts: slurm_sweep.sbatch and slurm_cpu.sbatch (both run on a
# real, local SLURM in tests/test_cluster.py), slurm_gpu.sbatch, and tpu_pod.sh on every TPU host.
# Sourced (after `set -euo pipefail`) with VAEAUG_ROOT set to the checkout: sbatch runs a *copy* of
# a batch script from slurmd's spool folder, so a script cannot find its checkout from $0; the
# scripts take $VAEAUG_ROOT, else the folder sbatch was called from.
#
# Environment, the same for every script and task:
#   VAEAUG_ROOT    the checkout (made absolute);
#   VENV           the virtual environment vaeaug is installed in (default $VAEAUG_ROOT/.venv); its
#                  python runs the entry points as modules (`python -m experiments.compare`);
#   TFDS_DATA_DIR  the built datasets (default ~/tensorflow_datasets); on a cluster, a folder every
#                  node reads; when set it must exist;
#   PYTHONUNBUFFERED=1, so that a job's output file follows the run.
# Everything else in the submitting shell reaches the tasks as SLURM passes it (sbatch --export=ALL).
#
# Workdir rules: WORKDIR is required; a relative WORKDIR is taken relative to the folder the job was
# submitted from (not to wherever a task starts); the batch step creates it before any task starts;
# every task of a job (the shards of an array, the processes of a distributed run) uses the same
# WORKDIR, so it must be on a filesystem all nodes share. Who writes what is the Python side's rule:
# in a distributed run process 0 writes config, metrics, logs and figures, and all processes write
# their part of each checkpoint; sweep shards append only their own cells, and one tables job
# (`--tables_only`, after the array) writes the tables.

vaeaug_die() {
  echo "error: $*" >&2
  exit 2
}

# vaeaug_setup WORKDIR: the environment above; sets VAEAUG_PYTHON and WORKDIR (absolute, created).
vaeaug_setup() {
  [[ -n ${1:-} ]] || vaeaug_die "WORKDIR is required (the first argument)"
  VAEAUG_ROOT=$(cd "${VAEAUG_ROOT:?}" && pwd -P)
  VENV=${VENV:-$VAEAUG_ROOT/.venv}
  VAEAUG_PYTHON=$VENV/bin/python
  [[ -x $VAEAUG_PYTHON ]] || vaeaug_die "no python in VENV=$VENV (set VENV to the virtual environment vaeaug is installed in)"
  if [[ -n ${TFDS_DATA_DIR:-} ]]; then
    [[ -d $TFDS_DATA_DIR ]] || vaeaug_die "TFDS_DATA_DIR=$TFDS_DATA_DIR is not a folder (build the datasets with vaeaug-prepare --data_dir=...)"
    export TFDS_DATA_DIR
  fi
  export VAEAUG_ROOT VENV PYTHONUNBUFFERED=1
  local base=${SLURM_SUBMIT_DIR:-$PWD}
  cd "$base"
  case $1 in
  /*) WORKDIR=$1 ;;
  *) WORKDIR=$base/$1 ;;
  esac
  mkdir -p "$WORKDIR"
  WORKDIR=$(cd "$WORKDIR" && pwd -P)
  echo "vaeaug: job ${SLURM_JOB_ID:-(no SLURM job)} on ${SLURMD_NODENAME:-$(hostname -s)}, workdir $WORKDIR, python $VAEAUG_PYTHON" >&2
}

# vaeaug_platform cpu|gpu|tpu: what JAX needs to see on that kind of node.
vaeaug_platform() {
  case $1 in
  cpu)
    # CPU collectives between processes go through gloo (vaeaug.training.sharding sets it).
    export JAX_PLATFORMS=cpu
    ;;
  gpu)
    # One process per node drives all of its GPUs. Under SLURM, jax.distributed would otherwise
    # restrict each process to the single GPU numbered by its local task id (SLURM_LOCALID).
    local gpus=${SLURM_GPUS_ON_NODE:-}
    if [[ -z $gpus && -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
      gpus=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
    fi
    if [[ -n $gpus && $gpus -gt 0 ]]; then
      JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))
      export JAX_LOCAL_DEVICE_IDS
    fi
    ;;
  tpu) ;; # jax.distributed discovers a TPU slice's hosts and chips on its own
  *) vaeaug_die "unknown platform $1 (cpu, gpu or tpu)" ;;
  esac
}

# vaeaug_train_command DISTRIBUTED: VAEAUG_TRAIN, the classifier training command every process runs;
# DISTRIBUTED 1: jax.distributed.initialize(), which reads the coordinator, the process count and
# this process's index from SLURM's environment (or discovers a TPU slice's hosts).
vaeaug_train_command() {
  VAEAUG_TRAIN=("$VAEAUG_PYTHON" -m experiments.train_classifier --workdir="$WORKDIR" --config=classifier)
  if (($1)); then
    VAEAUG_TRAIN+=(--config.distributed=True)
  fi
}

# vaeaug_srun CMD...: one copy of CMD per task of the job. --kill-on-bad-exit: when one process
# dies, the others are stopped at once instead of waiting in a collective for a peer that is gone;
# --label prefixes each output line with its task number.
vaeaug_srun() {
  srun --kill-on-bad-exit=1 --label "$@"
}
