"""Inference timings on this machine: embedding, one click, prompt-free segmentation, and upstream's AMG.

A script, not a test. Random ``tiny`` weights are fine for timing the encoder
and a click; prompt-free *instance* timings depend on how many objects the model
finds, so pass ``--model`` with trained weights for representative numbers.

    OMP_WAIT_POLICY=PASSIVE python training/bench_inference.py --threads 2 --out /tmp/bench.json

Prints a markdown table and writes JSON to ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see tests/conftest.py

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_ROOT, machine, set_threads  # noqa: E402


def _load(spec: str | None):
    """(model, model_id, description, is_random); ``spec`` is a file or a config name, None = random tiny."""
    try:
        from napari_samsp.models.checkpoints import load_model
    except ImportError:  # the checkpoint module is optional for timing
        load_model = None
    if spec is None or load_model is None:
        from napari_samsp.models import build_model

        torch.manual_seed(0)
        name = spec or "tiny"
        return build_model(name).eval(), f"random-{name}-bench", f"{name} (random weights)", True
    loaded = load_model(spec, device="cpu")
    desc = f"{loaded.model.config.name} from {loaded.source}" + (" (random weights)" if loaded.is_random else "")
    return loaded.model.eval(), loaded.model_id, desc, loaded.is_random


def _read(path: Path) -> np.ndarray:
    try:
        from napari_samsp.io import read_image

        return read_image(path)
    except ImportError:
        from skimage.io import imread

        return imread(path)


def _pick_images(data: Path, wanted: list[str] | None) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, image, GT labels or None): a typical 256x256 DSB val image, the largest one,
    and that one upsampled 2x (tiled for 256 px models); a synthetic image without data."""
    folder = data / "dsb2018_nuclei"
    if not (folder / "images").is_dir():
        rng = np.random.default_rng(0)
        gt = np.zeros((256, 256), np.uint16)
        yy, xx = np.mgrid[:256, :256]
        for k in range(1, 31):
            cy, cx, r = rng.integers(10, 246), rng.integers(10, 246), rng.integers(5, 12)
            gt[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
        img = ((gt > 0) * 180 + rng.normal(20, 8, gt.shape)).clip(0, 255).astype(np.uint8)
        return [("synthetic_256x256", img, gt)]
    files = {p.stem: p for p in sorted((folder / "images").iterdir())}

    def load(stem: str) -> tuple[np.ndarray, np.ndarray | None]:
        mask = folder / "masks" / f"{stem}.png"
        return _read(files[stem]), (_read(mask) if mask.is_file() else None)

    if wanted:
        return [(stem, *load(stem)) for stem in wanted]
    index = json.loads((folder / "index.json").read_text())
    splits = json.loads((folder / "splits.json").read_text()) if (folder / "splits.json").is_file() else {}
    val = set(splits.get("val", [e["stem"] for e in index]))
    entries = [e for e in index if e["stem"] in val and e["stem"] in files]
    small = next(e for e in entries if list(e["size"]) == [256, 256])
    large = max(entries, key=lambda e: (max(e["size"]), e["n_instances"]))
    out = [(small["stem"], *load(small["stem"]))]
    if max(large["size"]) > 256:
        big, big_gt = load(large["stem"])
        out.append((large["stem"], big, big_gt))
        # 2x upsampled: exercises the tiled path (longest side > 2 * img_size for 256 px models)
        up = lambda a: None if a is None else np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)  # noqa: E731
        out.append((large["stem"] + "-x2", up(big), up(big_gt)))
    return out


