#!/usr/bin/env bash
# The GPU report (tools/analysis_tools/gpu_report.py) on a GPU machine that
# has python3 with torch and triton but none of mmengine, mmcv or mmpretrain,
# and no network: the pure-Python packages it needs travel as wheels.
#
#   bash tools/analysis_tools/gpu_report.sh fetch [DIR]
#       Here, where pip reaches PyPI: download the wheels into DIR (default
#       .whl in the repository root, added to git's info/exclude). Set
#       PYTHON_VERSION (default 3.12) to the GPU machine's python3 version.
#   bash tools/analysis_tools/gpu_report.sh run OUT_DIR [REPORT ARGS...]
#       There, from the repository root: install the wheels of .whl (or
#       WHEEL_DIR) into a private folder (SITE_DIR, default
#       /tmp/mmvheat_site) and run the report into OUT_DIR.
#
# mmengine and its pure-Python needs make the report run; mmpretrain and
# mmcv-lite (mmcv without compiled ops, enough for mmpretrain's Swin-T) add
# the Swin-T baseline. torch, triton, numpy, matplotlib, rich, opencv,
# Pillow, PyYAML, einops, click, markdown and zipp are taken from the machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PACKAGES=(
    mmengine==0.10.7 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0
    platformdirs==4.14.9
    mmpretrain==1.2.0 mmcv-lite==2.1.0 mat4py==0.6.0 modelindex==0.0.2
    model-index==0.1.11 ordered-set==4.1.0 importlib-metadata==10.2.0
    lazy-importer==0.1.0
)

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

fetch() {
    local dir=${1:-$ROOT/.whl}
    local python=${PYTHON:-python3}
    mkdir -p "$dir"
    local exclude
    # A worktree's .git is a file: ask git where its exclude file is.
    exclude=$(git -C "$ROOT" rev-parse --path-format=absolute \
        --git-path info/exclude 2>/dev/null) || exclude=
    if [ "$dir" = "$ROOT/.whl" ] && [ -n "$exclude" ] &&
        ! grep -qx '/.whl/' "$exclude" 2>/dev/null; then
        mkdir -p "$(dirname "$exclude")"
        echo '/.whl/' >>"$exclude"
    fi
    "$python" -m pip download --no-deps --only-binary=:all: \
        --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dir" "${PACKAGES[@]}"
    echo "wheels in $dir ($(du -sh "$dir" | cut -f1))"
}

run() {
    [ $# -ge 1 ] || usage
    local out=$1
    shift
    local wheels=${WHEEL_DIR:-$ROOT/.whl}
    local site=${SITE_DIR:-/tmp/mmvheat_site}
    if ls "$wheels"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
        export PYTHONPATH="$site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "no wheels in $wheels: using the installed packages" >&2
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    fi
    cd "$ROOT"
    nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader 2>/dev/null || true
    PYTHONUNBUFFERED=1 python3 tools/analysis_tools/gpu_report.py \
        --out-dir "$out" "$@"
}

case "${1:-}" in
    fetch) shift; fetch "$@" ;;
    run) shift; run "$@" ;;
    *) usage ;;
esac
