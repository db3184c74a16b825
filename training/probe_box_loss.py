"""Does the box-outside penalty help box prompts? Decoder-only training with it on and off, same draws.

    python training/probe_box_loss.py --model /work/runs/v3_interactive/model.safetensors --steps 60

The image encoder is frozen (embeddings computed once), prompts are boxes around DSB2018 nuclei
(:func:`napari_samsp.finetune.prompts.simulate_interactive_prompts`, kind ``box`` only), and the
objective is the training objective (:class:`~napari_samsp.finetune.objective.SelfPromptObjective`)
with ``box_weight`` 0 and 1. Reports the prompted loss and the box-prompt IoU on held-out val
nuclei after training. Measured on this project's 2-core CPU: see docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import resolve_data, set_threads  # noqa: E402

from napari_samsp.finetune.data import load_examples, prepare_sample  # noqa: E402
from napari_samsp.finetune.losses import mask_iou  # noqa: E402
from napari_samsp.finetune.objective import ObjectiveConfig, SelfPromptObjective  # noqa: E402
from napari_samsp.finetune.prompts import simulate_interactive_prompts  # noqa: E402
from napari_samsp.io import list_pairs, read_splits, split_pairs  # noqa: E402
from napari_samsp.models.checkpoints import load_model  # noqa: E402
from napari_samsp.models.sam_model import ImageFeatures  # noqa: E402
from napari_samsp.transforms import model_preprocessing  # noqa: E402

BOX_ONLY = (0.0, 1.0, 0.0, 0.0)


def encode_all(model, examples):
    """(samples, features) of every example in the model's input frame; the encoder runs once each."""
    samples = [prepare_sample(e, model.img_size, preprocessing=model_preprocessing(model)) for e in examples]
    with torch.no_grad():
        feats = [model.encode(model.normalize_pixels(s.image[None])) for s in samples]
    return samples, feats


def stack(feats, samples, idx):
    f = ImageFeatures(torch.cat([feats[i].embeddings for i in idx]),
                      None if feats[0].hires is None else torch.cat([feats[i].hires for i in idx]))
    return f, torch.stack([samples[i].labels for i in idx]), torch.stack([samples[i].valid for i in idx])


def box_iou(model, samples, feats, seed: int = 1) -> float:
    """Mean IoU of one box decode per val nucleus (up to 8 per image), in the input frame."""
    gen = torch.Generator().manual_seed(seed)
    low = int(model.prompt_encoder.mask_input_size[0])
    ious = []
    with torch.no_grad():
        for i in range(len(samples)):
            f, labels, _ = stack(feats, samples, [i])
            batch = simulate_interactive_prompts(labels, 8, gen, low, kind_probs=BOX_ONLY, box_jitter=0.0)
            if batch is None:
                continue
            logits, _ = model.decode(f, None, None, batch.boxes, image_index=batch.image_index)
            ious += mask_iou(model.upscale_logits(logits), batch.targets).tolist()
    return float(sum(ious) / max(1, len(ious)))


def run(base, train, val, box_weight: float, steps: int, lr: float) -> dict:
    model = copy.deepcopy(base)
    train_s, train_f = train
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("mask_decoder", "prompt_encoder")))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    cfg = ObjectiveConfig(prompts_per_image=8, click_iterations=0, prompt_kind_probs=BOX_ONLY,
                          box_weight=box_weight, focal_alpha=-1, prompt_weight=2.0)
    objective = SelfPromptObjective(model, cfg, seed=0)
    model.train()
    draw = torch.Generator().manual_seed(0)
    prompted = []
    for _ in range(steps):
        idx = torch.randint(len(train_s), (4,), generator=draw).tolist()
        f, labels, valid = stack(train_f, train_s, idx)
        losses = objective(None, labels, valid, features=f)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        prompted.append(float(losses["prompted"]))
    model.eval()
    tail = prompted[-10:]
    return {"box_weight": box_weight, "prompted_loss_first10": sum(prompted[:10]) / 10,
            "prompted_loss_last10": sum(tail) / len(tail), "val_box_iou": box_iou(model, *val)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--train-images", type=int, default=24)
    ap.add_argument("--val-images", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    root = resolve_data("dsb2018_nuclei")
    tr, va = split_pairs(list_pairs(root), read_splits(root))
    base = load_model(args.model, device="cpu").model
    train = encode_all(base, load_examples(tr[: args.train_images], root.name, 512))
    val = encode_all(base, load_examples(va[: args.val_images], root.name, 512))
    out = {"model": args.model, "steps": args.steps, "before_val_box_iou": box_iou(base, *val),
           "runs": [run(base, train, val, w, args.steps, args.lr) for w in (0.0, 1.0)]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
