"""What a needless negative click does: one placed on background right next to a good mask.

For 20 evenly spaced val images of DSB2018 (the median-area nucleus) and HC18 (the head): a
positive click at the object's innermost pixel through the plugin's ``ObjectEditor``, then a
negative click on true background 2-4 px outside the object where the mask is already right.
Prints the mean IoU before and after, and how many objects lost more than 0.1.

    PYTHONPATH=$PWD python scripts/negative_click_probe.py --data $SAMSP_DATA [--model default]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402


def probe_object(predictor, image: np.ndarray, obj: np.ndarray) -> tuple[float, float] | None:
    """(IoU after the positive click, IoU after adding the needless negative), or None without a place for it."""
    from napari_samsp.interactive import ObjectEditor, PromptSet, innermost_pixel
    from napari_samsp.metrics import iou

    emb = predictor.embed(image)
    r, c = innermost_pixel(obj)  # type: ignore[misc]
    editor = ObjectEditor(predictor, np.zeros(obj.shape, np.uint32), 1, embedding=emb)
    first = editor.update(PromptSet(np.array([[c, r]], np.float32), np.array([1]))) == 1
    ring = ndimage.binary_dilation(obj, iterations=4) & ~ndimage.binary_dilation(obj, iterations=2) & ~first
    if not ring.any():
        return None
    ys, xs = np.nonzero(ring)
    k = len(ys) // 2
    second = editor.update(PromptSet(np.array([[c, r], [xs[k], ys[k]]], np.float32), np.array([1, 0]))) == 1
    return iou(first, obj), iou(second, obj)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("SAMSP_DATA"), required=os.environ.get("SAMSP_DATA") is None)
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from evaluate_model import pick_noc_object

    from napari_samsp.io import read_image, read_mask
    from napari_samsp.models.checkpoints import load_model
    from napari_samsp.predictor import Predictor

    loaded = load_model(args.model, device="cpu")
    predictor = Predictor.for_loaded(loaded)
    root = Path(args.data)
    print(f"model {loaded.model_id}")
    for name in ("dsb2018_nuclei", "hc18_fetal_head_us"):
        val = json.loads((root / name / "splits.json").read_text())["val"]
        rows = []
        for stem in val[:: max(1, len(val) // args.images)][: args.images]:
            image = read_image(next((root / name / "images").glob(stem + ".*")))
            gt = read_mask(next((root / name / "masks").glob(stem + ".*")))
            obj = pick_noc_object(gt, instance=name == "dsb2018_nuclei")
            row = None if obj is None else probe_object(predictor, image, obj)
            if row is not None:
                rows.append(row)
        a = np.array(rows)
        print(f"{name}: {len(a)} objects, IoU after one click {a[:, 0].mean():.3f} -> with a needless negative "
              f"{a[:, 1].mean():.3f}; lost more than 0.1: {int((a[:, 0] - a[:, 1] > 0.1).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
