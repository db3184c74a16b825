"""U-Net baseline: ``segmentation_models_pytorch`` U-Net (ResNet-18 encoder, random init, no download),
trained by the same data pipeline, loss, sampler, LR schedule and budget as our models, and
evaluated with the same metrics.

    python training/baselines.py --check                       # smp builds offline, one forward pass
    python training/baselines.py --out runs/ablation/unet --steps 500 --img-size 128

Same as ``napari_samsp.finetune.loop.train``: ``load_examples`` -> ``BalancedSampler``
(every data set equally likely) -> ``prepare_sample`` with ``AugmentConfig()`` (same
resize-longest-side + zero-pad input frame as inference) -> focal + Dice
(``finetune.losses.segmentation_loss``, padding masked out) -> AdamW, warm-up + cosine
(``loop.lr_at``), gradient clipping 1.0. No self-prompting, no prompts: the U-Net only
predicts a foreground.

Inference mirrors ``autoseg.segment_image``: the image is resized (longest side) into the
input frame; images larger than ``2 * img_size`` are tiled with the same plan
(``tiling.plan_tiles``, tiles of ``2 * img_size``, quarter overlap) and blended with
``tiling.blend_weights``. Instance mode splits the foreground with the same
``autoseg.split_instances``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from napari_samsp.finetune.data import AugmentConfig, BalancedSampler, collate, prepare_sample  # noqa: E402
from napari_samsp.finetune.losses import segmentation_loss  # noqa: E402

# ImageNet statistics in [0, 255], the same normalisation as SamModel.normalize_pixels
PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def build_unet(encoder: str = "resnet18") -> torch.nn.Module:
    """``smp.Unet(encoder, encoder_weights=None, classes=1)``: random init, never downloads."""
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder, encoder_weights=None, in_channels=3, classes=1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - PIXEL_MEAN.to(images.device)) / PIXEL_STD.to(images.device)


def train_unet(
    model: torch.nn.Module,
    train_examples,
    img_size: int = 128,
    steps: int = 500,
    batch_size: int = 4,
    lr: float = 1e-3,
    warmup_steps: int = 25,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    seed: int = 0,
    checkpoint_path: Path | None = None,
    checkpoint_every: int = 100,
    log_every: int = 50,
    log=print,
) -> dict:
    """Train in place, resumable from ``checkpoint_path``; returns {"seconds", "steps", "last_loss"}."""
    from napari_samsp.finetune.loop import TrainConfig, lr_at

    sched = TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    step, seconds = 0, 0.0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        ck = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, seconds = int(ck["step"]), float(ck["seconds"])
        log(f"resumed U-Net at step {step}")
    # the same seeding as loop.train
    sampler = BalancedSampler(train_examples, seed=seed * 1000 + step)
    rng = random.Random(seed * 7919 + step)
    augment = AugmentConfig()
    t0 = time.time() - seconds
    loss = torch.tensor(float("nan"))
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, sched)
        exs = [sampler.draw() for _ in range(batch_size)]
        images, labels, valid = collate([prepare_sample(ex, img_size, rng, augment) for ex in exs])
        logits = model(normalize(images))
        loss = segmentation_loss(logits, (labels > 0)[:, None].float(), valid[:, None].float())
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        step += 1
        if step % log_every == 0:
            log(f"unet step {step}/{steps} loss={float(loss.detach()):.4f} elapsed={time.time() - t0:.0f}s")
        if checkpoint_path is not None and (step % checkpoint_every == 0 or step == steps):
            tmp = Path(str(checkpoint_path) + ".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "seconds": time.time() - t0}, tmp)
            os.replace(tmp, checkpoint_path)
    model.eval()
    return {"seconds": time.time() - t0, "steps": step, "last_loss": float(loss.detach())}


class UNetSegmenter:
    """Prompt-free U-Net inference in the same input frame and tiling as ``autoseg.segment_image``."""

    supports_clicks = False

    def __init__(self, model: torch.nn.Module, img_size: int = 128, threshold: float = 0.5, min_size: int = 8,
                 name: str = "unet") -> None:
        self.model = model.eval()
        self.img_size = int(img_size)
        self.threshold = threshold
        self.min_size = min_size
        self.name = name

    @torch.inference_mode()
    def probability(self, rgb: np.ndarray) -> np.ndarray:
        from napari_samsp.transforms import InputTransform

        t = InputTransform(self.img_size, rgb.shape[:2])
        x = t.image_to_tensor(rgb)[None]
        logits = self.model(normalize(x))  # (1, 1, S, S)
        return torch.sigmoid(t.logits_to_original(logits))[0, 0].numpy()

    def segment(self, image: np.ndarray, mode: str = "semantic") -> np.ndarray:
        from napari_samsp.autoseg import default_tiling, split_instances
        from napari_samsp.predictor import as_plane
        from napari_samsp.tiling import blend_weights, plan_tiles
        from napari_samsp.transforms import to_rgb_uint8

        rgb = to_rgb_uint8(as_plane(image))
        h, w = rgb.shape[:2]
        thr, tile, overlap = default_tiling(self.img_size)
        if max(h, w) > thr:
            num = np.zeros((h, w), np.float32)
            den = np.zeros((h, w), np.float32)
            for y0, y1, x0, x1 in plan_tiles((h, w), tile, overlap):
                wts = blend_weights((y1 - y0, x1 - x0), overlap)
                num[y0:y1, x0:x1] += wts * self.probability(rgb[y0:y1, x0:x1])
                den[y0:y1, x0:x1] += wts
            prob = num / den
        else:
            prob = self.probability(rgb)
        fg = prob > self.threshold
        if self.min_size > 1 and fg.any():
            lab, n = ndimage.label(fg)
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            keep = sizes >= self.min_size
            keep[0] = False
            fg = keep[lab]
        if mode == "instance":
            return split_instances(fg, self.min_size).astype(np.uint16)
        return fg.astype(np.uint16)

    def click_predictor(self, image):
        return None


def check(img_size: int = 128) -> dict:
    """Build the U-Net with no network access and run one forward pass."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t = time.time()
    model = build_unet()
    with torch.inference_mode():
        y = model(torch.zeros(1, 3, img_size, img_size))
    return {"ok": tuple(y.shape) == (1, 1, img_size, img_size), "output_shape": list(y.shape),
            "parameters": int(sum(p.numel() for p in model.parameters())), "seconds": time.time() - t}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import DATASETS, load_train_examples, log_to, set_threads
    from evaluate_model import evaluate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that smp builds offline")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation/unet"))
    ap.add_argument("--data", nargs="+", default=list(DATASETS))
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup-steps", type=int, default=25)
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--train-limit", type=int, default=None, help="train images per data set (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-limit", type=int, default=30)
    ap.add_argument("--log", type=Path, default=None, help="also append the progress lines to this file")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.check:
        print(json.dumps(check(args.img_size)))
        return 0
    log = log_to(args.log)
    args.out.mkdir(parents=True, exist_ok=True)
    train_ex = load_train_examples(args.data, args.max_side, args.train_limit)
    torch.manual_seed(args.seed)
    model = build_unet()
    info = train_unet(model, train_ex, args.img_size, args.steps, args.batch_size, args.lr, args.warmup_steps,
                      seed=args.seed, checkpoint_path=args.out / "checkpoint.pt", log=log)
    torch.save(model.state_dict(), args.out / "unet.pt")
    res = evaluate(UNetSegmenter(model, args.img_size), args.data, args.val_limit, noc_objects=0, log=log)
    res["train"] = {**info, "parameters": int(sum(p.numel() for p in model.parameters()))}
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v["dice"] for k, v in res["datasets"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
