"""How well a model follows prompts: mean IoU of one decode per ground-truth object, on val images.

    python training/probe_prompts.py --model runs/default/model.safetensors [--data dsb2018_nuclei] [--limit 20]

For each object (up to 6 per image): a tight box; one positive point at a random object pixel; and
box + point. Reports mean IoU per prompt kind (in the model's input frame), next to the prompt-free Dice.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATASETS, resolve_data, set_threads  # noqa: E402

from napari_samsp.finetune.data import collate, load_examples, prepare_sample  # noqa: E402
from napari_samsp.finetune.losses import mask_iou  # noqa: E402
from napari_samsp.finetune.prompts import simulate_prompts  # noqa: E402
from napari_samsp.io import list_pairs, read_splits, split_pairs  # noqa: E402
from napari_samsp.models.checkpoints import load_model  # noqa: E402
from napari_samsp.transforms import model_preprocessing  # noqa: E402



@torch.inference_mode()
def probe(model, examples, per_image: int = 6) -> dict[str, float]:
    out: dict[str, list[float]] = {"box": [], "point": [], "box+point": []}
    for start in range(0, len(examples), 4):
        images, labels, _ = collate([prepare_sample(ex, model.img_size, preprocessing=model_preprocessing(model)) for ex in examples[start : start + 4]])
        feats = model.encode(model.normalize_pixels(images))
        gen = torch.Generator().manual_seed(start)
        boxed = simulate_prompts(labels, per_image, gen, box_jitter=0.0, max_points=1, points_only_prob=0.0)
        if boxed is None:
            continue
        clicks = simulate_prompts(labels, per_image, torch.Generator().manual_seed(start), max_points=1, points_only_prob=1.0)
        runs = {
            "box": (None, None, boxed.boxes, boxed),
            "point": (clicks.point_coords, clicks.point_labels, None, clicks),
            "box+point": (clicks.point_coords, clicks.point_labels, boxed.boxes, clicks),
        }
        for name, (pc, pl, bx, batch) in runs.items():
            logits, _ = model.decode(feats, pc, pl, bx, image_index=batch.image_index)
            out[name] += mask_iou(model.upscale_logits(logits), batch.targets).tolist()
    return {k: float(sum(v) / max(1, len(v))) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", action="append", default=None)
    ap.add_argument("--limit", type=int, default=20)
    args = ap.parse_args()
    set_threads(1)
    model = load_model(args.model, device="cpu").model
    report = {}
    for name in args.data or list(DATASETS):
        root = resolve_data(name)
        _, val = split_pairs(list_pairs(root), read_splits(root))
        report[name] = probe(model, load_examples(val[: args.limit], root.name))
        print(root.name, json.dumps(report[name]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
