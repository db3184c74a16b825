#!/usr/bin/env bash
# GPU recipe for the lent device machine (one GPU, no network): check what is missing and install it
# from carried wheels, fine-tune on the packed data in a fixed wall-clock budget with bf16 autocast
# and a large batch, evaluate, and write the fp16 model (files <= 16 MiB) to $OUT.
#
#   OUT=/some/dir BUDGET_S=420 BATCH=64 bash scripts/gpu_train.sh [more training/gpu_train.py args]
#
# Carry (run tool): datapack/ (the pack, datapack/pack.npz, see training/gpu_train.py for its format;
# optionally datapack/wheels/ with wheels of missing pure-Python packages, made here with e.g.
# `pip download --no-deps segment-anything safetensors -d datapack/wheels`). torch itself cannot be
# carried (too large): the machine must have a CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu}
BUDGET_S=${BUDGET_S:-420}
BATCH=${BATCH:-64}
PACK=${PACK:-datapack/pack.npz}
WHEELS=${WHEELS:-datapack/wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE

missing=$($PY - <<'PYEOF'
import importlib.util
need = {"torch": "torch", "numpy": "numpy", "scipy": "scipy", "PIL": "pillow", "safetensors": "safetensors",
        "segment_anything": "segment-anything", "imageio": "imageio"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
if [ -n "$missing" ]; then
  echo "missing: $missing"
  case " $missing " in *" torch "*) echo "error: torch is missing and cannot be installed offline" >&2; exit 2;; esac
  if [ -d "$WHEELS" ]; then
    $PY -m pip install -q --no-index --find-links "$WHEELS" $missing
  else
    $PY -m pip install -q $missing || { echo "error: cannot install $missing (no $WHEELS, no network)" >&2; exit 2; }
  fi
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
[ -f "$PACK" ] || { echo "error: data pack $PACK not found (build it with scripts/pack_data.py and carry datapack/)" >&2; exit 2; }
mkdir -p "$OUT"
$PY training/gpu_train.py --pack "$PACK" --out "$OUT" --budget-s "$BUDGET_S" --batch-size "$BATCH" \
  --work "${WORK:-/tmp/samsp_gpu_work}" "$@" 2>&1 | tee "$OUT/log.txt"
