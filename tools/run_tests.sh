#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh), run the linters
# (tools/lint.sh) and the test suite; fails if either fails.
#
#   bash tools/run_tests.sh [setup_env.sh options] [-- pytest options]
#
# e.g. bash tools/run_tests.sh --find-links ~/wheels -- -k vheat -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env_common.sh"
MMVHEAT_LINT=1 mmvheat_setup_and_exec tests -m pytest tests -q -- "$@"
