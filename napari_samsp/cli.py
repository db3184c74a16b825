"""The ``samsp`` command (contract in docs/ARCHITECTURE.md): models, segment, finetune, evaluate, rank.

Exit code 0 on success; on bad input a single line ``samsp: error: <reason>`` on
stderr and exit code 2 (1 for unexpected failures).
"""

from __future__ import annotations

import os

# Before torch is imported anywhere: with OpenMP's default active waiting, torch
# slows 50-70x when another process holds one of the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402


def _err(msg: str) -> None:
    print(f"samsp: error: {msg}", file=sys.stderr)


def _warn(msg: str) -> None:
    print(f"samsp: warning: {msg}", file=sys.stderr)


def _set_threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or max(1, os.cpu_count() or 1))


def _open_project(args, create: bool = False):
    """The ``--project`` of this command (None without one); must exist unless ``create``."""
    if getattr(args, "project", None) is None:
        return None
    from .errors import DataLayoutError
    from .project import Project

    project = Project(args.project)
    if not create and not project.root.is_dir():
        raise DataLayoutError(f"--project {project.root}: no such folder (the plugin or "
                              "`samsp finetune --project` creates a project)")
    return project


def _load(args, project=None):
    """``--model``; without it, the project's active version (when there is a project), else the embedded default."""
    from .models.checkpoints import load_model

    trust = getattr(args, "trust", False)
    if project is not None and args.model is None:
        active = project.active_version()
        print(f"samsp: model: {'the embedded default' if active is None else 'version ' + active.path.stem}"
              f" (the active model of project {project.root})", file=sys.stderr)
        loaded = project.load_active(device=args.device, trust=trust)
    else:
        loaded = load_model(args.model, device=args.device, trust=trust)
    if loaded.is_random:
        _warn("=" * 70)
        _warn(f"USING A RANDOMLY INITIALISED MODEL ({loaded.source}): its masks are meaningless.")
        _warn("Pass --model with trained weights (a .safetensors of ours or an official SAM .pth).")
        _warn("=" * 70)
    return loaded


def cmd_models(args) -> int:
    from .models.build import describe_models
    from .models.card import ModelCard
    from .models.checkpoints import DEFAULT_WEIGHTS, read_card

    if DEFAULT_WEIGHTS.is_file():
        card = ModelCard.from_dict(read_card(DEFAULT_WEIGHTS))
        data = ", ".join(f"{d['name']} ({d['count']})" for d in card.training_data)
        print(f"{'default':<16} embedded default model: {card.config_name}, mode {card.mode}, "
              f"K={card.num_passes}, preprocessing {card.preprocessing}, "
              f"trained {card.steps} steps on {data}")
    else:
        print(f"{'default':<16} (no embedded weights in this installation: a random 'tiny' model is used)")
    for name, desc in describe_models():
        print(f"{name:<16} {desc}")
    print("\nAny path works too: our .safetensors, an official SAM / MedSAM / micro-sam .pth or .pt (vit_b/l/h; "
          "wrapped state dicts too; preprocessing 'sam'), or a SAM-UNet checkpoint (--trust).")
    return 0


def _segment_one(predictor, image, mode: str, options: dict):
    import numpy as np

    from .autoseg import segment_image, segment_stack
    from .transforms import split_planes

    planes, is_stack = split_planes(image)
    if is_stack:
        return segment_stack(predictor, image, mode=mode, **options), True
    return segment_image(predictor, image, mode=mode, **options).labels.astype(np.uint16), False


