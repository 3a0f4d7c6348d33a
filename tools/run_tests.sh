#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run the test suite.
#
#   bash tools/run_tests.sh [setup_env.sh options] [-- pytest options]
#
# e.g. bash tools/run_tests.sh --find-links ~/wheels -- -k vheat -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env_common.sh"
mmvheat_setup_and_exec tests -m pytest tests -q -- "$@"
