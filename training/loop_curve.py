"""The loop itself: how much does fine-tuning on N annotated images help, on a known domain or a new one?

    python training/loop_curve.py                          # polyps, N = 10 30 100, base = default model
    python training/loop_curve.py --data hc18_fetal_head_us --sizes 10 30 --steps 60 --runs runs/loop_curve_hc18
    python training/loop_curve.py --report                 # figure + table from the results
    python training/loop_curve.py new-modality             # fluorescence -> H&E nuclei (see below)
    python training/loop_curve.py new-modality --report

Both flavours share the steps: a subset folder of N train images, ``finetune_model`` with
``default_finetune_config(steps)`` (the plugin's button), evaluation through the full pipeline.

**Same domain** (default):

For each N, a copy of the base model is fine-tuned with
``napari_samsp.finetune.job.finetune_model`` and ``default_finetune_config(steps)`` (what
the plugin's "fine-tune" button and ``samsp finetune`` run: LoRA on the encoder + prompt
encoder + mask decoder + SAM-UNet branch, validation at the start so the result is never
worse than the base on the selection set) on the first N images (sorted by stem) of the
data set's train split. The same number of steps for every N.

Three disjoint parts of the validation split (sorted stems):
* the first 40 stems: skipped (``training/train.py`` selects the default model's best
  weights on them, ``val_limit`` 40);
* the next ``--select`` (40): the fine-tuning's own validation set (it picks the best step);
* ``--eval`` (60) evenly spaced over the rest: the reported Dice, through the full
  inference pipeline (``Predictor`` + ``autoseg.segment_image``, semantic mode).

Results: ``runs/loop_curve/<data>/n<N>/results.json`` (skipped when present) and
``runs/loop_curve/<data>/base.json``.

**New modality** (``new-modality``; ``training/new_modality.py`` is the same command).
No pre-trained SAM and no electron microscopy data are available here, so the "new modality" is built from real data we have: DSB2018 holds fluorescence
nuclei (``kind`` "fluo", bright on dark) and H&E-stained histology nuclei
("stained_color", dark purple on pink), different imaging entirely.

1. **Base**: ``samunet_tiny`` trained from scratch by ``training/train.py`` on the
   fluorescence train images only (it never sees a stained image; no intensity
   inversion in the augmentation).
2. **Fine-tune**: for each N, a copy of the base is fine-tuned with
   ``finetune.job.finetune_model`` and ``default_finetune_config(steps)``, what the
   plugin's button and ``samsp finetune`` run, on the first N stained *train*
   images (sorted stems). Its own selection set (best step, "never worse than the
   base") is the last ``--select`` stained train images, disjoint from every N.
3. **Evaluation**: Dice and instance F1@0.5 through the full pipeline (``Predictor``
   + ``autoseg.segment_image``, instance mode) on every stained *val* image, and on
   ``--fluo-eval`` fluorescence val images to see what fine-tuning costs on the
   modality the base knew (forgetting).
4. **Reference**: the embedded default model (trained on every kind, ``--reference``)
   on the same images, i.e. one joint model against the fluorescence specialist.

Results: ``runs/new_modality/`` (``base/``, ``n<N>/results.json``, ``table.md``);
figure ``docs/figures/new_modality.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import FIGURES, REPO, evenly_spaced, log_to, resolve_data, set_threads  # noqa: E402
from evaluate_model import SamSegmenter  # noqa: E402

from napari_samsp.finetune.checkpoint import load_checkpoint  # noqa: E402

RUNS = REPO / "runs" / "loop_curve"
SKIP_VAL = 40  # training/train.py's val_limit: the default model's selection images


def pick_base(spec: str | None):
    """The base model: ``spec`` when given, else the default model's newest weights.

    Order: napari_samsp/weights/default.safetensors, runs/default/model.safetensors,
    runs/default/checkpoint.pt ('best'), runs/ablation/k2_ref/model.safetensors.
    """
    from napari_samsp.models.checkpoints import LoadedModel, load_model

    candidates = [spec] if spec else [
        str(REPO / "napari_samsp" / "weights" / "default.safetensors"),
        str(REPO / "runs" / "default" / "model.safetensors"),
        str(REPO / "runs" / "default" / "checkpoint.pt"),
        str(REPO / "runs" / "ablation" / "k2_ref" / "model.safetensors"),
    ]
    for c in candidates:
        p = Path(c)
        if not p.is_file():
            continue
        if p.suffix == ".pt":
            ck = load_checkpoint(p, "best")
            card = {**ck.card(), "version": ck.model_id}
            return LoadedModel(ck.build_model(), card, ck.model_id, str(p), False)
        lm = load_model(str(p), device="cpu")
        return lm
    raise SystemExit("no base model found: pass --base")


def make_subset_folder(root: Path, train_stems: list[str], val_stems: list[str], dest: Path) -> Path:
    """A folder in the data layout (symlinks) holding only the given stems, with splits.json."""
    from napari_samsp.io import list_pairs

    pairs = {p.stem: p for p in list_pairs(root)}
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    for s in train_stems + val_stems:
        p = pairs[s]
        for src, sub in ((Path(p.image_path), "images"), (Path(p.mask_path), "masks")):
            link = dest / sub / src.name
            if not link.exists():
                link.symlink_to(src.resolve())
    (dest / "splits.json").write_text(json.dumps({"train": train_stems, "val": val_stems}))
    return dest


def dice_on(model, model_id: str, num_passes: int, pairs, log, mode: str = "semantic") -> dict:
    """Dice per image through the full pipeline; in instance mode also instance F1@0.5."""
    from napari_samsp import metrics
    from napari_samsp.io import read_image, read_mask

    seg = SamSegmenter(model, model_id, num_passes)
    d, f1, t = [], [], []
    for p in pairs:
        img, gt = read_image(p.image_path), read_mask(p.mask_path)
        t0 = time.perf_counter()
        lab = seg.segment(img, mode)
        t.append(time.perf_counter() - t0)
        d.append(metrics.dice(lab, gt))
        if mode == "instance":
            f1.append(metrics.instance_f1(lab, gt)["f1"])
    out = {"dice": float(np.mean(d)), "dice_std": float(np.std(d)), "n": len(d),
           "per_image": [float(x) for x in d], "seconds_per_image": float(np.mean(t))}
    if f1:
        out.update(f1=float(np.mean(f1)), per_image_f1=[float(x) for x in f1])
    log(f"  Dice {out['dice']:.4f}" + (f"  F1@0.5 {out['f1']:.4f}" if f1 else "")
        + f" on {len(d)} images ({out['seconds_per_image']:.3f} s/img)")
    return out


def finetune_n(base, folder: Path, n: int, steps: int, lr: float | None, log):
    """Fine-tune a copy of ``base`` on ``folder`` as the plugin does; returns (result, seconds, config)."""
    from napari_samsp.finetune.job import default_finetune_config, finetune_model
    from napari_samsp.finetune.loop import Callbacks

    cfg = default_finetune_config(steps)
    if lr:
        cfg = dataclasses.replace(cfg, lr=lr)
    torch.manual_seed(0)
    t0 = time.time()

    def on_val(step, m):
        log(f"  N={n} step {step}: selection Dice {m['dice']:.4f}")

    ft = finetune_model(base, [folder], cfg, Callbacks(on_val=on_val))
    secs = time.time() - t0
    log(f"N={n}: fine-tuned in {secs:.0f}s (selection Dice {ft.before['dice']:.4f} -> {ft.after['dice']:.4f}, "
        f"best step {ft.card['metrics']['best_step']})")
    return ft, secs, cfg


def run(args, log) -> dict:
    from napari_samsp.finetune.job import default_finetune_config
    from napari_samsp.io import list_pairs, read_splits, split_pairs

    root = resolve_data(args.data)
    out = RUNS / root.name
    out.mkdir(parents=True, exist_ok=True)
    tr, va = split_pairs(list_pairs(root), read_splits(root))
    tr = sorted(tr, key=lambda p: p.stem)
    va = sorted(va, key=lambda p: p.stem)
    select = va[SKIP_VAL : SKIP_VAL + args.select]
    eval_pairs = evenly_spaced(va[SKIP_VAL + args.select :], args.eval)
    base = pick_base(args.base)
    num_passes = base.model_card.num_passes
    log(f"base {base.source} ({base.model_id}); data {root.name}: {len(tr)} train, select {len(select)}, eval {len(eval_pairs)}")
    base_file = out / "base.json"
    if base_file.exists() and json.loads(base_file.read_text()).get("model_id") == base.model_id:
        base_res = json.loads(base_file.read_text())
    else:
        log("base model:")
        base_res = {"model_id": base.model_id, "source": base.source, **dice_on(base.model, base.model_id, num_passes, eval_pairs, log)}
        base_file.write_text(json.dumps(base_res, indent=2))
    results = {"base": base_res, "sizes": {}}
    cfg_lr = args.lr or default_finetune_config(args.steps).lr
    for n in args.sizes:
        res_file = out / f"n{n}" / "results.json"
        if res_file.exists():
            r = json.loads(res_file.read_text())
            if r.get("base_model_id") == base.model_id and r.get("steps") == args.steps and r.get("lr", default_finetune_config(args.steps).lr) == cfg_lr:
                results["sizes"][n] = r
                continue
        folder = make_subset_folder(root, [p.stem for p in tr[:n]], [p.stem for p in select], out / f"n{n}" / "data")
        ft, secs, cfg = finetune_n(base, folder, n, args.steps, args.lr, log)
        ev = dice_on(ft.model, f"{base.model_id}-ft{n}", num_passes, eval_pairs, log)
        r = {"n": n, "steps": args.steps, "lr": cfg.lr, "base_model_id": base.model_id, "finetune_seconds": secs,
             "selection_before": ft.before, "selection_after": ft.after, "best_step": ft.card["metrics"]["best_step"],
             "eval": ev}
        res_file.write_text(json.dumps(r, indent=2))
        results["sizes"][n] = r
    return results


def report(data: str, figure: str = "loop_curve.png") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = RUNS / Path(data).name
    base = json.loads((out / "base.json").read_text())
    rows = []
    for d in sorted(out.glob("n*/results.json"), key=lambda p: int(p.parent.name[1:])):
        rows.append(json.loads(d.read_text()))
    lines = ["| train images N | fine-tune time | selection Dice before -> after (best step) | eval Dice (± s.e.) | change vs base |",
             "|---|---|---|---|---|",
             f"| 0 (base) | - | - | {base['dice']:.3f} ± {base['dice_std'] / np.sqrt(base['n']):.3f} | - |"]
    for r in rows:
        e = r["eval"]
        # paired difference per image vs the base
        diff = np.asarray(e["per_image"]) - np.asarray(base["per_image"])
        lines.append(f"| {r['n']} | {r['finetune_seconds'] / 60:.1f} min | {r['selection_before']['dice']:.3f} -> "
                     f"{r['selection_after']['dice']:.3f} ({r['best_step']}) | {e['dice']:.3f} ± {e['dice_std'] / np.sqrt(e['n']):.3f} "
                     f"| {diff.mean():+.3f} ± {diff.std() / np.sqrt(diff.size):.3f} (paired) |")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [0] + [r["n"] for r in rows]
    ys = [base["dice"]] + [r["eval"]["dice"] for r in rows]
    es = [base["dice_std"] / np.sqrt(base["n"])] + [r["eval"]["dice_std"] / np.sqrt(r["eval"]["n"]) for r in rows]
    ax.errorbar(range(len(xs)), ys, yerr=es, marker="o", capsize=3)
    ax.set_xticks(range(len(xs)), ["base"] + [str(x) for x in xs[1:]])
    ax.set_xlabel(f"fine-tuning images of {Path(data).name} (train split)")
    ax.set_ylabel(f"Dice, {base['n']} held-out val images")
    ax.set_title(f"the loop: {rows[0]['steps'] if rows else '?'} fine-tuning steps per point", fontsize=9)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / figure, dpi=110)
    plt.close(fig)
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    global RUNS
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["new-modality"]:
        return main_new_modality(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="polypgen_polyps")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100])
    ap.add_argument("--steps", type=int, default=120, help="fine-tuning steps (batch 4) for every N")
    ap.add_argument("--select", type=int, default=40, help="val images the fine-tuning selects its best step on")
    ap.add_argument("--eval", type=int, default=60, help="held-out val images for the reported Dice")
    ap.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the plugin's)")
    ap.add_argument("--base", help="base model file (default: the default model, see pick_base)")
    ap.add_argument("--runs", type=Path, default=None)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--figure", default="loop_curve.png", help="file name under docs/figures/")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.runs:
        RUNS = args.runs
    if not args.report:
        run(args, log_to(RUNS / Path(args.data).name / "log.txt"))
    print(report(args.data, args.figure))
    return 0


# ----------------------------------------------------------------------------------------------
# new modality: a base trained on one kind of image, fine-tuned on N images of another kind
# ----------------------------------------------------------------------------------------------


def kinds_split(root: Path, key: str) -> dict[tuple[str, str], list[str]]:
    """(kind, split) -> sorted stems, from the data set's ``index.json`` and ``splits.json``."""
    index = json.loads((root / "index.json").read_text())
    splits = json.loads((root / "splits.json").read_text())
    split_of = {s: name for name in ("train", "val") for s in splits.get(name, [])}
    out: dict[tuple[str, str], list[str]] = {}
    for entry in index:
        kind, split = entry.get(key), split_of.get(entry["stem"])
        if kind is not None and split is not None:
            out.setdefault((kind, split), []).append(entry["stem"])
    return {k: sorted(v) for k, v in out.items()}


