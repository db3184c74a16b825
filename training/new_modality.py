"""The loop on a modality the base model has never seen: fluorescence -> H&E histology nuclei.

    python training/new_modality.py                 # train the base, fine-tune N = 3 10 30, report
    python training/new_modality.py --report        # table + figure from the results

No pre-trained SAM and no electron microscopy data are available here, so the
"new modality" is built from real data we have: DSB2018 holds fluorescence
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
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_model import evenly_spaced, resolve_data  # noqa: E402
from loop_curve import dice_on, make_subset_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"


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
    """Dice and instance F1@0.5 in instance mode (``loop_curve.dice_on``)."""
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


def run(args, log) -> None:
    from napari_samsp.finetune.job import default_finetune_config, finetune_model
    from napari_samsp.finetune.loop import Callbacks
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
    num_passes = int(base.card.get("num_passes", 2))
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
                   "new": evaluate_on(ref.model, ref.model_id, int(ref.card.get("num_passes", 2)), eval_new, log),
                   "old": evaluate_on(ref.model, ref.model_id, int(ref.card.get("num_passes", 2)), eval_old, log)}
        ref_file.write_text(json.dumps(ref_res, indent=2))

    for n in args.sizes:
        res_file = out / f"n{n}" / "results.json"
        if res_file.is_file():
            r = json.loads(res_file.read_text())
            if r.get("base_model_id") == base.model_id and r.get("steps") == args.steps:
                continue
        folder = make_subset_folder(root, pool[:n], select, out / f"n{n}" / "data")
        torch.manual_seed(0)
        t0 = time.time()
        ft = finetune_model(base, [folder], default_finetune_config(args.steps),
                            Callbacks(on_val=lambda s, m, _n=n: log(f"  N={_n} step {s}: selection Dice {m['dice']:.4f}")))
        secs = time.time() - t0
        log(f"N={n}: fine-tuned in {secs:.0f}s, selection Dice {ft.before['dice']:.4f} -> {ft.after['dice']:.4f} "
            f"(best step {ft.card['metrics']['best_step']})")
        log(f"N={n} on {args.new_kind} val:")
        new = evaluate_on(ft.model, f"{base.model_id}-ft{n}", num_passes, eval_new, log)
        log(f"N={n} on {args.base_kind} val:")
        old = evaluate_on(ft.model, f"{base.model_id}-ft{n}", num_passes, eval_old, log)
        res_file.parent.mkdir(parents=True, exist_ok=True)
        res_file.write_text(json.dumps({
            "n": n, "steps": args.steps, "base_model_id": base.model_id, "finetune_seconds": secs,
            "selection_before": ft.before, "selection_after": ft.after, "best_step": ft.card["metrics"]["best_step"],
            "new": new, "old": old}, indent=2))


def report(out: Path, new_kind: str, base_kind: str) -> str:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.report:
        logf = (args.runs / "log.txt").open("a")

        def log(msg: str) -> None:
            line = f"[{time.strftime('%H:%M:%S')}] {msg}"
            print(line, flush=True)
            logf.write(line + "\n")
            logf.flush()

        run(args, log)
    print(report(args.runs, args.new_kind, args.base_kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
