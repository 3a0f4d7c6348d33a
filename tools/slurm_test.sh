#!/usr/bin/env bash
# Testing on a Slurm cluster, for mmpretrain, mmdet and mmseg configs:
#
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#   bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py ARGS]
#
# test.py ARGS as --tta, --out FILE, --work-dir DIR, --show-dir DIR.
# The variables: see tools/slurm_launch.sh.
if [ $# -lt 4 ]; then
    echo "usage: bash $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py ARGS]" >&2
    exit 1
fi
exec bash "$(dirname "$0")/slurm_launch.sh" "$1" "$2" test.py "${@:3}"
