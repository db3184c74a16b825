"""Training recipe: single process or ``torchrun`` DDP (gloo on CPU, nccl on GPU), resumable.

    python training/train.py --config training/configs/default.json
    torchrun --nproc-per-node 2 training/train.py --config ... --set steps=20

The config is a JSON file (see ``training/configs/``); ``--set key=value`` overrides
top-level keys and ``objective.<key>=value`` entries. The run directory holds
``checkpoint.pt`` (resumed automatically), ``history.jsonl`` and, at the end,
``model.safetensors`` with its card.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_ROOT, resolve_data  # noqa: E402, F401  (DATA_ROOT: the old import path)

from napari_samsp.finetune.data import AugmentConfig, load_examples  # noqa: E402
from napari_samsp.finetune.loop import Callbacks, TrainConfig, train  # noqa: E402
from napari_samsp.finetune.objective import ObjectiveConfig  # noqa: E402
from napari_samsp.io import list_pairs, read_splits, split_pairs  # noqa: E402
from napari_samsp.models import build_model  # noqa: E402
from napari_samsp.models.build import get_config  # noqa: E402



def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: Path | None, overrides: list[str]) -> dict:
    cfg: dict = json.loads(Path(path).read_text()) if path else {}
    for item in overrides:
        key, _, value = item.partition("=")
        target = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = parse_value(value)
    return cfg


def build_examples(cfg: dict, rank: int):
    train_ex, val_ex = [], []
    for entry in cfg["data"]:
        root = resolve_data(entry)
        pairs = list_pairs(root)
        tr, va = split_pairs(pairs, read_splits(root))
        limit = cfg.get("train_limit")
        if limit:
            tr = tr[: int(limit)]
        val_limit = cfg.get("val_limit", 40)
        name = root.name
        train_ex += load_examples(tr, name, cfg.get("max_side", 512))
        if rank == 0:
            va = va[: int(val_limit)] if val_limit else va
            val_ex += load_examples(va, name, cfg.get("max_side", 512))
    return train_ex, val_ex


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, help="run directory (default: from config 'out')")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    out = Path(args.out or cfg.get("out", "runs/default"))

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads or cfg.get("threads", max(1, (os.cpu_count() or 2) // world)))
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s")

    torch.manual_seed(cfg.get("seed", 0))  # every rank builds identical initial weights
    model_cfg = get_config(cfg.get("model", "samunet_tiny"))
    model = build_model(model_cfg)
    init = parent = cfg.get("init")
    if init:
        from napari_samsp.models.checkpoints import load_model

        loaded = load_model(init, device="cpu")
        model, model_cfg = loaded.model, loaded.model.config
        parent = loaded.model_card.version or init  # the version id, not a path that may move
    # The preprocessing is the init model's (a fine-tune inherits it); a fresh model takes the
    # config's "preprocessing" (default: the legacy samsp-v1 every shipped model was trained with).
    from napari_samsp.transforms import model_preprocessing, set_model_preprocessing

    if cfg.get("preprocessing") and init and cfg["preprocessing"] != model_preprocessing(model):
        raise SystemExit(f"config preprocessing {cfg['preprocessing']!r} differs from the init model's "
                         f"{model_preprocessing(model)!r}: a fine-tune must keep its parent's preprocessing")
    if cfg.get("preprocessing"):
        set_model_preprocessing(model, cfg["preprocessing"])
    train_ex, val_ex = build_examples(cfg, rank)
    objective = ObjectiveConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.get("objective", {}).items()})
    augment = AugmentConfig(**cfg["augment"]) if isinstance(cfg.get("augment"), dict) else (None if cfg.get("augment") is False else AugmentConfig())
    tcfg = TrainConfig(
        steps=int(cfg.get("steps", 1000)),
        batch_size=int(cfg.get("batch_size", 4)),
        lr=float(cfg.get("lr", 3e-4)),
        warmup_steps=int(cfg.get("warmup_steps", 50)),
        trainable=tuple(cfg.get("trainable", TrainConfig.trainable)),
        lora_rank=int(cfg.get("lora_rank", 4)),
        objective=objective,
        augment=augment,
        val_every=int(cfg.get("val_every", 200)),
        patience=int(cfg.get("patience", 0)),
        checkpoint_every=int(cfg.get("checkpoint_every", 100)),
        seed=int(cfg.get("seed", 0)),
        validate_at_start=bool(cfg.get("validate_at_start", False)),
        weight_decay=float(cfg.get("weight_decay", TrainConfig.weight_decay)),
        grad_clip=float(cfg.get("grad_clip", TrainConfig.grad_clip)),
        amp=bool(cfg.get("amp", TrainConfig.amp)),
        domain_weights=cfg.get("domain_weights"),
        # a time budget: the cosine anneals over it and the run stops when it is spent
        max_seconds=float(cfg["max_seconds"]) if cfg.get("max_seconds") else None,
    )
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / "config.json").write_text(json.dumps({"config": cfg, "train": tcfg.to_dict(), "preprocessing": model_preprocessing(model)}, indent=2, default=str))
    log_every = int(cfg.get("log_every", 20))
    t_start = time.time()
    history = (out / "history.jsonl").open("a") if rank == 0 else None

    def on_loss(step: int, losses: dict) -> None:
        if step % log_every == 0 and rank == 0:
            rate = (time.time() - t_start)
            print(f"step {step}/{tcfg.steps} " + " ".join(f"{k}={v:.4f}" for k, v in losses.items()) + f" elapsed={rate:.0f}s", flush=True)

    def on_val(step: int, metrics: dict) -> None:
        print(f"val step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
        if history:
            history.write(json.dumps({"step": step, "time": time.time() - t_start, **metrics}) + "\n")
            history.flush()

    result = train(model, train_ex, val_ex, tcfg, Callbacks(on_loss=on_loss, on_val=on_val),
                   checkpoint_path=out / "checkpoint.pt", device=device)
    if dist.is_initialized():
        # Every rank reports a checksum of its weights so the recipe can check they agree.
        checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in result.model.parameters())], dtype=torch.float64)
        gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, checksum)
        if rank == 0:
            (out / "rank_checksums.json").write_text(json.dumps([float(g) for g in gathered]))
    if rank == 0:
        from napari_samsp.models.checkpoints import save_model

        counts = {}
        for ex in train_ex:
            counts[ex.domain] = counts.get(ex.domain, 0) + 1
        card = {
            "config": model_cfg.to_dict(),
            "input_size": model_cfg.img_size,
            "parent": parent,
            "training_data": [{"name": k, "count": v} for k, v in counts.items()],
            "steps": result.state.step,
            "metrics": {"val": result.state.history[-1] if result.state.history else {},
                        "best_val_dice": result.state.best_val, "best_step": result.state.best_step},
            "mode": cfg.get("mode", "semantic"),
            "num_passes": objective.num_passes,
            "recipe": {"config": cfg, "command": " ".join(sys.argv)},
            "train_seconds": result.seconds,
        }
        save_model(result.model, out / "model.safetensors", card)
        print(f"saved {out / 'model.safetensors'} (best val Dice {result.state.best_val:.4f} at step {result.state.best_step})")
    if history:
        history.close()
    if dist.is_initialized():
        dist.barrier()  # rank 0 saves the model first; tear gloo down only when both are done
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
