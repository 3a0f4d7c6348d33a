#!/usr/bin/env bash
# srun for tools/slurm_train.sh and tools/slurm_test.sh, as OpenMMLab's
# slurm scripts call it:
#
#   bash tools/slurm_launch.sh PARTITION JOB_NAME SCRIPT [SCRIPT ARGS]
#
# runs tools/SCRIPT --launcher=slurm SCRIPT ARGS as GPUS tasks.
#   GPUS (8)           tasks in all, one per GPU
#   GPUS_PER_NODE (8)  tasks and GPUs (--gres=gpu:N) per node
#   CPUS_PER_TASK (5)  CPUs per task (the dataloader workers)
#   SRUN_ARGS          more srun options, e.g. "--quotatype=auto"
#   MASTER_PORT        rendezvous port (mmengine's default: 29500)
#   PYTHON             the interpreter (default: python)
set -x
TOOLS="$(cd "$(dirname "$0")" && pwd)"
PARTITION=$1
JOB_NAME=$2
SCRIPT=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}

# SRUN_ARGS unquoted: split into options, as in OpenMMLab's scripts.
# shellcheck disable=SC2086
PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}" \
exec srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "${PYTHON:-python}" -u "$TOOLS/$SCRIPT" --launcher=slurm "${@:4}"
