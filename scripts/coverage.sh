#!/usr/bin/env bash
# Statement coverage of the core: napari_samsp without the napari layer (_ui/, _widget.py,
# _reader.py, _writer.py, _sample_data.py; see [tool.coverage] in pyproject.toml), over the
# whole test suite (GUI tests included, under Xvfb). Needs the dev extra (pytest-cov).
#   bash scripts/coverage.sh            # prints the per-file table and the total
#   bash scripts/coverage.sh tests/x.py # any pytest arguments narrow the run
# Runs this checkout's package (PYTHONPATH), with one torch/OpenMP thread; ~10 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${SAMSP_PYTHON:-${SAMSP_VENV:-$ROOT/.venv}/bin/python}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export SAMSP_DATA=${SAMSP_DATA:-$ROOT/../shared/datasets}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export COVERAGE_FILE=${COVERAGE_FILE:-$ROOT/.coverage}
"$PY" -m pytest -q -p no:cacheprovider --cov=napari_samsp --cov-config=pyproject.toml \
  --cov-report=term:skip-covered "$@"
