#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run the end-to-end demo (tools/demo.py).
#
#   bash tools/demo.sh [setup_env.sh options] [-- demo.py options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env_common.sh"
mmvheat_setup_and_exec demo tools/demo.py -- "$@"
