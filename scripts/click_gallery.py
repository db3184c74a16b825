"""A picture of what simulated clicks do, as the plugin shows them: one row per object, two models side by side.

For evenly spaced DSB2018 val images (the nucleus of median area, the object NoC is measured on) the
simulated user of ``metrics.simulate_clicks`` clicks through the plugin's ``ObjectEditor``; each row shows
the image around the object with the ground truth (green), then each model's mask (red) after the first
and after the fifth click (yellow: positive clicks, cyan: negative), with the IoU in the title.

    PYTHONPATH=$PWD python scripts/click_gallery.py --data $SAMSP_DATA --models v3.1=runs/a.safetensors \
        v3.2=runs/b.safetensors --rows 6 --out docs/figures/click_gallery.png
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SHOWN_CLICKS = (1, 5)
HALF_WINDOW = 40  # px around the object's centre


def click_masks(segmenter, image: np.ndarray, obj: np.ndarray, clicks: int) -> tuple[list[np.ndarray], dict]:
    """The painted mask after each simulated click, and the run: ``segmenter`` is a
    ``training/evaluate_model.SamSegmenter(..., clicks="shown")``, so each click goes through the
    plugin's ObjectEditor exactly as ``evaluate_model.py --clicks shown`` scores it."""
    from napari_samsp import metrics

    predict = segmenter.click_predictor(image)
    masks: list[np.ndarray] = []

    def recorded(points, labels, prev):
        mask, logits = predict(points, labels, prev)
        masks.append(mask)
        return mask, logits

    run = metrics.simulate_clicks(recorded, obj, max_clicks=clicks, iou_targets=(0.99,))
    return masks, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder holding dsb2018_nuclei")
    ap.add_argument("--models", nargs="+", default=["default=default"], metavar="NAME=MODEL")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--out", default="docs/figures/click_gallery.png")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from common import val_pairs
    from evaluate_model import SamSegmenter, pick_noc_object

    from napari_samsp.io import read_image, read_mask
    from napari_samsp.models.checkpoints import load_model

    torch.set_num_threads(args.threads)
    picks = val_pairs(Path(args.data) / "dsb2018_nuclei", args.rows)
    models = []
    for spec in args.models:
        name, _, path = spec.partition("=")
        lm = load_model(path or name, device="cpu")
        models.append((name, SamSegmenter(lm.model, lm.model_id, clicks="shown", prompt_flip_views=lm.model_card.prompt_flip_views)))

    cols = 1 + len(models) * len(SHOWN_CLICKS)
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.9 * cols, 1.9 * len(picks)), squeeze=False)
    for row, pair in enumerate(picks):
        image, gt = read_image(pair.image_path), read_mask(pair.mask_path)
        obj = pick_noc_object(gt, instance=True)
        ys, xs = np.nonzero(obj)
        cy, cx = int(ys.mean()), int(xs.mean())
        y0, x0 = max(0, cy - HALF_WINDOW), max(0, cx - HALF_WINDOW)
        view = (slice(y0, cy + HALF_WINDOW), slice(x0, cx + HALF_WINDOW))
        axes[row, 0].imshow(image[view])
        axes[row, 0].contour(obj[view], [0.5], colors="lime", linewidths=0.8)
        axes[row, 0].set_title(f"{pair.stem[:8]} {image.shape[0]}x{image.shape[1]}", fontsize=7)
        for m, (name, segmenter) in enumerate(models):
            masks, run = click_masks(segmenter, image, obj, max(SHOWN_CLICKS))
            for j, k in enumerate(SHOWN_CLICKS):
                ax = axes[row, 1 + m * len(SHOWN_CLICKS) + j]
                k = min(k, len(masks))  # a run that reached the target stops early
                ax.imshow(image[view])
                ax.contour(obj[view], [0.5], colors="lime", linewidths=0.8)
                if masks[k - 1][view].any():
                    ax.contour(masks[k - 1][view], [0.5], colors="red", linewidths=0.8)
                for x, y, lab in run["clicks"][:k]:
                    ax.plot(x - x0, y - y0, "o", ms=3, color="yellow" if lab else "cyan")
                ax.set_title(f"{name}, click {k}: IoU {run['ious'][k - 1]:.2f}", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
