#!/usr/bin/env bash
# One-command environment set-up for mmvheat.
#
#   bash tools/setup_env.sh [--find-links DIR_OR_URL]... [--with-optional] [--force]
#
# Installs, into the active virtualenv / conda env or else into ./.venv
# (created if missing):
#   1. torch, only when `import torch` fails
#      (torch==$MMVHEAT_TORCH_VERSION, default 2.13.0), and torchvision
#      (imported by mmpretrain) matching the installed torch when missing;
#      every later pip call is constrained to the installed torch;
#   2. mmcv with compiled ops (>=2.0,<2.2), only when `import mmcv.ops` fails:
#      a prebuilt wheel if pip can find one, else a source build (~25 min on 2 cores);
#   3. requirements/{runtime,mminstall,tests}.txt
#      (and requirements/optional.txt with --with-optional);
#   4. mmvheat itself, editable (pip install -e .).
# A second run only verifies the environment and takes a few seconds.
set -euo pipefail

# shellcheck source=tools/env_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/env_common.sh"
ROOT="$MMVHEAT_ROOT"

TORCH_VERSION="${MMVHEAT_TORCH_VERSION:-2.13.0}"
MMCV_VERSION="${MMVHEAT_MMCV_VERSION:-2.1.0}"

usage() {
    cat <<EOF
Usage: bash tools/setup_env.sh [options]

Options:
  --find-links DIR_OR_URL  extra place to look for wheels (e.g. a folder with a
                           prebuilt mmcv wheel, or an OpenMMLab wheel index
                           URL); passed to pip as --find-links, which adds to
                           the locations configured for pip. Repeatable.
  --with-optional          also install requirements/optional.txt
                           (matplotlib; triton, onnx, onnxruntime are test requirements)
  --force                  reinstall the requirements even if up to date
  -h, --help               show this help

Environment variables:
  MMVHEAT_WHEELS          extra wheel folders/URLs, ':'-separated
                          (same as --find-links)
  MMVHEAT_TORCH_VERSION   torch version installed when torch is missing
                          (default: 2.13.0); an installed torch is never
                          touched
  MMVHEAT_TORCHVISION_VERSION
                          torchvision version installed when torchvision is
                          missing (default: the release paired with torch,
                          e.g. 0.28.* for torch 2.13)
  MMVHEAT_MMCV_VERSION    mmcv version installed when mmcv with ops is
                          missing (default: 2.1.0)
  MMVHEAT_PYTHON          interpreter used to create .venv (default: python3)
  MMVHEAT_VENV            where to create the virtualenv when none is active
                          (default: <repo>/.venv)
  MAX_JOBS                parallel compile jobs for an mmcv source build
                          (default: number of CPU cores)
EOF
}

FIND_LINKS=()
add_find_links() {
    local loc="$1"
    [ -n "$loc" ] || return 0
    case "$loc" in
        http://* | https://* | file://*) ;;
        *)
            [ -d "$loc" ] || mmvheat_die "wheel folder not found: $loc"
            loc="$(cd "$loc" && pwd)"
            ;;
    esac
    FIND_LINKS+=(--find-links "$loc")
}

WITH_OPTIONAL=0
FORCE=0
if [ -n "${MMVHEAT_WHEELS:-}" ]; then
    IFS=':' read -r -a _wheel_dirs <<<"$MMVHEAT_WHEELS"
    for d in "${_wheel_dirs[@]}"; do add_find_links "$d"; done
fi
while [ $# -gt 0 ]; do
    case "$1" in
        --find-links)
            [ $# -ge 2 ] || mmvheat_die "--find-links needs an argument"
            add_find_links "$2"
            shift 2
            ;;
        --find-links=*)
            add_find_links "${1#*=}"
            shift
            ;;
        --with-optional) WITH_OPTIONAL=1; shift ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; mmvheat_die "unknown option: $1" ;;
    esac
done

SECONDS=0
mmvheat_resolve_env

# ---------------------------------------------------------------- env ----
case "$ENV_KIND" in
    virtualenv) mmvheat_log "using the active virtualenv: $ENV_DIR" ;;
    conda) mmvheat_log "using the active conda environment: $ENV_DIR" ;;
    venv)
        if [ -x "$PY" ]; then
            mmvheat_log "using the virtualenv $ENV_DIR"
        else
            BASE_PY="${MMVHEAT_PYTHON:-python3}"
            command -v "$BASE_PY" >/dev/null ||
                mmvheat_die "$BASE_PY not found; set MMVHEAT_PYTHON to a Python >= 3.8"
            "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 8))' ||
                mmvheat_die "$BASE_PY is older than Python 3.8"
            mmvheat_log "creating a virtualenv in $ENV_DIR with $BASE_PY"
            "$BASE_PY" -m venv "$ENV_DIR"
        fi
        ;;
esac
[ -x "$PY" ] || mmvheat_die "no python at $PY"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 8))' ||
    mmvheat_die "$PY is older than Python 3.8"
