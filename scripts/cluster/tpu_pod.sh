#!/bin/bash
# Classifier training on a TPU VM pod slice: the same command runs on every host of the slice;
# jax.distributed.initialize() discovers the slice's hosts on its own.
#
#   TPU=my-v4-16 ZONE=us-central2-b bash scripts/cluster/tpu_pod.sh /mnt/nfs/runs/r18 \
#       --config.model=resnet18_small
#
# Assumes the repository is cloned to ~/vaeaug (or $VAEAUG_ROOT) on every host with
# `pip install -e . "jax[tpu]"` in its .venv (or $VENV), the TFDS datasets built where every host can
# read them ($TFDS_DATA_DIR), and WORKDIR (absolute) on a filesystem all hosts share (e.g. a
# Filestore NFS mount): checkpoints are written by all hosts together. VAEAUG_ROOT, VENV and
# TFDS_DATA_DIR, when set here, are passed on to the hosts. Each host runs the launch logic of the
# SLURM scripts (common.sh: environment, workdir rules, the training command); tests/test_cluster.py
# runs this script with a stand-in for gcloud, never on a real pod.
set -euo pipefail
WORKDIR=${1:?usage: tpu_pod.sh WORKDIR [--config.x=y ...]}
shift
: "${TPU:?set TPU to the pod slice name}" "${ZONE:?set ZONE}"
if [[ $WORKDIR != /* ]]; then
  echo "error: WORKDIR must be an absolute path on a filesystem all hosts share, got $WORKDIR" >&2
  exit 2
fi
EXTRA=""
(($# == 0)) || EXTRA=$(printf ' %q' "$@")
PASSED=""
for var in VAEAUG_ROOT VENV TFDS_DATA_DIR; do
  [[ -z ${!var:-} ]] || PASSED+=$(printf ' %q' "$var=${!var}")
done
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="set -euo pipefail
export VAEAUG_ROOT=\$HOME/vaeaug$PASSED
source \"\$VAEAUG_ROOT/scripts/cluster/common.sh\"
vaeaug_setup $(printf %q "$WORKDIR")
vaeaug_platform tpu
vaeaug_train_command 1
exec \"\${VAEAUG_TRAIN[@]}\" --config.batch_size=512$EXTRA"
