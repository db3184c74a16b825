"""Everything-mode against upstream ``SamAutomaticMaskGenerator``: speed and masks, on the same weights and image.

A script, not a test. Without ``--model`` it writes random vit_b weights the way
official checkpoints are saved (mask outputs scaled x30, as in
tests/test_everything.py, so that loosened filters keep masks) and compares on
one image: a DSB 2018 validation image from ``$SAMSP_DATA`` when present, else a
generated one. Two parameter sets run by default: upstream's default filters
(with random weights they drop every candidate at the predicted-IoU test) and
the loosened filters of the test (masks survive, so the post-processing is paid).

    OMP_WAIT_POLICY=PASSIVE python training/bench_everything.py --threads 1 --points-per-side 8 --repeats 2 --embed-repeats 1 --out /tmp/ev.json

Rows: the embedding (ours: ``Predictor.set_image``, upstream: ``SamPredictor.set_image``) and the
grid from that embedding (ours: everything-mode on the cached embedding; upstream: ``generate`` with
its ``set_image`` made a no-op), interleaved, medians over ``--repeats``. Masks are matched one to one
(Hungarian on mask IoU); each side decodes its own embedding, so they agree only where the
preprocessing does (issue 9.1); the test checks agreement on a shared embedding.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see tests/conftest.py

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_ROOT, machine, set_threads  # noqa: E402

LOOSE = dict(pred_iou_thresh=0.01, stability_score_thresh=0.3)


def random_official_vit_b(path: Path, seed: int = 0, scale: float = 30.0) -> Path:
    """Random vit_b saved like an official checkpoint (``torch.save(state_dict)``), mask outputs scaled."""
    from napari_samsp.models import build_model

    torch.manual_seed(seed)
    model = build_model("vit_b")
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(scale)
    torch.save(model.state_dict(), path)
    return path


def pick_image(data: Path | None) -> tuple[str, np.ndarray]:
    """(name, image): the first 256 x 256 DSB validation image, or a generated (256, 256) one."""
    folder = None if data is None else data / "dsb2018_nuclei"
    if folder is not None and (folder / "images").is_dir():
        from napari_samsp.io import read_image

        splits = json.loads((folder / "splits.json").read_text()) if (folder / "splits.json").is_file() else {}
        stems = splits.get("val") or sorted(p.stem for p in (folder / "images").iterdir())
        for stem in stems:
            files = list((folder / "images").glob(f"{stem}.*"))
            if files:
                img = read_image(files[0])
                if img.shape[:2] == (256, 256):
                    return stem, img
    from napari_samsp.sample_data_gen import synthetic_nuclei

    return "synthetic_nuclei_256", synthetic_nuclei()[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else contextlib.nullcontext()


def match_masks(ours, records: list[dict]) -> dict:
    """Counts and the one-to-one matched mask IoUs of our masks and upstream's records."""
    from napari_samsp.metrics import match_mask_sets

    out = {"ours": len(ours), "upstream": len(records)}
    if not len(ours) or not records:
        out.update(matched=0, min_iou=None, mean_iou=None)
        return out
    _, _, m = match_mask_sets(np.stack([ours.mask(i) for i in range(len(ours))]),
                              np.stack([r["segmentation"] for r in records]))
    out.update(matched=int(len(m)), min_iou=float(m.min()), mean_iou=float(m.mean()))
    return out


def load_pair(weights: Path, device: str = "cpu"):
    """(ours, upstream): our LoadedModel and upstream's ``Sam`` from the same official-format file."""
    from segment_anything import sam_model_registry

    from napari_samsp.models.checkpoints import load_model

    loaded = load_model(str(weights), device=device)
    sam = sam_model_registry[loaded.model.config.name](checkpoint=str(weights)).to(device).eval()
    return loaded, sam


