"""Measure our Predictor against upstream SamPredictor on the same random official-format weights.

For each model (``small``: upstream modules shaped like our ``tiny``; ``vit_b``: upstream
``sam_model_registry['vit_b']``), random weights are saved as upstream saves checkpoints and
loaded with ``load_model``. On a synthetic non-square image and one non-square image per public
data set (``SAMSP_DATA``), every prompt kind (points, box, points + box) with multimask off/on
is decoded by both predictors. Reported per case: mask IoU (masks that upstream makes
non-trivial) and the max |logit difference| on the original grid; and, for comparison, the
same with our old preprocessing (``samsp-v1``: pad, then normalise).

    PYTHONPATH=. python training/parity_upstream.py --models small vit_b --out runs/parity.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_ROOT  # noqa: E402

from _upstream_models import upstream_sam  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402
from test_parity_upstream import REAL_IMAGES, _iou, _our_logits, _prompts, _synthetic_image, _upstream_logits  # noqa: E402

from napari_samsp.io import read_image  # noqa: E402
from napari_samsp.models.checkpoints import load_model  # noqa: E402
from napari_samsp.predictor import Predictor  # noqa: E402
from napari_samsp.transforms import LEGACY_PREPROCESSING, SAM_PREPROCESSING, to_rgb_uint8  # noqa: E402


def images(data_root: Path | None) -> dict[str, np.ndarray]:
    out = {"synthetic": _synthetic_image()}
    for ds, stem in sorted(REAL_IMAGES.items()):
        folder = None if data_root is None else data_root / ds / "images"
        if folder is not None and folder.is_dir():
            out[ds] = to_rgb_uint8(read_image(next(folder.glob(stem + ".*"))))
    return out


def measure(up: SamPredictor, ours: Predictor, rgb: np.ndarray) -> list[dict]:
    rows = []
    for prep in (SAM_PREPROCESSING, LEGACY_PREPROCESSING):
        ours.model.preprocessing = prep
        ours.set_image(rgb)
        if prep == SAM_PREPROCESSING:
            up.set_image(rgb)
        for name, prompts in _prompts(*rgb.shape[:2]).items():
            for multimask in (False, True):
                up_masks, up_logits = _upstream_logits(up, multimask, **prompts)
                our_masks, our_logits = _our_logits(ours, multimask, **prompts)
                fg = up_masks.mean(axis=(1, 2))
                ious = [_iou(a, b) for a, b, f in zip(our_masks, up_masks, fg) if 0.001 < f < 0.999]
                rows.append({
                    "preprocessing": prep, "prompt": name, "multimask": multimask,
                    "min_iou": min(ious) if ious else None, "mean_iou": float(np.mean(ious)) if ious else None,
                    "max_abs_logit_diff": float(np.abs(our_logits - up_logits).max()),
                    "upstream_logit_std": float(up_logits.std()), "upstream_fg": [round(float(f), 4) for f in fg],
                })
    ours.model.preprocessing = SAM_PREPROCESSING
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["small"], choices=["small", "vit_b"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    imgs = images(DATA_ROOT if DATA_ROOT.is_dir() else None)
    result = {"machine": f"{os.cpu_count()} CPU threads visible, torch {torch.__version__}, {args.threads} thread(s)", "models": {}}
    for kind in args.models:
        upstream = upstream_sam("vit_b" if kind == "vit_b" else "tiny")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"sam_{kind}_random.pth"
            torch.save(upstream.state_dict(), path)
            loaded = load_model(str(path), device="cpu")
        up, ours = SamPredictor(upstream), Predictor(loaded.model, loaded.model_id, None)
        per_image = {}
        for name, rgb in imgs.items():
            t0 = time.time()
            rows = measure(up, ours, rgb)
            per_image[name] = {"shape": list(rgb.shape[:2]), "rows": rows, "seconds": round(time.time() - t0, 1)}
            for prep in (SAM_PREPROCESSING, LEGACY_PREPROCESSING):
                sel = [r for r in rows if r["preprocessing"] == prep]
                ious = [r["min_iou"] for r in sel if r["min_iou"] is not None]
                print(f"{kind:6} {name:20} {prep:9} min IoU {min(ious):.4f} mean IoU {np.mean(ious):.4f} "
                      f"max |dlogit| {max(r['max_abs_logit_diff'] for r in sel):.2e}", flush=True)
        result["models"][kind] = per_image
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
