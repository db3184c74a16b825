"""Evaluate a model with the full inference pipeline on each data set's validation split.

    python training/evaluate_model.py --model runs/default/model.safetensors --out runs/eval/default.json
    python training/evaluate_model.py --checkpoint runs/default/checkpoint.pt --config-name samunet_tiny --limit 40
    python training/evaluate_model.py --model napari_samsp/weights/default.safetensors --data polypgen_polyps

Pipeline per image, exactly as ``samsp segment`` runs it: ``load_model`` ->
``Predictor`` -> ``autoseg.segment_image`` (whole image up to ``2 * img_size``
px, tiled above). Metrics per data set:

* mean Dice of the foreground (``metrics.dice``), with its standard deviation;
* instance F1@0.5 (``metrics.instance_f1``) on instance-labelled sets (nuclei);
* NoC@85/90 (``metrics.simulate_clicks``) on a fixed subset of objects, each
  click decoded by ``Predictor.predict`` with all clicks so far and the previous
  low-resolution logits as the mask prompt (whole image, no tiling; max 20 clicks);
* seconds per image for ``segment_image`` (encoder included; no embedding cache
  hit) and milliseconds per interactive click.

Mode: ``--mode auto`` (default) segments instance-labelled sets (nuclei) in
instance mode and binary sets (polyps, fetal head) in semantic mode; Dice is
always computed on the foreground. ``--mode card`` uses the model card's mode
for every set. The validation subset is ``--limit`` images evenly spaced over
the sorted ``val`` stems of ``splits.json`` (all of them without ``--limit``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Protocol, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# The data helpers live in common.py (re-exported here for callers of the older names).
from common import DATA_ROOT, DATASETS, INSTANCE_SETS, evenly_spaced, resolve_data, val_pairs  # noqa: E402, F401

from napari_samsp import metrics  # noqa: E402
from napari_samsp.finetune.checkpoint import load_checkpoint  # noqa: E402
from napari_samsp.io import read_image, read_mask  # noqa: E402
from napari_samsp.models.card import ModelCard, SegmentOptions  # noqa: E402


# ----------------------------------------------------------------------------------------------
# segmenters: anything with .segment(image, mode) -> labels; .predict_fn for NoC (optional)
# ----------------------------------------------------------------------------------------------
class Segmenter(Protocol):
    name: str
    supports_clicks: bool

    def segment(self, image: np.ndarray, mode: str) -> np.ndarray: ...

    def click_predictor(self, image: np.ndarray) -> Callable | None: ...


class SamSegmenter:
    """Our model through ``Predictor`` + ``autoseg.segment_image`` (what ``samsp segment`` runs)."""

    def __init__(self, model, model_id: str, num_passes: int = 2, name: str = "sam", click_box: str = "none",
                 refine_instances: bool = True, clicks: str = "model", flip_views: int = 1,
                 prompt_flip_views: int = 1) -> None:
        from napari_samsp.predictor import EmbeddingCache, Predictor

        if click_box not in ("none", "image"):
            raise ValueError("click_box must be 'none' or 'image'")
        if clicks not in ("model", "shown"):
            raise ValueError("clicks must be 'model' or 'shown'")
        self.click_box = click_box
        self.clicks = clicks
        self.name = name
        self.supports_clicks = True
        self.num_passes = int(num_passes)
        self.refine_instances = bool(refine_instances)
        self.flip_views = int(flip_views)
        # memory-only cache: every image is encoded (timings include the encoder)
        self.predictor = Predictor(model.eval(), model_id, cache=EmbeddingCache(None, max_memory_entries=2))
        # prompts decode with the card's mirror views; prompt-free timings do not pay for their encoding
        self.prompt_predictor = self.predictor if prompt_flip_views == 1 else Predictor(
            model, model_id, cache=EmbeddingCache(None, max_memory_entries=2), flip_views=prompt_flip_views)

    def segment(self, image: np.ndarray, mode: str) -> np.ndarray:
        from napari_samsp.autoseg import segment_image

        return segment_image(self.predictor, image, mode=mode, num_passes=self.num_passes,
                             refine_instances=self.refine_instances, flip_views=self.flip_views).labels

    def click_predictor(self, image: np.ndarray) -> Callable:
        if self.clicks == "shown":
            return self._editor_click_predictor(image)
        self.prompt_predictor.set_image(image)
        pred = self.prompt_predictor
        h, w = pred.original_size
        # "image": every click prompt also carries the whole-image box, which is how the training
        # objective (finetune.prompts.simulate_prompts) presents "points only" prompts
        box = np.array([0, 0, w - 1, h - 1], np.float32) if self.click_box == "image" else None

        def predict(points, labels, prev_logits):
            out = pred.predict(points, labels, box=box, mask_input=prev_logits, multimask_output=False)
            return out.masks[0], out.logits[:1]

        return predict

    def _editor_click_predictor(self, image: np.ndarray) -> Callable:
        """Clicks as the plugin shows them: every click goes through one ``interactive.ObjectEditor``
        (the mask confined to the prompted object, the editor's own logits fed back), and the
        simulated user sees, and corrects, the painted mask."""
        from napari_samsp.interactive import ObjectEditor, PromptSet

        emb = self.prompt_predictor.embed(image)
        editor: list = []

        def predict(points, labels, prev_logits):
            if prev_logits is None or not editor:  # a new object: a fresh editor
                editor[:] = [ObjectEditor(self.prompt_predictor, np.zeros(emb.original_size, np.uint32), 1, embedding=emb)]
            ed = editor[0]
            painted = ed.update(PromptSet(np.asarray(points, np.float32), np.asarray(labels, np.int64)))
            return painted == 1, ed.logits

        return predict

    def box_predictor(self, image: np.ndarray) -> Callable:
        """``predict(box) -> mask``: one box prompt (x0, y0, x1, y1, inclusive pixel indices), nothing else."""
        self.prompt_predictor.set_image(image)
        pred = self.prompt_predictor

        def predict(box):
            return pred.predict(box=np.asarray(box, np.float32), multimask_output=False).masks[0]

        return predict


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def pick_noc_object(gt: np.ndarray, instance: bool) -> np.ndarray | None:
    """The object a simulated user clicks on: the whole foreground of a binary set; for an
    instance set the object of median area (deterministic, neither the easiest nor a speck)."""
    if not instance:
        fg = gt > 0
        return fg if fg.any() else None
    ids, areas = np.unique(gt[gt > 0], return_counts=True)
    if ids.size == 0:
        return None
    order = np.argsort(areas, kind="stable")
    return gt == ids[order[len(order) // 2]]


def noc_on(seg: Segmenter, pairs, instance_set: bool, noc_objects: int = 10, max_clicks: int = 20) -> dict:
    """NoC over ``noc_objects`` objects (one per image, images evenly spaced over ``pairs``)."""
    results, click_times = [], []
    for pair in evenly_spaced(pairs, noc_objects * 2):
        if len(results) >= noc_objects:
            break
        obj = pick_noc_object(read_mask(pair.mask_path), instance_set)
        if obj is None:
            continue
        predict = seg.click_predictor(read_image(pair.image_path))

        def timed(points, labels, prev, _p=predict):
            t = time.perf_counter()
            r = _p(points, labels, prev)
            click_times.append(time.perf_counter() - t)
            return r

        results.append(metrics.simulate_clicks(timed, obj, max_clicks=max_clicks, iou_targets=(0.85, 0.90)))
    out = metrics.noc_summary(results, max_clicks=max_clicks)
    out["ms_per_click"] = float(1000 * np.mean(click_times)) if click_times else float("nan")
    out["click_box"] = getattr(seg, "click_box", None)
    return out


def box_objects(gt: np.ndarray, instance: bool, per_image: int) -> list[np.ndarray]:
    """Objects a simulated user draws a box around: the foreground of a binary set; for an instance
    set up to ``per_image`` objects spread evenly over the area ranking (deterministic)."""
    if not instance:
        fg = gt > 0
        return [fg] if fg.any() else []
    ids, areas = np.unique(gt[gt > 0], return_counts=True)
    order = ids[np.argsort(areas, kind="stable")]
    return [gt == i for i in evenly_spaced(list(order), per_image)]


def box_on(seg: Segmenter, pairs, instance_set: bool, images: int = 10, per_image: int = 5) -> dict:
    """Box-prompt IoU and the share of predicted pixels outside the box (``metrics.box_prompt_scores``).

    The box is the object's tight box (``interactive.mask_box``, no margin), as a user drags it;
    one decode per box with no other prompt, like the plugin's first box. ``box_*`` score the model's
    raw mask; ``confined_box_*`` the mask the plugin shows (``local_prompts.confine_mask`` with the
    plugin's ``USER_BOX_MARGIN``: cut to the box, specks away from the object dropped).
    """
    from napari_samsp.interactive import PromptSet, mask_box
    from napari_samsp.local_prompts import USER_BOX_MARGIN, confine_mask

    raw, confined = [], []
    for pair in evenly_spaced(pairs, images):
        objs = box_objects(read_mask(pair.mask_path), instance_set, per_image)
        if not objs:
            continue
        predict = seg.box_predictor(read_image(pair.image_path))
        for obj in objs:
            box = mask_box(obj)
            mask = predict(box)
            raw.append(metrics.box_prompt_scores(mask, obj, box))
            confined.append(metrics.box_prompt_scores(confine_mask(mask, PromptSet(box=box), margin=USER_BOX_MARGIN), obj, box))
    out = metrics.box_summary(raw)
    out.update({f"confined_{k}": v for k, v in metrics.box_summary(confined).items() if k != "n"})
    return out


def evaluate_dataset(
    seg: Segmenter,
    name: str,
    limit: int | None = None,
    mode: str = "auto",
    card_mode: str = "semantic",
    noc_objects: int = 10,
    max_clicks: int = 20,
    log: Callable[[str], None] = print,
    box_images: int = 10,
    split: str = "val",
) -> dict:
    pairs = val_pairs(name, limit, split)
    instance_set = Path(name).name in INSTANCE_SETS
    run_mode = mode if mode in ("semantic", "instance") else (card_mode if mode == "card" else ("instance" if instance_set else "semantic"))
    dices, f1s, pqs, times = [], [], [], []
    for i, pair in enumerate(pairs):
        image = read_image(pair.image_path)
        gt = read_mask(pair.mask_path)
        t0 = time.perf_counter()
        labels = seg.segment(image, run_mode)
        times.append(time.perf_counter() - t0)
        dices.append(metrics.dice(labels, gt))
        if instance_set:
            pred = labels if run_mode == "instance" else metrics.as_instances(labels)
            f = metrics.instance_f1(pred, gt)
            f1s.append(f["f1"])
            pqs.append(f["pq"])
        if (i + 1) % 10 == 0:
            log(f"  {Path(name).name}: {i + 1}/{len(pairs)} mean Dice {np.mean(dices):.4f}")
    out: dict = {
        "n": len(pairs),
        "mode": run_mode,
        "dice": float(np.mean(dices)),
        "dice_std": float(np.std(dices)),
        "seconds_per_image": float(np.mean(times)),
        "seconds_per_image_median": float(np.median(times)),
        "per_image_dice": {p.stem: float(d) for p, d in zip(pairs, dices)},
    }
    if instance_set:
        out["instance_f1@0.5"] = float(np.mean(f1s))
        out["pq"] = float(np.mean(pqs))
    if noc_objects and getattr(seg, "supports_clicks", False):
        out["noc"] = noc_on(seg, pairs, instance_set, noc_objects, max_clicks)
        out["noc@90"] = out["noc"].get("noc@90", float("nan"))
    if box_images and hasattr(seg, "box_predictor"):
        out["box"] = box_on(seg, pairs, instance_set, box_images)
    return out


def evaluate(
    seg: Segmenter,
    datasets: Sequence[str] = DATASETS,
    limit: int | None = None,
    mode: str = "auto",
    card_mode: str = "semantic",
    noc_objects: int = 10,
    max_clicks: int = 20,
    log: Callable[[str], None] = print,
    box_images: int = 10,
    split: str = "val",
) -> dict:
    """Metrics per data set plus their mean Dice over data sets (``split``: "val", or "train" to choose
    an inference setting without looking at the validation images)."""
    res = {}
    t0 = time.time()
    for name in datasets:
        res[Path(name).name] = evaluate_dataset(seg, name, limit, mode, card_mode, noc_objects, max_clicks, log,
                                                box_images, split)
        r = res[Path(name).name]
        log(f"{Path(name).name}: Dice {r['dice']:.4f}" + (f" F1@0.5 {r['instance_f1@0.5']:.4f}" if "instance_f1@0.5" in r else "")
            + (f" NoC@90 {r['noc@90']:.2f}" if "noc@90" in r else "") + f" {r['seconds_per_image']:.3f} s/img")
    return {
        "datasets": res,
        "mean_dice": float(np.mean([r["dice"] for r in res.values()])),
        "eval_seconds": time.time() - t0,
        "settings": {"limit": limit, "mode": mode, "click_box": getattr(seg, "click_box", None), "noc_objects": noc_objects, "max_clicks": max_clicks, "box_images": box_images, "split": split,
                     "torch_threads": torch.get_num_threads(), "data_root": str(DATA_ROOT)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model file or built-in name (as samsp segment --model)")
    src.add_argument("--checkpoint", type=Path, help="a training checkpoint.pt (runs/<x>/checkpoint.pt)")
    ap.add_argument("--config-name", default=None,
                    help="architecture of --checkpoint (default: the run's config.json, else samunet_tiny)")
    ap.add_argument("--weights", choices=("best", "model"), default="best", help="which weights of --checkpoint")
    ap.add_argument("--data", nargs="+", default=list(DATASETS), help="data set names under SAMSP_DATA, or folders")
    ap.add_argument("--limit", type=int, default=None, help="validation images per data set (evenly spaced)")
    ap.add_argument("--mode", choices=("auto", "card", "semantic", "instance"), default="auto")
    ap.add_argument("--num-passes", type=int, default=None, help="self-prompting passes (default: from the card)")
    ap.add_argument("--noc-objects", type=int, default=10, help="objects per data set for NoC (0: skip)")
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--box-images", type=int, default=10,
                    help="images per data set for box-prompt IoU (instance sets: up to 5 objects each; 0: skip)")
    ap.add_argument("--click-box", choices=("none", "image"), default="none",
                    help="NoC clicks alone (as the plugin sends them) or with the whole-image box (as training presents them)")
    ap.add_argument("--no-refine", action="store_true",
                    help="instance mode without the per-object box + point re-decode (watershed objects as they are); "
                         "a card with refine_instances false implies it")
    ap.add_argument("--clicks", choices=("model", "shown"), default="model",
                    help="score the model's raw click masks, or the masks the plugin shows (ObjectEditor: confined)")
    ap.add_argument("--flip-views", type=int, choices=(1, 2, 4), default=None,
                    help="prompt-free test-time mirror images averaged (default: the card's)")
    ap.add_argument("--prompt-flip-views", type=int, choices=(1, 2, 4), default=None,
                    help="mirror views averaged for clicks and boxes (default: the card's prompt_flip_views)")
    ap.add_argument("--split", choices=("val", "train"), default="val",
                    help="images to evaluate on; 'train' to choose a setting without looking at val")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the JSON here (also printed)")
    ap.add_argument("--markdown", action="store_true", help="also print a table for docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint, args.weights)
        if ck.which != args.weights:
            print(f"{args.checkpoint}: no '{args.weights}' weights (no validation yet?); using '{ck.which}'", file=sys.stderr)
        model, model_id, card, source = ck.build_model(args.config_name), ck.model_id, ModelCard.from_dict(ck.card()), \
            str(args.checkpoint)
    else:
        from napari_samsp.models.checkpoints import load_model

        lm = load_model(args.model, device="cpu")
        if lm.is_random:
            print(f"warning: {args.model} is randomly initialised", file=sys.stderr)
        model, model_id, card, source = lm.model, lm.model_id, lm.model_card, lm.source
    num_passes = args.num_passes or card.num_passes
    refine = SegmentOptions.from_card(card).refine_instances and not args.no_refine
    flip_views = args.flip_views or SegmentOptions.from_card(card).flip_views
    prompt_flip_views = args.prompt_flip_views or card.prompt_flip_views
    seg = SamSegmenter(model, model_id, num_passes, name=source, click_box=args.click_box,
                       refine_instances=refine, clicks=args.clicks, flip_views=flip_views,
                       prompt_flip_views=prompt_flip_views)
    res = evaluate(seg, args.data, args.limit, args.mode, card.mode, args.noc_objects,
                   args.max_clicks, log=lambda s: print(s, file=sys.stderr, flush=True), box_images=args.box_images,
                   split=args.split)
    res["settings"]["refine_instances"] = refine
    res["settings"]["clicks"] = args.clicks
    res["settings"]["flip_views"] = flip_views
    res["settings"]["prompt_flip_views"] = prompt_flip_views
    res["model"] = {"source": source, "model_id": model_id, "num_passes": num_passes,
                    "config": getattr(model, "config", None) and model.config.name,
                    "parameters": int(sum(p.numel() for p in model.parameters())),
                    "card_mode": card.mode, "checkpoint": card.to_dict().get("checkpoint"),
                    "card_metrics": card.to_dict()["metrics"]}
    text = json.dumps(res, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    summary = {k: {**{m: v[m] for m in ("dice", "instance_f1@0.5", "noc@90", "seconds_per_image") if m in v},
                   **{m: v.get("noc", {}).get(m) for m in ("noc@85", "iou@1", "iou@3", "iou@5") if m in v.get("noc", {})},
                   **{m: v["box"][m] for m in ("box_iou", "box_outside") if m in v.get("box", {})}}
               for k, v in res["datasets"].items()}
    print(json.dumps({"mean_dice": res["mean_dice"], "datasets": summary}, indent=2))
    if args.markdown:
        print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    """The per-data-set table of docs/BENCHMARKS.md ("Default model")."""
    lines = ["| data set | val images | mode | Dice (± s.d.) | instance F1@0.5 | PQ | NoC@85 | NoC@90 | s / image | ms / click |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["datasets"].items():
        noc = r.get("noc", {})

        def f(v, fmt=".3f"):
            return "-" if v is None else format(v, fmt)

        lines.append(f"| {name} | {r['n']} | {r['mode']} | {r['dice']:.3f} ± {r['dice_std']:.3f} | "
                     f"{f(r.get('instance_f1@0.5'))} | {f(r.get('pq'))} | {f(noc.get('noc@85'), '.1f')} | "
                     f"{f(noc.get('noc@90'), '.1f')} | {r['seconds_per_image']:.3f} | {f(noc.get('ms_per_click'), '.0f')} |")
    lines.append(f"| **mean over sets** | | | **{res['mean_dice']:.3f}** | | | | | | |")
    return "\n".join(lines) + "\n\n" + prompt_markdown(res)


def prompt_markdown(res: dict) -> str:
    """The prompted table: simulated clicker (NoC, IoU after k clicks) and box prompts."""
    lines = ["| data set | objects (clicks) | NoC@85 | NoC@90 | IoU@1 | IoU@3 | IoU@5 | boxes | box IoU | predicted px outside box |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    for name, r in res["datasets"].items():
        noc, box = r.get("noc", {}), r.get("box", {})
        lines.append(f"| {name} | {noc.get('n', 0)} | {f(noc.get('noc@85'), '.1f')} | {f(noc.get('noc@90'), '.1f')} | "
                     f"{f(noc.get('iou@1'))} | {f(noc.get('iou@3'))} | {f(noc.get('iou@5'))} | {box.get('n', 0)} | "
                     f"{f(box.get('box_iou'))} | {f(box.get('box_outside'), '.1%') if 'box_outside' in box else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
