#!/usr/bin/env bash
# Training on a Slurm cluster, for mmpretrain, mmdet and mmseg configs:
#
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#   bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py ARGS]
#
# Without WORK_DIR, train.py's default: ./work_dirs/<config name>.
# The variables: see tools/slurm_launch.sh.
if [ $# -lt 3 ]; then
    echo "usage: bash $0 PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py ARGS]" >&2
    exit 1
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
if [ $# -ge 4 ] && [[ $4 != -* ]]; then
    WORK_DIR=("--work-dir=$4")
    PY_ARGS=("${@:5}")
else
    WORK_DIR=()
    PY_ARGS=("${@:4}")
fi
exec bash "$(dirname "$0")/slurm_launch.sh" "$PARTITION" "$JOB_NAME" \
    train.py "$CONFIG" ${WORK_DIR[@]+"${WORK_DIR[@]}"} \
    ${PY_ARGS[@]+"${PY_ARGS[@]}"}