@contextlib.contextmanager
def _gt_foreground(predictor, image: np.ndarray, gt: np.ndarray, img_size: int):
    """Replace the self-prompting passes by the ground-truth foreground of the (tile of)
    ``image`` being segmented (found by its embedding's pixel key); the object decoding stays real."""
    from napari_samsp.models.sam_sp import PassOutput, SamSP
    from napari_samsp.predictor import image_key
    from napari_samsp.tiling import plan_tiles
    from napari_samsp.transforms import to_rgb_uint8

    rgb = to_rgb_uint8(image)
    by_key = {image_key(rgb): gt}
    t = 2 * img_size
    for y0, y1, x0, x1 in plan_tiles(gt.shape, t, t // 4):
        by_key[image_key(np.ascontiguousarray(rgb[y0:y1, x0:x1]))] = gt[y0:y1, x0:x1]
    original = SamSP.run_passes
    embed = predictor.embed
    made = {}  # id(features) -> the Embedding they belong to

    def recording_embed(image, rgb=None):
        emb = embed(image, rgb)
        made[id(emb.features)] = emb
        return emb

    def run_passes(self, features, num_passes=None):
        emb = made[id(features)]
        fg = by_key[emb.key] > 0
        low = emb.transform.mask_to_low_res(fg, predictor.low_res_size) * 20.0 - 10.0
        return [PassOutput(low, torch.ones(1, 1)) for _ in range(num_passes or self.num_passes)]

    SamSP.run_passes = run_passes
    predictor.embed = recording_embed
    try:
        yield
    finally:
        SamSP.run_passes = original
        del predictor.embed


def _time(fn, n: int, warmup: int = 1) -> tuple[float, float]:
    """Mean and stdev in seconds of ``fn()`` over ``n`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.mean(times), (statistics.stdev(times) if len(times) > 1 else 0.0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="weights file or config name (default: random tiny)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=5, help="timed repetitions of the fast steps")
    ap.add_argument("--n-auto", type=int, default=2, help="timed repetitions of prompt-free segmentation")
    ap.add_argument("--data", type=Path, default=DATA_ROOT)
    ap.add_argument("--images", nargs="*", default=None, help="DSB stems to use instead of the automatic choice")
    ap.add_argument("--amg-points", type=int, default=32, help="points_per_side of upstream's SamAutomaticMaskGenerator (0 = skip)")
    ap.add_argument("--fast-only", action="store_true", help="only embedding, cache and click timings")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    set_threads(args.threads)
    from napari_samsp.autoseg import segment, segment_image
    from napari_samsp.predictor import EmbeddingCache, Predictor

    model, model_id, desc, is_random = _load(args.model)
    s = model.img_size
    rng = np.random.default_rng(0)
    result: dict = {
        "model": desc,
        "model_id": model_id,
        "img_size": s,
        "threads": args.threads,
        "cpu": machine(),
        "torch": torch.__version__,
        "n": args.n,
        "rows": [],
    }
    rows = result["rows"]

    def add(what: str, image: str, mean: float, sd: float, note: str = "") -> None:
        rows.append({"what": what, "image": image, "mean_s": mean, "sd_s": sd, "note": note})
        print(f"  {what:<44} {image:<26} {mean * 1000:9.1f} ms  ± {sd * 1000:.1f}  {note}", flush=True)

    # 1. embedding: a fresh image every time (no cache hit), s x s input
    with tempfile.TemporaryDirectory() as tmp:
        pred = Predictor(model, model_id, EmbeddingCache(None, max_memory_entries=1))
        imgs = iter([rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(args.n + 1)])
        add("embedding (set_image, cache miss)", f"random {s}x{s}", *_time(lambda: pred.set_image(next(imgs)), args.n))
        x = model.normalize_pixels(torch.rand(1, 3, s, s) * 255)

        def enc():
            with torch.inference_mode():
                model.encode(x)

        add("encoder forward only", f"{s}x{s} tensor", *_time(enc, args.n))
        img = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
        Predictor(model, model_id, EmbeddingCache(tmp)).set_image(img)

        def disk_hit():
            p = Predictor(model, model_id, EmbeddingCache(tmp))
            p.set_image(img)
            assert p.last_embed_was_cached

        add("set_image, disk cache hit (fresh process state)", f"random {s}x{s}", *_time(disk_hit, args.n))

    images = _pick_images(args.data, args.images)
    result["images"] = [{"name": n, "shape": list(a.shape), "gt_objects": None if g is None else int(g.max())} for n, a, g in images]
    pred = Predictor(model, model_id, EmbeddingCache(None, max_memory_entries=1))

    # 2. one click: a point plus the previous low-res logits, on an image already embedded
    name, image, _ = images[0]
    pred.set_image(image)
    h, w = pred.original_size
    state = {"logits": pred.predict(np.array([[w / 2, h / 2]]), np.array([1])).logits}

    def click():
        pt = np.array([[rng.uniform(0, w), rng.uniform(0, h)]])
        out = pred.predict(pt, np.array([int(rng.integers(0, 2))]), mask_input=state["logits"])
        state["logits"] = out.logits

    add("decode one click (+ previous logits)", f"{name} {h}x{w}", *_time(click, args.n * 4))
    # the same averaged over mirror views (a card's prompt_flip_views 2 or 4); a new image
    # is embedded once per view, so the embedding is timed too
    for views in (2, 4):
        mirrored = Predictor(model, model_id, EmbeddingCache(None, max_memory_entries=2), flip_views=views)

        def embed_views(mirrored=mirrored):
            mirrored.cache.clear_memory()
            mirrored.set_image(image)

        add(f"embedding with {views} mirror views", f"{name} {h}x{w}", *_time(embed_views, args.n))

        def click_views(mirrored=mirrored):
            pt = np.array([[rng.uniform(0, w), rng.uniform(0, h)]])
            out = mirrored.predict(pt, np.array([int(rng.integers(0, 2))]), mask_input=state["logits"])
            state["logits"] = out.logits

        add(f"decode one click, {views} mirror views", f"{name} {h}x{w}", *_time(click_views, args.n * 4))

    # 3. prompt-free segmentation, embedding included (cache off) and from cached features
    for i_img, (name, image, gt) in enumerate([] if args.fast_only else images):
        hh, ww = image.shape[:2]
        tiled = max(hh, ww) > 2 * s
        label = f"{name[:8]}{'-x2' if name.endswith('-x2') else ''} {hh}x{ww}"
        counts: dict[str, int] = {}
        for mode in ("semantic", "instance"):
            if mode == "instance" and is_random and i_img > 0:
                # random weights segment noise into ~1000 specks per 256 px: minutes of
                # decoding that say nothing; the GT-foreground row below is the timing
                continue

            def run(mode=mode):
                pred.cache.clear_memory()
                counts[mode] = int(segment_image(pred, image, mode=mode).labels.max())

            add(f"auto {mode}, image -> labels", label, *_time(run, args.n_auto, warmup=0), f"{counts.get(mode)} objects" + (", tiled" if tiled else ""))
            if not tiled:
                pred.set_image(image)
                add(f"auto {mode}, from cached embedding", label, *_time(lambda mode=mode: segment(pred, mode=mode), args.n_auto, warmup=0))
        ours = next((r["mean_s"] for r in rows if r["what"] == "auto instance, image -> labels" and r["image"] == label), float("nan"))
        if gt is not None:
            # Random weights find noise, not nuclei: the object count (and so the
            # instance cost) is arbitrary. Here the self-prompting passes are replaced
            # by the ground-truth foreground; splitting, per-object decoding (the
            # real decoder) and merging run as usual on a realistic object count.
            with _gt_foreground(pred, image, gt, s):
                def run_gt():
                    pred.cache.clear_memory()
                    counts["gt"] = int(segment_image(pred, image, mode="instance").labels.max())

                mean, sd = _time(run_gt, args.n_auto, warmup=0)
            add("auto instance, GT foreground (see notes)", label, mean, sd, f"{counts['gt']} objects, {int(gt.max())} in GT" + (", tiled" if tiled else ""))
            ours = mean

        # 4. upstream's automatic mask generator on the same image (its own embedding included)
        if args.amg_points:
            from segment_anything import SamAutomaticMaskGenerator

            from napari_samsp.transforms import to_rgb_uint8

            rgb = to_rgb_uint8(image)
            settings = [("default filters", {})]
            if i_img == 0:  # with random weights few masks pass the filters; this is the upper bound
                settings.append(("no filters", {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}))
            for kind, kw in settings:
                amg = SamAutomaticMaskGenerator(model, points_per_side=args.amg_points, **kw)
                n_masks = {}

                def run_amg():
                    n_masks["n"] = len(amg.generate(rgb))

                mean, sd = _time(run_amg, 1, warmup=0)
                add(f"upstream AMG {args.amg_points}x{args.amg_points} pts, {kind}", label, mean, sd, f"{n_masks['n']} masks; {mean / ours:.1f}x our instance time ({'GT foreground' if gt is not None else 'own foreground'})")
                rows[-1]["ratio_vs_ours_instance"] = mean / ours

    print()
    print(f"model: {desc}; input {s} px; torch threads {args.threads}; {result['cpu']}")
    print()
    print("| step | image | mean (ms) | sd (ms) | note |")
    print("|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['what']} | {r['image']} | {r['mean_s'] * 1000:.1f} | {r['sd_s'] * 1000:.1f} | {r['note']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
