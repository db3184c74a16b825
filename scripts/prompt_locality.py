"""Do box and click prompts stay on their object? Numbers for docs/PLUGIN.md (issue 11, breaks 3 and 5).

1. Boxes on real nuclei (DSB2018 val images, the largest nucleus of each): the raw decoded
   mask against what the annotator paints (``confine_mask`` with the plugin's
   ``USER_BOX_MARGIN``: inside the box, one object): pieces, pixels outside the box, IoU with the truth.
2. Clicks on a large image (DSB2018 images tiled into ``--large`` px squares, a click at the
   centre of nuclei near the middle): the whole plane shrunk to the model input (before) against
   the decoding window of ``choose_window`` (after): mask size, IoU, time per click.

    PYTHONPATH=$PWD python scripts/prompt_locality.py --data $SAMSP_DATA
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

EIGHT = np.ones((3, 3), bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("SAMSP_DATA"), required=os.environ.get("SAMSP_DATA") is None)
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--large", type=int, default=4000, help="side of the large test image")
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from napari_samsp.autoseg import default_tiling
    from napari_samsp.interactive import StackNormaliser, prompts_on_plane
    from napari_samsp.io import read_image, read_mask, read_splits
    from napari_samsp.local_prompts import (
        USER_BOX_MARGIN,
        WindowedEditor,
        _grown_box,
        choose_window,
        confine_mask,
        prompt_extent,
    )
    from napari_samsp.models.checkpoints import load_model
    from napari_samsp.predictor import EmbeddingCache, Predictor

    loaded = load_model(args.model, device="cpu")
    predictor = Predictor.for_loaded(loaded, EmbeddingCache(None, max_memory_entries=8))
    root = Path(args.data) / "dsb2018_nuclei"
    splits = read_splits(root) or {}
    stems = sorted(splits.get("val") or [p.stem for p in (root / "images").glob("*.png")])[: args.images]

    raw_rows, conf_rows = [], []
    for stem in stems:
        image, gt = read_image(root / "images" / f"{stem}.png"), read_mask(root / "masks" / f"{stem}.png")
        ids, counts = np.unique(gt[gt > 0], return_counts=True)
        if not len(ids):
            continue
        target = gt == ids[np.argmax(counts)]
        rows, cols = np.nonzero(target)
        prompts = prompts_on_plane(None, None, [np.array([[rows.min(), cols.min()], [rows.max(), cols.max()]], float)])
        predictor.set_image(image)
        raw = predictor.predict(box=prompts.box).masks[0]
        confined = confine_mask(raw, prompts, margin=USER_BOX_MARGIN)
        r0, r1, c0, c1 = _grown_box(prompts.box, raw.shape, USER_BOX_MARGIN)
        inside = np.zeros_like(raw)
        inside[r0:r1, c0:c1] = True
        for mask, out in ((raw, raw_rows), (confined, conf_rows)):
            out.append((ndimage.label(mask, structure=EIGHT)[1], np.count_nonzero(mask & ~inside), iou(mask, target)))
    print(f"model {loaded.model_id}; {os.cpu_count()} CPU core(s), one torch thread")
    print(f"1. box around the largest nucleus of {len(raw_rows)} DSB2018 val images (median over images)")
    for name, rows_ in (("raw model mask", raw_rows), ("painted (confined)", conf_rows)):
        a = np.array(rows_, float)
        print(
            f"   {name:20s} pieces {np.median(a[:, 0]):5.0f}  px outside the box {np.median(a[:, 1]):7.0f}  "
            f"IoU {np.median(a[:, 2]):.2f}  images with px outside: {int((a[:, 1] > 0).sum())}/{len(a)}"
        )

    # 2. A large image made of DSB tiles.
    tile_img = read_image(root / "images" / f"{stems[0]}.png")
    tile_gt = read_mask(root / "masks" / f"{stems[0]}.png")
    reps = (-(-args.large // tile_img.shape[0]), -(-args.large // tile_img.shape[1]))
    big = np.tile(tile_img, reps + ((1,) if tile_img.ndim == 3 else ()))[: args.large, : args.large]
    big_gt = np.tile(tile_gt, reps)[: args.large, : args.large]
    comp, n = ndimage.label(big_gt > 0)
    plane = StackNormaliser(big, rgb=big.ndim == 3).plane()
    _, tile, overlap = default_tiling(loaded.model.img_size)
    centre = np.array(plane.shape[:2]) / 2
    objs = ndimage.center_of_mass(big_gt > 0, comp, range(1, n + 1))
    order = np.argsort([np.hypot(*(np.array(c) - centre)) for c in objs])[: args.clicks]
    whole_rows, win_rows = [], []
    t0 = time.perf_counter()
    predictor.set_image(plane)
    whole_embed = time.perf_counter() - t0
    for k in order:
        truth = comp == k + 1
        r, c = (int(round(v)) for v in objs[k])
        if not truth[r, c]:
            rr, cc = np.nonzero(truth)
            r, c = int(rr[len(rr) // 2]), int(cc[len(cc) // 2])
        prompts = prompts_on_plane(np.array([[r, c]], float), None)
        predictor.set_image(plane)
        t = time.perf_counter()
        whole = predictor.predict(point_coords=prompts.points, point_labels=prompts.labels).masks[0]
        whole_rows.append((np.count_nonzero(whole), iou(whole, truth), time.perf_counter() - t, truth.sum()))
        t = time.perf_counter()
        window = choose_window(plane.shape[:2], prompt_extent(prompts), tile, overlap)
        predictor.set_image(plane[window.slices])
        editor = WindowedEditor(predictor, np.zeros(plane.shape[:2], np.uint32), 1, window)
        obj = editor.update(prompts) == 1
        win_rows.append((np.count_nonzero(obj), iou(obj, truth), time.perf_counter() - t, truth.sum()))
    print(
        f"2. clicks on {args.clicks} nuclei of a {args.large} x {args.large} image tiled from DSB2018 {stems[0]} "
        f"(median object {int(np.median([r[3] for r in win_rows]))} px; whole-plane embedding {whole_embed:.1f} s)"
    )
    for name, rows_ in (("whole plane shrunk", whole_rows), (f"window ({tile} px tile)", win_rows)):
        a = np.array(rows_, float)
        print(
            f"   {name:20s} median mask {np.median(a[:, 0]):8.0f} px  max {a[:, 0].max():8.0f} px  "
            f"median IoU {np.median(a[:, 1]):.2f}  median time per click {np.median(a[:, 2]):.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
