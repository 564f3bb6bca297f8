#!/bin/bash
# Multi-host Cloud TPU VM (e.g. v5p-64): run the same command on every worker; JAX discovers the slice itself.
#   launch/tpu_vm.sh TPU_NAME ZONE experiments/tokenizer.py:small gs://bucket/runs/tok --config.data.dir=gs://...
# Expects the repository checked out at ~/worldmodel on every worker with `make install ACCEL=tpu` done (TPU jax wheels
# and the gcs extra), e.g. once with:
#   gcloud compute tpus tpu-vm ssh NAME --zone=Z --worker=all --command='cd worldmodel && make install ACCEL=tpu'
# WORKDIR and data should be gs:// URLs that every worker shares (the VM's service account needs read/write on the
# bucket): checkpoints are written by all workers together, logs by worker 0. One process per worker drives all of
# its chips. A bucket dataset is copied once per worker into ~/.cache/worldmodel (WORLDMODEL_CACHE).
set -euo pipefail
TPU=${1:?usage: tpu_vm.sh TPU_NAME ZONE CONFIG[:VARIANT] WORKDIR [--config.KEY=VALUE ...]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4
CMD="cd ~/worldmodel && .venv/bin/python -m worldmodel.train --distributed_auto --config=${CONFIG} --workdir=${WORKDIR} $*"
gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all --command="${CMD}"