def evaluate_on(model, model_id: str, num_passes: int, pairs, log) -> dict:
    """Dice and instance F1@0.5 in instance mode (:func:`dice_on`)."""
    return dice_on(model, model_id, num_passes, pairs, log, mode="instance")


def train_base(out: Path, folder: Path, steps: int, log) -> Path:
    """``training/train.py`` on the base modality; resumes from its checkpoint when interrupted."""
    import train as recipe

    model_file = out / "model.safetensors"
    if model_file.is_file():
        return model_file
    cfg = {
        "model": "samunet_tiny", "data": [str(folder)], "steps": steps, "batch_size": 4, "lr": 4e-4,
        "warmup_steps": 50, "max_side": 512, "val_limit": 0, "val_every": max(50, steps // 4),
        "checkpoint_every": 50, "threads": torch.get_num_threads(), "mode": "instance",
        "objective": {"num_passes": 2, "distill_weight": 1.0, "prompts_per_image": 3, "click_iterations": 1,
                      "focal_alpha": -1},
        "out": str(out),
    }
    cfg_file = out / "recipe.json"
    out.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(json.dumps(cfg, indent=2))
    log(f"training the base on {folder} for {steps} steps (recipe {cfg_file})")
    recipe.main(["--config", str(cfg_file)])
    return model_file


def run_new_modality(args, log) -> None:
    from napari_samsp.io import list_pairs
    from napari_samsp.models.checkpoints import load_model

    root = resolve_data(args.data)
    out = args.runs
    groups = kinds_split(root, args.kind_key)
    base_train = groups[(args.base_kind, "train")]
    base_val = groups[(args.base_kind, "val")]
    new_train = groups[(args.new_kind, "train")]
    new_val = groups[(args.new_kind, "val")]
    select = new_train[-args.select:]
    pool = new_train[: len(new_train) - args.select]
    if max(args.sizes) > len(pool):
        raise SystemExit(f"only {len(pool)} {args.new_kind} train images outside the selection set")
    log(f"{root.name}: base '{args.base_kind}' {len(base_train)} train / {len(base_val)} val; "
        f"new '{args.new_kind}' pool {len(pool)}, selection {len(select)}, eval {len(new_val)}")

    base_folder = make_subset_folder(root, base_train, base_val[: args.base_select], out / "data_base")
    base_file = train_base(out / "base", base_folder, args.base_steps, log)
    base = load_model(str(base_file), device="cpu")
    num_passes = base.model_card.num_passes
    pairs = {p.stem: p for p in list_pairs(root)}
    eval_new = [pairs[s] for s in new_val]
    eval_old = evenly_spaced([pairs[s] for s in base_val[args.base_select:]], args.fluo_eval)

    res_file = out / "base_eval.json"
    if res_file.is_file() and json.loads(res_file.read_text()).get("model_id") == base.model_id:
        base_res = json.loads(res_file.read_text())
    else:
        log(f"base on {args.new_kind} val:")
        new = evaluate_on(base.model, base.model_id, num_passes, eval_new, log)
        log(f"base on {args.base_kind} val:")
        old = evaluate_on(base.model, base.model_id, num_passes, eval_old, log)
        base_res = {"model_id": base.model_id, "new": new, "old": old}
        res_file.write_text(json.dumps(base_res, indent=2))

    # Reference, not part of the loop: the embedded default model, trained on every kind
    # (stained included), on the same images: is one joint model worse than a specialist?
    ref_file = out / "default_eval.json"
    if args.reference and not ref_file.is_file():
        ref = load_model(args.reference, device="cpu")
        log(f"reference {ref.source} on {args.new_kind} val / {args.base_kind} val:")
        ref_res = {"model_id": ref.model_id, "source": ref.source,
                   "new": evaluate_on(ref.model, ref.model_id, ref.model_card.num_passes, eval_new, log),
                   "old": evaluate_on(ref.model, ref.model_id, ref.model_card.num_passes, eval_old, log)}
        ref_file.write_text(json.dumps(ref_res, indent=2))

    for n in args.sizes:
        res_file = out / f"n{n}" / "results.json"
        if res_file.is_file():
            r = json.loads(res_file.read_text())
            if r.get("base_model_id") == base.model_id and r.get("steps") == args.steps:
                continue
        folder = make_subset_folder(root, pool[:n], select, out / f"n{n}" / "data")
        ft, secs, _ = finetune_n(base, folder, n, args.steps, None, log)
        log(f"N={n} on {args.new_kind} val:")
        new = evaluate_on(ft.model, f"{base.model_id}-ft{n}", num_passes, eval_new, log)
        log(f"N={n} on {args.base_kind} val:")
        old = evaluate_on(ft.model, f"{base.model_id}-ft{n}", num_passes, eval_old, log)
        res_file.parent.mkdir(parents=True, exist_ok=True)
        res_file.write_text(json.dumps({
            "n": n, "steps": args.steps, "base_model_id": base.model_id, "finetune_seconds": secs,
            "selection_before": ft.before, "selection_after": ft.after, "best_step": ft.card["metrics"]["best_step"],
            "new": new, "old": old}, indent=2))


def report_new_modality(out: Path, new_kind: str, base_kind: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = json.loads((out / "base_eval.json").read_text())
    rows = sorted((json.loads(p.read_text()) for p in out.glob("n*/results.json")), key=lambda r: r["n"])

    def se(r):
        return r["dice_std"] / np.sqrt(r["n"])

    lines = [f"| {new_kind} train images N | fine-tune time | best step | Dice on {new_kind} val (± s.e.) | change vs base (paired) "
             f"| F1@0.5 on {new_kind} | Dice on {base_kind} val |",
             "|---|---|---|---|---|---|---|",
             f"| 0 (base) | - | - | {base['new']['dice']:.3f} ± {se(base['new']):.3f} | - | {base['new']['f1']:.3f} "
             f"| {base['old']['dice']:.3f} |"]
    for r in rows:
        diff = np.asarray(r["new"]["per_image"]) - np.asarray(base["new"]["per_image"])
        lines.append(f"| {r['n']} | {r['finetune_seconds'] / 60:.1f} min | {r['best_step']} | {r['new']['dice']:.3f} ± {se(r['new']):.3f} "
                     f"| {diff.mean():+.3f} ± {diff.std() / np.sqrt(diff.size):.3f} | {r['new']['f1']:.3f} | {r['old']['dice']:.3f} |")
    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    xs = ["base"] + [str(r["n"]) for r in rows]
    ax.errorbar(range(len(xs)), [base["new"]["dice"]] + [r["new"]["dice"] for r in rows],
                yerr=[se(base["new"])] + [se(r["new"]) for r in rows], marker="o", capsize=3, label=f"{new_kind} (new)")
    ax.errorbar(range(len(xs)), [base["old"]["dice"]] + [r["old"]["dice"] for r in rows],
                yerr=[se(base["old"])] + [se(r["old"]) for r in rows], marker="s", capsize=3, label=f"{base_kind} (known)")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(f"{new_kind} images fine-tuned on")
    ax.set_ylabel("Dice, held-out val images")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"new modality: {rows[0]['steps'] if rows else '?'} fine-tuning steps per point", fontsize=9)
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / "new_modality.png", dpi=110)
    plt.close(fig)
    ref_file = out / "default_eval.json"
    if ref_file.is_file():
        ref = json.loads(ref_file.read_text())
        lines.append(f"| reference: the default model {ref['model_id'][:8]} (trained on every kind) | - | - | {ref['new']['dice']:.3f} ± {se(ref['new']):.3f} "
                     f"| - | {ref['new']['f1']:.3f} | {ref['old']['dice']:.3f} (F1 {ref['old']['f1']:.3f}; base F1 {base['old']['f1']:.3f}) |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    return table


def main_new_modality(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="loop_curve.py new-modality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="dsb2018_nuclei")
    ap.add_argument("--kind-key", default="kind", help="index.json field that names the modality")
    ap.add_argument("--base-kind", default="fluo")
    ap.add_argument("--new-kind", default="stained_color")
    ap.add_argument("--base-steps", type=int, default=800)
    ap.add_argument("--base-select", type=int, default=20, help="base-kind val images the base's training validates on")
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 10, 30])
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps (batch 4) for every N")
    ap.add_argument("--select", type=int, default=16, help="new-kind train images the fine-tuning selects on")
    ap.add_argument("--fluo-eval", type=int, default=30, help="base-kind val images for the forgetting check")
    ap.add_argument("--reference", default="default",
                    help="also evaluate this model (trained on both kinds) on the same images; '' to skip")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "new_modality")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.report:
        run_new_modality(args, log_to(args.runs / "log.txt"))
    print(report_new_modality(args.runs, args.new_kind, args.base_kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
