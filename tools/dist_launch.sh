#!/usr/bin/env bash
# torchrun for tools/dist_train.sh and tools/dist_test.sh:
#
#   bash tools/dist_launch.sh SCRIPT NPROC [SCRIPT ARGS]
#
# runs tools/SCRIPT with SCRIPT ARGS on NPROC processes per node.
# Multi-node: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500).
# PYTHON picks the interpreter (default: python).
set -e
TOOLS="$(dirname "$0")"
SCRIPT=$1
NPROC=$2

PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" \
    --master_port="${PORT:-29500}" \
    "$TOOLS/$SCRIPT" "${@:3}"