"$PY" -m pip --version >/dev/null 2>&1 || {
    mmvheat_log "pip is missing in $ENV_DIR; bootstrapping it with ensurepip"
    "$PY" -m ensurepip --upgrade
}

# Once torch is installed, every pip call is constrained to that torch, so
# that no requirement can replace it (e.g. with a multi-GB CUDA build).
CONSTRAINTS=()
pip_install() {
    mmvheat_log "pip install $*"
    "$PY" -m pip install --disable-pip-version-check \
        ${FIND_LINKS[@]+"${FIND_LINKS[@]}"} \
        ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} "$@"
}

# Imports everything the project needs, prints the versions and checks that
# mmvheat resolves to this checkout (run outside the repo so that the
# checkout itself is not on sys.path).
verify_env() {
    (cd / && "$PY" - "$ROOT" <<'EOF'
import importlib
import importlib.metadata
import importlib.util
import os
import sys

root = os.path.realpath(sys.argv[1])
import mmcv.ops  # noqa: F401  (fails for mmcv-lite or a broken build)
for mod, name in [('torch', 'torch'), ('mmcv', 'mmcv'),
                  ('mmengine', 'mmengine'), ('mmdet', 'mmdet'),
                  ('mmseg', 'mmsegmentation'), ('mmpretrain', 'mmpretrain')]:
    print(f'[setup]   {name:<15} {importlib.import_module(mod).__version__}')
# Not imported: a CUDA torchvision wheel only imports next to a CPU torch
# after mmvheat has prepared it.
print(f'[setup]   {"torchvision":<15} {importlib.metadata.version("torchvision")}')
spec = importlib.util.find_spec('mmvheat')
origin = os.path.realpath(spec.origin) if spec and spec.origin else ''
if not origin.startswith(root + os.sep):
    sys.exit(f'[setup] mmvheat is not installed from {root} (found: {origin})')
EOF
    )
}

