#!/usr/bin/env bash
# Distributed testing with torchrun, for mmpretrain, mmdet and mmseg configs.
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py ARGS]
#
# GPUS processes per node; without CUDA they run on the CPU (gloo).
# Multi-node: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500).
# PYTHON picks the interpreter (default: python).
exec bash "$(dirname "$0")/dist_launch.sh" test.py "$3" "$1" "$2" \
    --launcher pytorch "${@:4}"
