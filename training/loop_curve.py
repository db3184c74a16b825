"""The loop itself: how much does fine-tuning on N annotated images of one data set help?

    python training/loop_curve.py                          # polyps, N = 10 30 100, base = default model
    python training/loop_curve.py --data hc18_fetal_head_us --sizes 10 30 --steps 60 --runs runs/loop_curve_hc18
    python training/loop_curve.py --report                 # figure + table from the results

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

from evaluate_model import SamSegmenter, evenly_spaced, load_checkpoint, resolve_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "loop_curve"
FIGURES = REPO / "docs" / "figures"
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
            cfg = json.loads((p.parent / "config.json").read_text()).get("config", {}) if (p.parent / "config.json").is_file() else {}
            ld = load_checkpoint(p, cfg.get("model", "samunet_tiny"), "best")
            card = {**ld.card, "version": ld.model_id}
            return LoadedModel(ld.model, card, ld.model_id, str(p), False)
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


def run(args, log) -> dict:
    from napari_samsp.finetune.job import default_finetune_config, finetune_model
    from napari_samsp.finetune.loop import Callbacks
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
    num_passes = int(base.card.get("num_passes", 2))
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
        cfg = default_finetune_config(args.steps)
        if args.lr:
            cfg = dataclasses.replace(cfg, lr=args.lr)
        torch.manual_seed(0)
        t0 = time.time()

        def on_val(step, m, _n=n):
            log(f"  N={_n} step {step}: selection Dice {m['dice']:.4f}")

        ft = finetune_model(base, [folder], cfg, Callbacks(on_val=on_val))
        secs = time.time() - t0
        log(f"N={n}: fine-tuned in {secs:.0f}s (selection Dice {ft.before['dice']:.4f} -> {ft.after['dice']:.4f}, "
            f"best step {ft.card['metrics']['best_step']})")
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
    torch.set_num_threads(args.threads)
    if args.runs:
        RUNS = args.runs
    if not args.report:
        (RUNS / Path(args.data).name).mkdir(parents=True, exist_ok=True)
        logf = (RUNS / Path(args.data).name / "log.txt").open("a")

        def log(msg):
            line = f"[{time.strftime('%H:%M:%S')}] {msg}"
            print(line, flush=True)
            logf.write(line + "\n")
            logf.flush()

        run(args, log)
    print(report(args.data, args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
