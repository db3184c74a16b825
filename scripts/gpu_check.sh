#!/usr/bin/env bash
# The GPU check of issue 9.5 in one run on a lent H200 machine (python 3.12, torch 2.11, no
# segment-anything, no network, no ../shared). Writes gpu_check.json / gpu_check.md (and the log) to $OUT.
#
# Prepare once, here, in the repository root (both folders are git-ignored and travel with `carry`):
#   SAMSP_DATA=/path/to/datasets python scripts/pack_data.py        # -> datapack/pack.npz (about 2 MB; the
#                                                                    # format training/gpu_train.py reads too)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl segment-anything==1.0
# segment-anything is the only package of ours the machine lacks (KINDS.md's list has torch, torchvision,
# numpy, scipy, scikit-image, pillow, imageio, tifffile, safetensors; zarr is only needed for the disk
# embedding cache, which this check turns off). The package itself is used from the working tree
# (PYTHONPATH), not installed, so no pin of ours touches the machine's torch.
#
# Then (device tool): run  command="bash scripts/gpu_check.sh"  carry=[".whl", "datapack"]  timeout_s=540
#
# Usage: scripts/gpu_check.sh [--wheels DIR] [gpu_check.py options, e.g. --device cpu --tiny]
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
if [[ "${1:-}" == "--wheels" ]]; then WHEELS="$2"; shift 2; fi
OUT="${OUT:-$PWD/out/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SITE="${SAMSP_SITE:-/tmp/samsp_site}"
if ! "$PY" -c "import segment_anything" 2>/dev/null; then
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    if (( ${#wheels[@]} == 0 )); then
        echo "gpu_check.sh: segment_anything is missing and there are no wheels in $WHEELS (see the header)" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" || exit 2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SAMSP_CACHE=off OMP_WAIT_POLICY=PASSIVE
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/nvidia_smi.txt"
"$PY" scripts/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
