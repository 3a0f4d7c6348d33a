# Shared by tools/setup_env.sh, tools/run_tests.sh and tools/demo.sh.
# Source it; it defines variables and functions only.
#
# Which Python environment mmvheat uses:
#   1. the active virtualenv ($VIRTUAL_ENV), else
#   2. the active conda environment ($CONDA_PREFIX), else
#   3. $MMVHEAT_VENV (default: .venv in the repository root), created by
#      tools/setup_env.sh when missing.

MMVHEAT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Sets ENV_KIND (virtualenv|conda|venv), ENV_DIR and PY.
mmvheat_resolve_env() {
    if [ -n "${VIRTUAL_ENV:-}" ]; then
        ENV_KIND=virtualenv
        ENV_DIR="$VIRTUAL_ENV"
    elif [ -n "${CONDA_PREFIX:-}" ]; then
        ENV_KIND=conda
        ENV_DIR="$CONDA_PREFIX"
    else
        ENV_KIND=venv
        ENV_DIR="${MMVHEAT_VENV:-$MMVHEAT_ROOT/.venv}"
    fi
    PY="$ENV_DIR/bin/python"
}

mmvheat_log() {
    echo "[setup] $*"
}

mmvheat_die() {
    echo "[setup] ERROR: $*" >&2
    exit 1
}

# mmvheat_setup_and_exec TAG PY_ARG... -- [SETUP_OPTION...] [-- EXTRA_ARG...]
# Runs tools/setup_env.sh with SETUP_OPTIONs, then, from the repository root,
# replaces the shell with: $PY PY_ARG... EXTRA_ARG...
# With MMVHEAT_LINT=1 it runs tools/lint.sh first and, when that fails, still
# runs the command but exits non-zero.
mmvheat_setup_and_exec() {
    local tag="$1"
    shift
    local -a py_args=() setup_args=() extra_args=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        py_args+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift  # the -- after PY_ARGs
    while [ $# -gt 0 ]; do
        if [ "$1" = -- ]; then
            shift
            extra_args=("$@")
            break
        fi
        setup_args+=("$1")
        shift
    done

    bash "$MMVHEAT_ROOT/tools/setup_env.sh" ${setup_args[@]+"${setup_args[@]}"}

    mmvheat_resolve_env
    cd "$MMVHEAT_ROOT"
    if [ "${MMVHEAT_LINT:-0}" = 1 ]; then
        echo "[$tag] bash tools/lint.sh"
        if ! PYTHON="$PY" bash "$MMVHEAT_ROOT/tools/lint.sh"; then
            echo "[$tag] $PY ${py_args[*]} ${extra_args[*]}"
            "$PY" "${py_args[@]}" ${extra_args[@]+"${extra_args[@]}"} || true
            echo "[$tag] lint failed (see above)" >&2
            exit 1
        fi
    fi
    echo "[$tag] $PY ${py_args[*]} ${extra_args[*]}"
    exec "$PY" "${py_args[@]}" ${extra_args[@]+"${extra_args[@]}"}
}
