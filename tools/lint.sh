#!/usr/bin/env bash
# OpenMMLab's linters with the settings in setup.cfg: flake8, isort and yapf.
#
#   bash tools/lint.sh [--fix] [PATH...]
#
# Checks mmvheat/, demo/, tools/, tests/, configs/ and setup.py (or the PATHs) and
# exits non-zero when any linter objects; --fix lets isort and yapf rewrite
# the files instead (flake8 still reports what they cannot fix). Uses
# $PYTHON, else the environment tools/setup_env.sh sets up.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env_common.sh"

fix=0
if [ "${1:-}" = --fix ]; then
    fix=1
    shift
fi
paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(mmvheat demo tools tests configs setup.py)

if [ -z "${PYTHON:-}" ]; then
    mmvheat_resolve_env
    PYTHON="$PY"
    [ -x "$PYTHON" ] || PYTHON=python
fi
cd "$MMVHEAT_ROOT"

status=0
if [ $fix -eq 1 ]; then
    "$PYTHON" -m isort "${paths[@]}" || status=1
    "$PYTHON" -m yapf --in-place --recursive "${paths[@]}" || status=1
else
    "$PYTHON" -m isort --check-only --diff "${paths[@]}" || status=1
    "$PYTHON" -m yapf --diff --recursive "${paths[@]}" || status=1
fi
"$PYTHON" -m flake8 "${paths[@]}" || status=1
if [ $status -ne 0 ]; then
    echo "[lint] failed: see above (bash tools/lint.sh --fix rewrites the" \
        "import order and formatting)" >&2
fi
exit $status
