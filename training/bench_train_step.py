"""Seconds per training step (forward + backward of the objective) against the number of corrective iterations.

    python training/bench_train_step.py --model default --iterations 0 1 2 3 4 8 --batch-size 4 --repeats 3

Synthetic batch (three 25x30 px objects per image at the model's input size) on one thread:
the image encoder runs once per step, every corrective iteration adds one prompt-encoder +
decoder pass over all prompt sets. Reports the median of ``--repeats`` steps after one warm-up.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import set_threads  # noqa: E402

from napari_samsp.finetune.loop import configure_trainable  # noqa: E402
from napari_samsp.finetune.objective import ObjectiveConfig, SelfPromptObjective  # noqa: E402
from napari_samsp.models.checkpoints import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--iterations", type=int, nargs="+", default=[0, 1, 2, 3, 4, 8])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--prompts-per-image", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu").model.train()
    configure_trainable(model, ("encoder", "prompt_encoder", "mask_decoder", "unet"))
    s, b = model.img_size, args.batch_size
    labels = torch.zeros(b, s, s, dtype=torch.int64)
    for i in range(b):
        for k in range(3):
            y, x = torch.randint(20, s - 40, (2,)).tolist()
            labels[i, y : y + 25, x : x + 30] = k + 1
    images = torch.rand(b, 3, s, s) * 255
    valid = torch.ones(b, s, s, dtype=torch.bool)
    rows = []
    for iters in args.iterations:
        obj = SelfPromptObjective(model, ObjectiveConfig(num_passes=2, prompts_per_image=args.prompts_per_image,
                                                         click_iterations=iters, focal_alpha=-1))
        times = []
        for r in range(args.repeats + 1):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            obj(images, labels, valid)["total"].backward()
            if r:
                times.append(time.perf_counter() - t)
        rows.append({"click_iterations": iters, "sec_per_step": round(statistics.median(times), 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"model": args.model, "batch_size": b, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
