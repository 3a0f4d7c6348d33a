#!/usr/bin/env bash
# Distributed training with torchrun, for mmpretrain, mmdet and mmseg configs.
#
#   bash tools/dist_train.sh CONFIG GPUS [train.py ARGS]
#
# GPUS processes per node; without CUDA they run on the CPU (gloo).
# Multi-node: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500).
# PYTHON picks the interpreter (default: python).
exec bash "$(dirname "$0")/dist_launch.sh" train.py "$2" "$1" \
    --launcher pytorch "${@:3}"
