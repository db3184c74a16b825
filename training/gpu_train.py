"""GPU recipe: fine-tune on a packed data set inside a fixed wall-clock budget, evaluate, export fp16.

    bash scripts/gpu_train.sh                       # on the device machine (reads $OUT, $BUDGET_S)
    python training/gpu_train.py --pack datapack/pack.npz --out "$OUT" --budget-s 420 --batch-size 64

It runs the one training loop (``napari_samsp.finetune.loop.train``) with the objective of
``--config`` (default ``training/configs/gpu_interactive.json``: interactive prompts + the
prompt-free self-prompting path), bf16 autocast on CUDA, a large batch and
``TrainConfig.max_seconds`` as the budget (the LR schedule anneals over that time). Then it
evaluates on the pack's ``val`` rows -- prompt-free Dice per domain, NoC@85/90 and IoU after
1/3/5 clicks with the standard clicker, box-prompt IoU and outside-the-box share -- for the
trained model and its parent, and writes to ``--out``:

* ``model.safetensors`` (+ ``model.json`` card), fp16; split into ``model-00001-of-0000K.safetensors``
  shards (``join_shards`` reads them back) when one file would exceed ``--max-file-mib`` (16);
* ``eval.json`` (both models), ``history.jsonl`` (losses), ``summary.json``.

Pack format (``.npz``; :func:`write_pack` writes it, ``scripts/pack_data.py`` may too):

* ``images``  uint8  (N, H, W, 3), already resized (e.g. longest side 256);
* ``masks``   uint16 (N, H, W), instance labels, 0 = background (binary sets use 1);
* ``domains`` str    (N,), the data set of each row;
* ``split``   str    (N,), optional, ``train`` / ``val`` (absent: every row is ``train``);
* ``stems``   str    (N,), optional, the source file stems.

Images of different sizes may be packed as an object array (``allow_pickle`` is never used
to load: such packs are refused); pad or resize to one shape instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_samsp import metrics  # noqa: E402
from napari_samsp.errors import DataLayoutError  # noqa: E402
from napari_samsp.finetune.data import AugmentConfig, Example  # noqa: E402
from napari_samsp.finetune.loop import Callbacks, TrainConfig, train, validate  # noqa: E402
from napari_samsp.finetune.objective import ObjectiveConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


# ----------------------------------------------------------------------------------------------
# the pack
# ----------------------------------------------------------------------------------------------
def write_pack(path: str | Path, images: np.ndarray, masks: np.ndarray, domains: Sequence[str],
               split: Sequence[str] | None = None, stems: Sequence[str] | None = None) -> Path:
    """Write the documented pack (compressed npz). ``images`` (N, H, W, 3) uint8, ``masks`` (N, H, W)."""
    images = np.asarray(images, np.uint8)
    masks = np.asarray(masks)
    if images.ndim != 4 or images.shape[-1] != 3 or masks.shape != images.shape[:3]:
        raise DataLayoutError(f"pack needs images (N, H, W, 3) and masks (N, H, W); got {images.shape}, {masks.shape}")
    arrays = {"images": images, "masks": masks.astype(np.uint16), "domains": np.asarray(domains, dtype=str)}
    if split is not None:
        arrays["split"] = np.asarray(split, dtype=str)
    if stems is not None:
        arrays["stems"] = np.asarray(stems, dtype=str)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def read_pack(path: str | Path) -> tuple[list[Example], list[Example]]:
    """(train, val) examples of a pack; raises DataLayoutError with one line on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"data pack not found: {path} (build it with scripts/pack_data.py)")
    try:
        with np.load(path, allow_pickle=False) as z:
            images, masks, domains = z["images"], z["masks"], z["domains"].astype(str)
            n = len(images)
            split = z["split"].astype(str) if "split" in z.files else np.full(n, "train")
            stems = z["stems"].astype(str) if "stems" in z.files else np.array([f"{i:05d}" for i in range(n)])
    except (KeyError, ValueError, OSError) as exc:
        raise DataLayoutError(f"{path} is not a data pack (images, masks, domains): {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or masks.shape != images.shape[:3] or len(domains) != n:
        raise DataLayoutError(f"{path}: images must be uint8 (N, H, W, 3) with masks (N, H, W) and N domains")
    train_ex, val_ex = [], []
    for i in range(n):
        ex = Example(images[i], masks[i].astype(np.int32), str(domains[i]), str(stems[i]))
        (val_ex if split[i] == "val" else train_ex).append(ex)
    return train_ex, val_ex


# ----------------------------------------------------------------------------------------------
# evaluation on pack rows
# ----------------------------------------------------------------------------------------------
def evaluate_examples(model, examples: Sequence[Example], num_passes: int, objects_per_domain: int = 20,
                      max_clicks: int = 20) -> dict:
    """Prompt-free Dice (``loop.validate``) plus clicker and box metrics per domain.

    Clicks: ``metrics.simulate_clicks`` through ``Predictor.predict`` with the previous low-res
    logits as the mask prompt (as the plugin does), on the median-area object of each image of an
    instance domain or the whole foreground of a binary one (``evaluate_model.pick_noc_object``).
    Boxes: tight boxes of up to 5 objects per image (``evaluate_model.box_on``'s rule).
    """
    import evaluate_model as E

    from napari_samsp.interactive import mask_box

    out: dict = {"prompt_free": validate(model, examples, num_passes)}
    seg = E.SamSegmenter(model, f"gpu-eval-{id(model)}", num_passes)
    by_domain: dict[str, list[Example]] = {}
    for ex in examples:
        by_domain.setdefault(ex.domain, []).append(ex)
    for dom, exs in sorted(by_domain.items()):
        instance = any(int(ex.labels.max()) > 1 for ex in exs)
        clicks, boxes = [], []
        for ex in E.evenly_spaced(exs, objects_per_domain):
            obj = E.pick_noc_object(ex.labels, instance)
            if obj is None:
                continue
            clicks.append(metrics.simulate_clicks(seg.click_predictor(ex.image), obj, max_clicks=max_clicks))
            predict = seg.box_predictor(ex.image)
            for o in E.box_objects(ex.labels, instance, 5):
                box = mask_box(o)
                boxes.append(metrics.box_prompt_scores(predict(box), o, box))
        noc = metrics.noc_summary(clicks, max_clicks=max_clicks)
        noc.pop("miou_at_click", None)
        out[dom] = {"clicks": noc, "box": metrics.box_summary(boxes)}
    return out


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------
def save_fp16(model, out: Path, card: dict, max_file_mib: float = 16.0) -> list[Path]:
    """Save ``model`` in fp16 as one ``model.safetensors`` (+ card) or as shards of at most ``max_file_mib``."""
    from safetensors.torch import save_file

    from napari_samsp.models.checkpoints import make_card, save_model

    half = copy.deepcopy(model).to("cpu").half()
    state = {k: v.detach().contiguous() for k, v in half.state_dict().items()}
    total = sum(v.numel() * v.element_size() for v in state.values())
    limit = int(max_file_mib * MiB)
    if total + MiB // 4 <= limit:  # leave room for the header and card
        return [save_model(half, out / "model.safetensors", card)]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if n > limit - MiB // 4:
            raise ValueError(f"tensor {k} alone ({n / MiB:.1f} MiB) exceeds the {max_file_mib} MiB file limit")
        if size + n > limit - MiB // 4 and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    full = make_card(model.config, card)
    paths = []
    for i, part in enumerate(shards):
        p = out / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, str(p), metadata={"format": "pt", "samsp_card": json.dumps(full, sort_keys=True)})
        paths.append(p)
    (out / "model.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return paths


def join_shards(folder: str | Path, target: str | Path) -> Path:
    """Join ``model-*-of-*.safetensors`` shards into one ``target`` .safetensors with the card."""
    from safetensors import safe_open

    from napari_samsp.models import build_model
    from napari_samsp.models.build import SamConfig
    from napari_samsp.models.checkpoints import save_model

    paths = sorted(Path(folder).glob("model-*-of-*.safetensors"))
    if not paths:
        raise DataLayoutError(f"no model shards in {folder}")
    state, card = {}, None
    for p in paths:
        with safe_open(str(p), "pt") as f:
            card = card or json.loads(f.metadata()["samsp_card"])
            state.update({k: f.get_tensor(k) for k in f.keys()})
    model = build_model(SamConfig.from_dict(card["config"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return save_model(model.half(), target, card)


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, default=REPO / "datapack" / "pack.npz")
    ap.add_argument("--config", type=Path, default=REPO / "training" / "configs" / "gpu_interactive.json",
                    help="objective / trainable / domain weights come from here")
    ap.add_argument("--init", default=None, help="parent model (default: the config's init)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu")))
    ap.add_argument("--work", type=Path, default=None, help="checkpoint folder (default: <out>/../gpu_work)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="training wall-clock budget")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=6e-4, help="peak LR (the CPU recipe's 2e-4 at batch 4, x sqrt(16) / ~1.3)")
    ap.add_argument("--warmup-steps", type=int, default=30)
    ap.add_argument("--eval-objects", type=int, default=20, help="val images per domain for clicks / boxes (0: skip)")
    ap.add_argument("--no-eval-parent", action="store_true", help="do not evaluate the parent model")
    ap.add_argument("--max-file-mib", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from napari_samsp.models.checkpoints import load_model, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = json.loads(args.config.read_text())
    train_ex, val_ex = read_pack(args.pack)
    if not train_ex:
        raise DataLayoutError(f"{args.pack} has no train rows")
    init = args.init or cfg.get("init") or "default"
    loaded = load_model(init, device="cpu")
    model = loaded.model.float()
    objective = ObjectiveConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.get("objective", {}).items()})
    tcfg = TrainConfig(
        steps=10**7, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        trainable=tuple(cfg.get("trainable", TrainConfig.trainable)), objective=objective,
        augment=AugmentConfig(), val_every=10**9, checkpoint_every=10**9, seed=int(cfg.get("seed", 0)),
        amp=True, max_seconds=args.budget_s,
        # weights for domains this pack holds (the config may name data sets it lacks)
        domain_weights={k: v for k, v in (cfg.get("domain_weights") or {}).items()
                        if k in {ex.domain for ex in train_ex}} or None,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out.parent / "gpu_work"
    work.mkdir(parents=True, exist_ok=True)
    history = (args.out / "history.jsonl").open("w")
    t_start = time.time()

    def on_loss(step: int, losses: dict) -> None:
        history.write(json.dumps({"step": step, "time": time.time() - t_start, **losses}) + "\n")
        if step % 10 == 0 or step == 1:
            print(f"step {step} " + " ".join(f"{k}={v:.4f}" for k, v in losses.items())
                  + f" {time.time() - t_start:.0f}s", flush=True)

    parent = copy.deepcopy(model) if (val_ex and args.eval_objects and not args.no_eval_parent) else None
    print(f"device {device}; {len(train_ex)} train / {len(val_ex)} val rows; batch {args.batch_size}; "
          f"budget {args.budget_s:.0f}s; parent {init}", flush=True)
    result = train(model, train_ex, (), tcfg, Callbacks(on_loss=on_loss), checkpoint_path=None, device=device)
    history.close()
    steps, seconds = result.state.step, result.seconds
    print(f"trained {steps} steps in {seconds:.0f}s ({seconds / max(1, steps):.3f} s/step)", flush=True)
    model = result.model
    evals: dict = {}
    if val_ex and args.eval_objects:
        t = time.time()
        evals["trained"] = evaluate_examples(model, val_ex, objective.num_passes, args.eval_objects)
        if parent is not None:
            evals["parent"] = evaluate_examples(parent.to(device), val_ex, objective.num_passes, args.eval_objects)
        evals["seconds"] = time.time() - t
        (args.out / "eval.json").write_text(json.dumps(evals, indent=2))
    counts: dict[str, int] = {}
    for ex in train_ex:
        counts[ex.domain] = counts.get(ex.domain, 0) + 1
    card = {
        "parent": str(init), "steps": steps, "mode": cfg.get("mode", "instance"), "num_passes": objective.num_passes,
        "training_data": [{"name": k, "count": v} for k, v in sorted(counts.items())],
        "metrics": {"pack_val": evals.get("trained", {})},
        "recipe": {"script": "training/gpu_train.py", "config": cfg, "budget_s": args.budget_s,
                   "batch_size": args.batch_size, "lr": args.lr, "device": str(device),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "train_seconds": seconds,
    }
    files = save_fp16(model, args.out, card, args.max_file_mib)
    summary = {"steps": steps, "train_seconds": seconds, "files": [p.name for p in files],
               "file_mib": [round(p.stat().st_size / MiB, 2) for p in files]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