def _check_input(path: Path, image) -> None:
    """What segmenting ``image`` would refuse, checked up front; the message names the file."""
    import numpy as np

    from .errors import InputImageError
    from .transforms import split_planes

    from .cli_checks import check_channels

    check_channels(path, image)
    try:
        split_planes(image)
        if not (image.dtype == bool or np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise InputImageError(f"unsupported image dtype {image.dtype}; expected integers or floats")
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise InputImageError("image contains NaN or infinite values")
    except InputImageError as exc:
        raise InputImageError(f"{path}: {exc}") from None


def cmd_segment(args) -> int:
    from .autoseg import SegmentOptions
    from .io import find_images, read_image, write_png_atomic, write_tiff_atomic
    from .predictor import EmbeddingCache, Predictor

    _set_threads(args.threads)
    project = _open_project(args)
    paths = find_images(args.inputs)
    # Read and check every input before writing anything, so a bad file in a
    # folder stops the run before any output exists. Inputs are kept in memory up to
    # 512 MB in all; the rest are read again when their turn comes.
    from . import bigimage

    images, kept, huge = [], 0, set()
    for p in paths:
        head = bigimage.header_shape(p)  # huge TIFFs are checked band by band, never loaded whole
        if head is not None and bigimage.is_huge(head[0]):
            bigimage.check_lazy(p, bigimage.open_lazy(p))
            huge.add(p)
            images.append(None)
            continue
        img = read_image(p)
        _check_input(p, img)
        if bigimage.is_huge(img.shape):
            huge.add(p)
        kept += img.nbytes
        images.append(img if kept <= 512 * 2**20 and p not in huge else None)
        del img
    loaded = _load(args, project)
    mode = args.mode or loaded.model_card.mode
    options = SegmentOptions.from_card(loaded.model_card, mode).kwargs()
    if args.passes and mode != "everything":
        options["num_passes"] = args.passes
    if args.flip_views and mode != "everything":
        options["flip_views"] = args.flip_views
    if args.points_per_side is not None and mode == "everything":
        options["points_per_side"] = args.points_per_side
    if mode == "everything":  # bad options: one line before anything is written
        from .everything import EverythingOptions

        EverythingOptions.from_kwargs(**options)
    predictor = Predictor.for_loaded(loaded, EmbeddingCache(None)) if project is None else project.predictor(loaded)
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    total_objects = 0
    for i, (path, img) in enumerate(zip(paths, images), 1):
        if img is None and not (path in huge and path.suffix.lower() in (".tif", ".tiff")):
            img = read_image(path)
        images[i - 1] = None  # free each input once segmented
        if path in huge:  # tile by tile into a label TIFF on disk, bounded memory
            lazy = path.suffix.lower() in (".tif", ".tiff")
            source = bigimage.open_lazy(path) if lazy else img
            del img
            out = outdir / f"{path.stem}.tif"
            n = bigimage.segment_to_tiff(
                predictor, source, out, mode,
                progress=lambda d, t, name=path.name: print(f"  {name}: tile {d}/{t}", flush=True), **options)
            print(f"[{i}/{len(paths)}] {path.name} -> {out} ({n} object{'s' if n != 1 else ''}, mode {mode}, "
                  "tiled to disk)", flush=True)
            total_objects += n
            continue
        labels, is_stack = _segment_one(predictor, img, mode, options)
        if is_stack:
            out = write_tiff_atomic(outdir / f"{path.stem}.tif", labels)
        else:
            out = write_png_atomic(outdir / f"{path.stem}.png", labels)
        n = int(labels.max())
        print(f"[{i}/{len(paths)}] {path.name} -> {out} ({n} object{'s' if n != 1 else ''}, mode {mode})", flush=True)
        total_objects += n
    print(f"done: {len(paths)} image{'s' if len(paths) != 1 else ''} segmented into {outdir} "
          f"({total_objects} objects in all)", flush=True)
    return 0


def cmd_finetune(args) -> int:
    import dataclasses

    from .finetune.job import default_finetune_config, finetune_model
    from .finetune.loop import Callbacks
    from .models.checkpoints import save_model

    _set_threads(args.threads)
    project = _open_project(args, create=True)
    base = _load(args, project)
    cfg = default_finetune_config(args.steps)
    if args.trainable:
        cfg = dataclasses.replace(cfg, trainable=tuple(args.trainable.split(",")))
    if args.lr:
        cfg = dataclasses.replace(cfg, lr=args.lr)

    def progress(step: int, total: int) -> None:
        if step % max(1, total // 20) == 0 or step == total:
            print(f"step {step}/{total}", flush=True)

    def on_val(step: int, metrics: dict) -> None:
        print(f"validation at step {step}: Dice {metrics['dice']:.4f}", flush=True)

    callbacks = Callbacks(progress=progress, on_val=on_val)
    if project is not None:
        return _finetune_into_project(project, base, cfg, callbacks, args)
    result = finetune_model(base, args.data, cfg, callbacks, val_fraction=args.val_split)
    out = save_model(result.model, args.output, result.card)
    print(f"saved {out}")
    _print_finetune_result(result.before, result.after, result.kept_base, cfg.min_gain, out.name)
    return 0


def _print_finetune_result(before: dict, after: dict, kept_base: bool, min_gain: float, name: str) -> None:
    print(f"validation Dice: before {before['dice']:.4f}, after {after['dice']:.4f}")
    if kept_base:
        print(f"no training step beat the base model by {min_gain} Dice on validation: {name} has the base's weights")
    print(f"final validation Dice: {after['dice']:.4f}")


def _finetune_into_project(project, base, cfg, callbacks, args) -> int:
    """``finetune --project``: the result becomes the project's active version (and is copied to ``-o``)."""
    from .models.checkpoints import save_model

    outcome = project.finetune(base, cfg, callbacks, data_dirs=args.data, val_fraction=args.val_split)
    info = outcome.version
    print(f"version {info.path.stem} is the active model of project {project.root} ({info.path})")
    if args.output:
        out = save_model(project.load_version(info, device="cpu").model, args.output, info.card)
        print(f"saved {out}")
    _print_finetune_result(outcome.before, outcome.after, outcome.kept_base, cfg.min_gain, info.path.name)
    return 0


def cmd_evaluate(args) -> int:
    from .metrics import evaluate_folders

    report = evaluate_folders(args.pred, args.gt, instances=args.instances)
    if not args.per_image:
        report.pop("per_image", None)
    print(json.dumps(report, indent=None if args.compact else 2))
    return 0


def cmd_rank(args) -> int:
    from .io import find_images
    from .predictor import EmbeddingCache, Predictor
    from .reward import rank_paths

    _set_threads(args.threads)
    paths = find_images(args.inputs)
    project = _open_project(args)
    loaded = _load(args, project)
    if project is not None:  # the plugin's ranked queue of this project: the same order
        rows = project.rank(project.predictor(loaded), paths, loaded.model_card, args.mode, args.store)
    else:
        from .work_queue import rank_options

        # The plugin's ranked queue uses the same options (rank_options): both give the same order.
        # built as Project.predictor builds it (the card's mirror views), so the order is the plugin's
        predictor = Predictor.for_loaded(loaded, EmbeddingCache.default())
        rows = rank_paths(predictor, paths, **rank_options(loaded.model_card, args.mode, args.store))
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


def cmd_improve(args) -> int:
    from .io import find_images
    from .models.checkpoints import save_model
    from .reward.improve import ImproveConfig, self_improve

    _set_threads(args.threads)
    unlabeled = find_images(args.unlabeled)
    base = _load(args)

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            print(f"{stage}: {done}/{total}", flush=True)

    report = self_improve(base, unlabeled, args.data, rounds=args.rounds,
                          config=ImproveConfig(steps=args.steps), progress=progress)
    for r in report.rounds:
        print(r.message, flush=True)
    print(report.message)
    # Written even when no round helped (then it holds the base weights and the card says so),
    # so scripts can rely on OUT existing.
    out = save_model(report.model, args.output, report.card)
    print(f"saved {out}; validation Dice {report.base_val:.4f} -> {report.final_val:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="samsp", description="Self-prompted Segment Anything: segment, fine-tune, evaluate, rank.")
    sub = ap.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="built-in name, or a weights file (default: the embedded model)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
        p.add_argument("--trust", action="store_true", help="allow unpickling a SAM-UNet .pth (only for files you trust)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")

    def project_arg(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--project", default=None, metavar="DIR", help=f"the plugin's project folder: {what}")

    p = sub.add_parser("models", help="list built-in models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("segment", help="prompt-free segmentation of images or folders")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--mode", choices=["semantic", "instance", "everything"], default=None,
                   help="semantic/instance: self-prompting (SAM-SP models); everything: masks from a point grid "
                        "(for official SAM, MedSAM, micro-sam weights). Default: the model card's")
    p.add_argument("--passes", type=int, default=None, help="self-prompting passes K (default: the model card's)")
    p.add_argument("--flip-views", type=int, choices=(1, 2, 4), default=None,
                   help="average the image with 1 or 3 mirror images (2 or 4 views; default: the model card's)")
    p.add_argument("--points-per-side", type=int, default=None, help="everything mode: grid points per side (default 32)")
    model_args(p)
    project_arg(p, "its active model (unless --model) and its embedding cache")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("finetune", help="fine-tune on folders in the data layout")
    p.add_argument("--data", action="append", default=None, metavar="DIR",
                   help="training folder (repeatable); with --project the default is the project's store")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="the fine-tuned model (.safetensors); optional with --project")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--val-split", type=float, default=0.2, help="validation fraction where a folder has no splits.json")
    p.add_argument("--trainable", default=None, help="comma list of: encoder, lora, prompt_encoder, mask_decoder, unet")
    p.add_argument("--lr", type=float, default=None)
    model_args(p)
    project_arg(p, "fine-tune its active model (unless --model) on its store (unless --data); "
                   "the result is added as a version and activated")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="score predictions against ground truth (JSON)")
    p.add_argument("--pred", required=True, metavar="DIR")
    p.add_argument("--gt", required=True, metavar="DIR")
    p.add_argument("--instances", action="store_true", help="also instance F1@0.5 (semantic masks split into components)")
    p.add_argument("--per-image", action="store_true", help="include per-image scores")
    p.add_argument("--compact", action="store_true", help="one-line JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("improve", help="self-improvement rounds on unlabeled images (calibrated self-reward)")
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="annotation store / data folder with corrected masks (always mixed in)")
    p.add_argument("--unlabeled", nargs="+", required=True, metavar="INPUT")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per round")
    model_args(p)
    p.set_defaults(func=cmd_improve)

    p = sub.add_parser("rank", help="rank unlabeled images for annotation (lowest expected Dice first)")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--store", default=None, help="annotation store used to calibrate the reward")
    p.add_argument("--mode", choices=["semantic", "instance"], default=None,
                   help="mode of the masks that are scored (default: the model card's); the plugin's Mode box")
    model_args(p)
    project_arg(p, "its active model (unless --model), its store's calibration (unless --store) and its cache")
    p.set_defaults(func=cmd_rank)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import SamspError

    try:
        from .cli_checks import check_args

        check_args(args)  # numbers and output paths, before any work
        return args.func(args)
    except SamspError as exc:
        _err(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as exc:  # unexpected: still one line, with the type, for bug reports
        if os.environ.get("SAMSP_DEBUG"):
            raise
        _err(f"{type(exc).__name__}: {exc}".splitlines()[0] + " (set SAMSP_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