print_activation() {
    mmvheat_log "python: $PY"
    case "$ENV_KIND" in
        venv)
            local act="$ENV_DIR/bin/activate"
            case "$act" in "$PWD"/*) act="${act#"$PWD"/}" ;; esac
            mmvheat_log "activate the environment with:  source $act"
            ;;
        virtualenv) mmvheat_log "environment (already active): $ENV_DIR" ;;
        conda)
            mmvheat_log "environment (already active): conda activate ${CONDA_DEFAULT_ENV:-$ENV_DIR}"
            ;;
    esac
}

# The stamp records what the last successful run installed; when it matches,
# the pip steps are skipped.
STAMP="$ENV_DIR/.mmvheat-setup-stamp"
stamp_key() {  # stamp_key WITH_OPTIONAL
    {
        echo "root=$ROOT python=$PY optional=$1"
        cat "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/tools/setup_env.sh" \
            "$ROOT"/requirements/*.txt
    } | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}
KEY="$(stamp_key "$WITH_OPTIONAL")"
# An environment set up with --with-optional also serves runs without it.
KEY_OPTIONAL="$(stamp_key 1)"

if [ "$FORCE" = 0 ] && [ -f "$STAMP" ] &&
    { [ "$(cat "$STAMP")" = "$KEY" ] || [ "$(cat "$STAMP")" = "$KEY_OPTIONAL" ]; }; then
    mmvheat_log "requirements unchanged since the last run; verifying the environment"
    if verify_env; then
        mmvheat_log "environment is up to date (${SECONDS}s)"
        print_activation
        exit 0
    fi
    mmvheat_log "verification failed; installing again"
fi
rm -f "$STAMP"

# -------------------------------------------------------------- torch ----
if "$PY" -c 'import torch' >/dev/null 2>&1; then
    mmvheat_log "torch $("$PY" -c 'import torch; print(torch.__version__)') is installed; leaving it as it is"
else
    mmvheat_log "torch is missing; installing torch==$TORCH_VERSION (set MMVHEAT_TORCH_VERSION to change)"
    pip_install "torch==$TORCH_VERSION"
fi
TORCH_DIST_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
CONSTRAINTS_FILE="$(mktemp "${TMPDIR:-/tmp}/mmvheat-constraints.XXXXXX")"
trap 'rm -f "$CONSTRAINTS_FILE"' EXIT
echo "torch==$TORCH_DIST_VERSION" >"$CONSTRAINTS_FILE"
CONSTRAINTS=(-c "$CONSTRAINTS_FILE")

# -------------------------------------------------------- torchvision ----
if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchvision") is None)'; then
    mmvheat_log "torchvision $("$PY" -c 'import importlib.metadata as m; print(m.version("torchvision"))') is installed; leaving it as it is"
else
    # torch 2.N pairs with torchvision 0.(N+15).
    TV_VERSION="${MMVHEAT_TORCHVISION_VERSION:-$("$PY" -c '
import sys
major, minor = (int(x) for x in sys.argv[1].split(".")[:2])
print(f"0.{minor + 15}.*" if major == 2 else "")' "$TORCH_DIST_VERSION")}"
    [ -n "$TV_VERSION" ] ||
        mmvheat_die "no known torchvision for torch $TORCH_DIST_VERSION; set MMVHEAT_TORCHVISION_VERSION"
    mmvheat_log "torchvision is missing (mmpretrain imports it); installing torchvision==$TV_VERSION for torch $TORCH_DIST_VERSION"
    pip_install "torchvision==$TV_VERSION" ||
        mmvheat_die "could not install torchvision==$TV_VERSION next to torch $TORCH_DIST_VERSION; install a matching torchvision or set MMVHEAT_TORCHVISION_VERSION"
fi

# --------------------------------------------------------------- mmcv ----
mmcv_ok() {
    (cd / && "$PY" - >/dev/null 2>&1 <<'EOF'
import mmcv
import mmcv.ops  # noqa: F401
major, minor = (int(x) for x in mmcv.__version__.split('.')[:2])
assert (major, minor) in ((2, 0), (2, 1)), mmcv.__version__
EOF
    )
}

setuptools_version() {
    "$PY" -c 'import setuptools; print(setuptools.__version__)' 2>/dev/null || true
}

build_mmcv_from_source() {
    command -v "${CXX:-c++}" >/dev/null || command -v g++ >/dev/null ||
        mmvheat_die "building mmcv needs a C++ compiler (e.g. apt-get install g++)"
    local old_st
    old_st="$(setuptools_version)"
    mmvheat_log "no prebuilt mmcv==$MMCV_VERSION wheel found; building it from source."
    mmvheat_log "this takes about 25 minutes on 2 CPU cores, less with more (MAX_JOBS=${MAX_JOBS:-$(nproc)})."
    mmvheat_log "to skip it next time, pass --find-links with a folder holding a prebuilt mmcv wheel"
    # mmcv 2.1.0's setup.py needs setuptools<70; the build runs against the
    # installed torch, hence --no-build-isolation.
    mmvheat_log "setuptools is pinned below 70 for the build and restored afterwards;"
    mmvheat_log "pip may report a conflict with torch's setuptools requirement meanwhile"
    pip_install "setuptools<70" wheel ninja
    local rc=0 start=$SECONDS
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        pip_install --no-build-isolation --no-binary=mmcv "mmcv==$MMCV_VERSION" || rc=$?
    mmvheat_log "mmcv build finished after $((SECONDS - start))s (exit code $rc)"
    # Put setuptools back (torch >= 2.9 requires setuptools>=77).
    if [ -n "$old_st" ] && [ "${old_st%%.*}" -ge 70 ]; then
        pip_install "setuptools==$old_st"
    else
        pip_install --upgrade setuptools
    fi
    [ "$rc" = 0 ] || mmvheat_die "mmcv source build failed (see the compiler output above)"
}

if mmcv_ok; then
    mmvheat_log "mmcv $("$PY" -c 'import mmcv; print(mmcv.__version__)') with ops is installed; leaving it as it is"
else
    mmvheat_log "installing mmcv==$MMCV_VERSION with compiled ops (mmcv-lite is not enough)"
    if ! pip_install --only-binary=mmcv "mmcv==$MMCV_VERSION"; then
        build_mmcv_from_source
    fi
    mmcv_ok || mmvheat_die "mmcv was installed but 'import mmcv.ops' fails"
fi

# ------------------------------------------------------- requirements ----
REQS=(-r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/mminstall.txt"
    -r "$ROOT/requirements/tests.txt")
if [ "$WITH_OPTIONAL" = 1 ]; then
    REQS+=(-r "$ROOT/requirements/optional.txt")
fi
pip_install "${REQS[@]}"

# ----------------------------------------------------------- mmvheat ----
# Editable install without build isolation: uses the setuptools already in
# the environment (PEP 660 editable wheels need setuptools>=64).
if ! "$PY" - <<'EOF'
import sys
try:
    import setuptools
    import wheel  # noqa: F401
except ImportError:
    sys.exit(1)
sys.exit(int(setuptools.__version__.split('.')[0]) < 64)
EOF
then
    pip_install "setuptools>=64" wheel
fi
pip_install --no-build-isolation -e "$ROOT"

mmvheat_log "checking dependency consistency (pip check)"
if ! "$PY" -m pip check --disable-pip-version-check; then
    # Only fatal in the virtualenv this script manages; a shared env may have
    # unrelated conflicts.
    [ "$ENV_KIND" != venv ] || mmvheat_die "pip check reports conflicts (see above)"
    mmvheat_log "WARNING: pip check reports conflicts (see above)"
fi

mmvheat_log "installed versions:"
verify_env
echo "$KEY" >"$STAMP"
mmvheat_log "done in ${SECONDS}s"
print_activation
