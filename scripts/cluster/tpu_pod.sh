#!/bin/bash
# Classifier training on a TPU VM pod slice: the same command runs on every host of the slice;
# jax.distributed.initialize() discovers the slice's hosts on its own.
#
#   TPU=my-v4-16 ZONE=us-central2-b bash scripts/cluster/tpu_pod.sh /mnt/nfs/runs/r18 \
#       --config.model=resnet18_small
#
# Assumes the repository is cloned to ~/vaeaug on every host with `pip install -e . "jax[tpu]"`,
# the TFDS datasets built where every host can read them ($TFDS_DATA_DIR), and WORKDIR on a filesystem
# all hosts share (e.g. a Filestore NFS mount): checkpoints are written by all hosts together.
set -euo pipefail
WORKDIR=${1:?usage: tpu_pod.sh WORKDIR [--config.x=y ...]}
shift
: "${TPU:?set TPU to the pod slice name}" "${ZONE:?set ZONE}"
EXTRA=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd ~/vaeaug && TFDS_DATA_DIR=${TFDS_DATA_DIR:-/mnt/nfs/tensorflow_datasets} \
  .venv/bin/vaeaug-train-classifier --workdir=$WORKDIR \
    --config=classifier --config.distributed=True --config.batch_size=512 $EXTRA"