def compare(
    loaded,
    sam,
    image: np.ndarray,
    options: dict,
    device: str = "cpu",
    bf16: bool = False,
    repeats: int = 1,
    warmup: int = 1,
    embed_repeats: int | None = None,
) -> dict:
    """Time ours (``loaded``) and upstream's generator (on ``sam``, the same weights) on one image with
    the same ``options`` (EverythingOptions fields); match the masks."""
    from segment_anything import SamAutomaticMaskGenerator

    from napari_samsp.everything import EverythingOptions, everything_masks
    from napari_samsp.predictor import EmbeddingCache, Predictor
    from napari_samsp.transforms import to_rgb_uint8

    dev = torch.device(device)
    opts = EverythingOptions(**options)
    rgb = to_rgb_uint8(image)
    gen = SamAutomaticMaskGenerator(
        sam, points_per_side=opts.points_per_side, points_per_batch=opts.points_per_batch,
        pred_iou_thresh=opts.pred_iou_thresh, stability_score_thresh=opts.stability_score_thresh,
        stability_score_offset=opts.stability_score_offset, box_nms_thresh=opts.box_nms_thresh,
        crop_n_layers=0, min_mask_region_area=0, output_mode="binary_mask",
    )
    def clock() -> float:
        _sync(dev)
        return time.perf_counter()

    predictor = Predictor(loaded.model, loaded.model_id, EmbeddingCache(None))
    up = gen.predictor
    rows: dict[str, list[float]] = {k: [] for k in ("ours_embed", "upstream_embed", "ours_grid", "upstream_grid")}
    with _autocast(dev, bf16):
        for r in range(-warmup, repeats if embed_repeats is None else embed_repeats):  # r < 0: warm-up
            t0 = clock()
            predictor.cache.clear_memory()
            predictor.set_image(image)
            t1 = clock()
            up.set_image(rgb)
            t2 = clock()
            if r >= 0:
                rows["ours_embed"].append(t1 - t0)
                rows["upstream_embed"].append(t2 - t1)
        # The grid alone, interleaved: ours from the cached embedding, upstream's generate with its
        # set_image / reset_image made no-ops so it decodes the features it already holds.
        real = up.set_image, up.reset_image
        up.set_image = lambda *a, **k: None
        up.reset_image = lambda: None
        try:
            for r in range(-warmup, repeats):
                t0 = clock()
                ours = everything_masks(predictor, None, opts)
                t1 = clock()
                records = gen.generate(rgb)
                t2 = clock()
                if r >= 0:
                    rows["ours_grid"].append(t1 - t0)
                    rows["upstream_grid"].append(t2 - t1)
        finally:
            up.set_image, up.reset_image = real
    result = {k: float(np.median(v)) for k, v in rows.items()}
    result["repeats"] = repeats
    result["ours_total"] = result["ours_embed"] + result["ours_grid"]
    result["upstream_total"] = result["upstream_embed"] + result["upstream_grid"]
    result["speedup_grid"] = result["upstream_grid"] / result["ours_grid"]
    result["speedup_total"] = result["upstream_total"] / result["ours_total"]
    result["masks"] = match_masks(ours, records)
    result["options"] = dict(options)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="official-format SAM .pth (default: random vit_b, written to a temp file)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--points-per-side", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--embed-repeats", type=int, default=None, help="timed embeddings (default: --repeats)")
    ap.add_argument("--data", type=Path, default=DATA_ROOT)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    import tempfile

    name, image = pick_image(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.model or random_official_vit_b(Path(tmp) / "sam_vit_b_random.pth")
        loaded, sam = load_pair(weights, args.device)
        base = dict(points_per_side=args.points_per_side)
        runs = {
            "upstream defaults": compare(loaded, sam, image, base, args.device, args.bf16, args.repeats, args.warmup, args.embed_repeats),
            "loosened (test)": compare(loaded, sam, image, {**base, **LOOSE}, args.device, args.bf16, args.repeats, args.warmup, args.embed_repeats),
        }
    report = {
        "machine": machine(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "threads": args.threads,
        "image": f"{name} {tuple(image.shape)}",
        "weights": str(args.model or "random vit_b (official format, mask outputs x30)"),
        "points": args.points_per_side ** 2,
        "runs": runs,
    }
    print(f"\n{report['image']}, {report['weights']}, {report['points']} points, {report['device']}, torch {report['torch']}\n")
    print("| filters | embedding ours / upstream (s) | grid from the embedding, ours / upstream (s) | speed-up grid / total | masks ours / upstream, matched IoU min |")
    print("|---|---:|---:|---:|---|")
    for label, r in runs.items():
        m = r["masks"]
        iou = "n/a" if m["min_iou"] is None else f"{m['min_iou']:.3f}"
        print(f"| {label} | {r['ours_embed']:.2f} / {r['upstream_embed']:.2f} | {r['ours_grid']:.2f} / {r['upstream_grid']:.2f} | "
              f"{r['speedup_grid']:.2f}x / {r['speedup_total']:.2f}x | {m['ours']} / {m['upstream']}, {iou} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
