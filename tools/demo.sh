#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run tools/smoke_test.py.
#
#   bash tools/demo.sh [setup_env.sh options] [-- smoke_test.py options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env_common.sh"
mmvheat_setup_and_exec demo tools/smoke_test.py -- "$@"
