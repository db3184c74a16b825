"""Parameters and CPU latency of the paper's SAM-UNet family (``sam_unet_paper.py``) vs our default.

    OMP_WAIT_POLICY=PASSIVE python training/bench_samunet_paper.py --threads 1 --n 3 --out bench_samunet_paper.json

For each model (random weights; timing does not depend on them): parameters by part,
and wall time per 256 px image of ``prepare_image`` + ``encode`` (the embedding) and
of one box-prompted decode (a click), after one warm-up; median of ``--n`` runs.
Members:

* ``samunet_paper_r50`` / ``samunet_paper_r34``: the paper's models (vit_b at 256 px);
* ``paper_tiny_r18`` / ``paper_tiny_r34``: our ``tiny`` ViT (128 wide, 4 blocks, patch 8, 256 px),
  all four blocks global (the family needs one global block per ResNet stage), with ResNet-18 / -34;
* ``paper_vit_b_r18``: vit_b with ResNet-18;
* ``tiny`` / ``samunet_tiny``: today's default architecture (SAM-UNet variant of ours) for reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, set_threads  # noqa: E402

from napari_samsp.models import build_model  # noqa: E402
from napari_samsp.models.build import MODEL_CONFIGS, SamConfig  # noqa: E402
from napari_samsp.predictor import Predictor  # noqa: E402


def members() -> dict[str, SamConfig]:
    paper = MODEL_CONFIGS["samunet_paper_r34"]
    tiny = MODEL_CONFIGS["tiny"]
    tiny_vit = {
        "img_size": 256, "patch_size": tiny.patch_size, "encoder_embed_dim": tiny.encoder_embed_dim, "encoder_depth": 4,
        "encoder_num_heads": tiny.encoder_num_heads, "encoder_global_attn_indexes": (0, 1, 2, 3),
        "window_size": tiny.window_size, "prompt_embed_dim": tiny.prompt_embed_dim,
        "decoder_mlp_dim": tiny.decoder_mlp_dim, "decoder_num_heads": tiny.decoder_num_heads,
        "mask_in_chans": tiny.mask_in_chans,
    }
    return {
        "samunet_paper_r50": MODEL_CONFIGS["samunet_paper_r50"],
        "samunet_paper_r34": paper,
        "paper_vit_b_r18": dataclasses.replace(paper, name="paper_vit_b_r18", resnet=18),
        "paper_tiny_r34": dataclasses.replace(paper, name="paper_tiny_r34", resnet=34, **tiny_vit),
        "paper_tiny_r18": dataclasses.replace(paper, name="paper_tiny_r18", resnet=18, **tiny_vit),
        "samunet_tiny": MODEL_CONFIGS["samunet_tiny"],
        "tiny": tiny,
    }


def parts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts: ViT, branch (ResNet or our CNN), adapters/fusion, prompt encoder + decoder."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        group = {
            "image_encoder": "vit", "resnet": "branch", "cnn_branch": "branch", "prompt_encoder": "decoder",
            "mask_decoder": "decoder",
        }.get(top, "adapters")
        out[group] = out.get(group, 0) + p.numel()
    out["total"] = sum(out.values())
    return out


def flops(model: torch.nn.Module) -> dict[str, float]:
    """GFLOPs of one 256 px embedding and one box decode (counted by torch, independent of machine load)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = np.zeros((256, 256, 3), np.uint8)
    pred = Predictor(model, "flops")
    with FlopCounterMode(display=False) as enc:
        pred.set_image(image)
    with FlopCounterMode(display=False) as dec:
        pred.predict(box=np.array([60, 50, 190, 170], np.float32))
    return {"embed_gflops": enc.get_total_flops() / 1e9, "click_gflops": dec.get_total_flops() / 1e9}


def time_model(model: torch.nn.Module, n: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    box = np.array([60, 50, 190, 170], np.float32)
    pred = Predictor(model, "bench")
    embed, click = [], []
    for i in range(n + 1):
        image[0, 0, 0] = i  # a new image each time: no cache hit
        t0 = time.perf_counter()
        pred.set_image(image)
        t1 = time.perf_counter()
        pred.predict(box=box)
        t2 = time.perf_counter()
        if i:  # the first run is the warm-up
            embed.append(t1 - t0)
            click.append(t2 - t1)
    return {"embed_ms": 1000 * statistics.median(embed), "click_ms": 1000 * statistics.median(click)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="member names to run (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    rows = []
    for name, cfg in members().items():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        row = {"model": name, "params": parts(model), **flops(model), **time_model(model, args.n)}
        rows.append(row)
        p = row["params"]
        print(
            f"{name:<18} total {p['total'] / 1e6:7.2f} M (vit {p.get('vit', 0) / 1e6:.2f}, branch {p.get('branch', 0) / 1e6:.2f}, "
            f"adapters {p.get('adapters', 0) / 1e6:.2f}, decoder {p.get('decoder', 0) / 1e6:.2f})  "
            f"embed {row['embed_gflops']:6.1f} GFLOP {row['embed_ms']:6.0f} ms  click {row['click_gflops']:5.2f} GFLOP {row['click_ms']:4.0f} ms",
            flush=True,
        )
    meta = {
        "threads": args.threads, "n": args.n, "torch": torch.__version__, "machine": machine(), "loadavg": os.getloadavg(),
    }
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
