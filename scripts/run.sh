#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash scripts/run.sh setup   # system packages (where possible), .venv, the package with its dev and qt extras
#   bash scripts/run.sh demo    # setup + headless `samsp segment` example + the napari demo (window or screenshot)
#   bash scripts/run.sh test    # setup + the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SAMSP_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
export OMP_WAIT_POLICY=PASSIVE
export SAMSP_DATA=${SAMSP_DATA:-$ROOT/../shared/datasets}

GUI_PACKAGES="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1
libxcb-xinerama0 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1
libxcb-cursor0 libfontconfig1 libdbus-1-3"

system_packages() {
  # Xvfb and the xcb/GL libraries napari needs for GUI tests; skipped where we cannot install.
  local missing=()
  for p in $GUI_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: missing system packages (${missing[*]}); GUI tests will be skipped" >&2
  fi
}

python_env() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  "$PY" -m pip install -q --upgrade pip
  # torch and torchvision are pinned together and installed first: pip takes them
  # from the local wheels here instead of downloading a different CUDA build. This is
  # the only exact pin: the package itself accepts torch>=2.1 (pyproject.toml).
  "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$PY" -m pip install -q -e ".[dev,qt]" "torch==2.14.1" "torchvision==0.29.1"
}

setup() { system_packages; python_env; }

demo() {
  setup
  local out=$ROOT/out/demo
  mkdir -p "$out/images"
  "$PY" scripts/demo.py --write-samples "$out/images"
  if [ -d "$SAMSP_DATA/dsb2018_nuclei/images" ]; then
    # A few real images too (copied into out/, never into the repository).
    local nuclei=("$SAMSP_DATA"/dsb2018_nuclei/images/*) heads=("$SAMSP_DATA"/hc18_fetal_head_us/images/*)
    cp "${nuclei[@]:0:2}" "${heads[@]:0:1}" "$out/images/"
  fi
  echo "== headless: samsp segment =="
  "$VENV/bin/samsp" segment "$out/images" -o "$out/labels" --mode instance
  echo "labels written to $out/labels"
  echo "== napari demo =="
  if [ -n "${DISPLAY:-}" ]; then
    "$PY" scripts/demo.py
  else
    echo "(no display: running the demo under Xvfb and saving a screenshot)"
    xvfb-run -a -s "-screen 0 1400x900x24" "$PY" scripts/demo.py --screenshot "$out/napari_demo.png"
    echo "screenshot: $out/napari_demo.png"
  fi
}

run_tests() {
  setup
  # lint first (seconds): undefined names and unused code fail CI before the slower suite runs
  "$VENV/bin/ruff" check napari_samsp training tests scripts
  "$PY" -m pytest -q "$@"
}

case "${1:-}" in
  setup) setup ;;
  demo) demo ;;
  test) shift; run_tests "$@" ;;
  *) echo "usage: bash scripts/run.sh {setup|demo|test [pytest args]}" >&2; exit 2 ;;
esac
