"""One-factor-at-a-time ablation around the default recipe, at a budget a shared 2-core CPU can afford.

    python training/ablation.py                      # run every pending variant (resumable), then report
    python training/ablation.py --only k2_ref k1     # some variants
    python training/ablation.py --report             # tables + docs/figures/ablation.png from the results

Every variant trains from scratch with the same fixed budget (``BASE``: ``samunet_micro``
at 128 px, 500 steps of batch 4, all three data sets with balanced sampling, the default
augmentation) and is evaluated with ``training/evaluate_model.py``'s pipeline on the same
fixed subset of each validation split (30 evenly spaced images per data set; NoC on 10
objects per data set). Training does not validate, so no weights are selected on the
evaluation images: each variant is its final weights.

Results: ``runs/ablation/<variant>/results.json`` (a variant whose results exist is skipped;
an interrupted one resumes from its ``checkpoint.pt``), the model as
``runs/ablation/<variant>/model.safetensors`` with its card, and the loss log ``losses.jsonl``.

``--stage decoder`` (``DECODER_BASE`` / ``DECODER_VARIANTS``, results under ``runs/ablation_decoder/``)
tests the same SAM-SP claims at the v3 scale, where a whole model cannot be trained on this CPU:
the embedded default v3 (``samunet_tiny``, 256 px) keeps its frozen image encoder and SAM-UNet
branch, and every variant re-learns a freshly initialised mask decoder + prompt encoder on the same
cached features (one ``feature_cache`` shared by all variants of the process), prompt-free
objective only. Evaluation is prompt-free (no NoC, no boxes) with per-image Dice kept, so the
report gives paired differences against ``k2_ref``; ``v3_default`` evaluates the shipped model
itself on the same images (what its longer-trained decoder reaches on the same features).

    python training/ablation.py --stage decoder --runs runs/ablation_decoder
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATASETS, FIGURES, INSTANCE_SETS, REPO, load_train_examples, log_to, set_threads, val_pairs  # noqa: E402
from evaluate_model import SamSegmenter, evaluate, noc_on  # noqa: E402

from napari_samsp.finetune.checkpoint import load_checkpoint  # noqa: E402

RUNS = REPO / "runs" / "ablation"

BASE: dict = {
    "model": "samunet_micro",
    "steps": 500,
    "batch_size": 4,
    "lr": 1e-3,
    "warmup_steps": 25,
    "max_side": 256,
    "seed": 0,
    "objective": {"num_passes": 2, "distill_weight": 1.0, "prompts_per_image": 3, "click_iterations": 1},
    "val_limit": 30,
    "noc_objects": 10,
}

# name -> (overrides of BASE, what it tests); run in this order
VARIANTS: dict[str, tuple[dict, str]] = {
    "k2_ref": ({}, "reference: SAM-UNet, K=2 self-prompting passes, self-distillation"),
    "unet_baseline": ({"kind": "unet"}, "smp U-Net (ResNet-18, random init), same data, loss and budget"),
    "k1": ({"objective.num_passes": 1}, "K=1: no self-prompting (one prompt-free pass)"),
    "no_unet": ({"model": "micro"}, "plain SAM (no SAM-UNet convolutional branch)"),
    "no_distill": ({"objective.distill_weight": 0.0}, "self-distillation off"),
    "k3": ({"objective.num_passes": 3}, "K=3 self-prompting passes"),
    "k2_ref_seed1": ({"seed": 1}, "reference, second seed (noise level)"),
    "k2_ref_seed2": ({"seed": 2}, "reference, third seed (noise level)"),
}

# The decoder stage at the v3 scale: the shipped default's frozen encoder + SAM-UNet branch,
# a re-initialised decoder + prompt encoder, the prompt-free objective alone (prompt_weight 0).
DECODER_BASE: dict = {
    "stage": "decoder",
    "model": "default",
    "data": list(DATASETS),
    "steps": 2500,
    "batch_size": 4,
    "lr": 5e-4,
    "warmup_steps": 25,
    "max_side": 512,  # as the v3 configs
    "seed": 0,  # training draws and the decoder's initialisation
    "augment": False,  # as the v3 decoder stage (and one cached embedding per image)
    "objective": {"num_passes": 2, "distill_weight": 1.0, "prompt_weight": 0.0, "prompts_per_image": 0,
                  "focal_alpha": -1},
    "train_limit": 300,  # per data set, evenly spaced over its train split
    "val_limit": 40,
    "noc_objects": 0,
    "box_images": 0,
}

DECODER_VARIANTS: dict[str, tuple[dict, str]] = {
    "k2_ref": ({}, "reference: K=2 self-prompting passes, self-distillation"),
    "k1": ({"objective.num_passes": 1}, "K=1: no self-prompting (one prompt-free pass)"),
    "no_distill": ({"objective.distill_weight": 0.0}, "K=2, self-distillation off"),
    "k2_ref_seed1": ({"seed": 1}, "reference, second seed (decoder init + draws: noise level)"),
    "v3_default": ({"kind": "reference"}, "the shipped v3 default itself (its trained decoder, no training here)"),
    "k3": ({"objective.num_passes": 3}, "K=3 self-prompting passes"),
}

STAGES: dict[str, tuple[dict, dict, Path]] = {
    "scratch": (BASE, VARIANTS, REPO / "runs" / "ablation"),
    "decoder": (DECODER_BASE, DECODER_VARIANTS, REPO / "runs" / "ablation_decoder"),
}
STAGE = "scratch"  # set by --stage


def stage_tables() -> tuple[dict, dict[str, tuple[dict, str]]]:
    """The (base config, variants) of the current stage."""
    return STAGES[STAGE][0], STAGES[STAGE][1]


OVERRIDES: dict = {}  # from the command line (smoke runs): steps, val_limit, noc_objects, train_limit


def variant_config(name: str) -> dict:
    base, variants = stage_tables()
    cfg = copy.deepcopy(base)
    cfg.update(OVERRIDES)
    for key, value in variants[name][0].items():
        target = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    cfg["variant"] = name
    cfg["description"] = variants[name][1]
    return cfg


def run_sam_variant(cfg: dict, out: Path, train_ex, log) -> dict:
    from napari_samsp.finetune.loop import Callbacks, TrainConfig, train
    from napari_samsp.finetune.objective import ObjectiveConfig
    from napari_samsp.models import build_model
    from napari_samsp.models.checkpoints import save_model

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"])
    tcfg = TrainConfig(
        steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"],
        objective=ObjectiveConfig(**cfg["objective"]), val_every=10**9, checkpoint_every=50, seed=cfg["seed"],
    )
    losses = (out / "losses.jsonl").open("a")

    def on_loss(step: int, values: dict) -> None:
        if step % 10 == 0:
            losses.write(json.dumps({"step": step, **values}) + "\n")
            losses.flush()
        if step % 50 == 0:
            log(f"{cfg['variant']} step {step}/{cfg['steps']} " + " ".join(f"{k}={v:.4f}" for k, v in values.items()))

    result = train(model, train_ex, (), tcfg, Callbacks(on_loss=on_loss), checkpoint_path=out / "checkpoint.pt")
    steps = load_checkpoint(out / "checkpoint.pt", "model").step
    seconds = result.seconds  # of this process only: a resumed run undercounts
    model = result.model.eval()
    card = {
        "mode": "instance", "num_passes": cfg["objective"]["num_passes"],
        "training_data": [{"name": n, "count": sum(1 for e in train_ex if e.domain == n)} for n in sorted({e.domain for e in train_ex})],
        "steps": steps, "recipe": {"config": cfg, "command": "training/ablation.py"},
        "version": f"ablation-{cfg['variant']}",
    }
    save_model(model, out / "model.safetensors", card)
    seg = SamSegmenter(model, f"ablation-{cfg['variant']}", cfg["objective"]["num_passes"], name=cfg["variant"])
    res = evaluate(seg, DATASETS, cfg["val_limit"], noc_objects=cfg["noc_objects"], log=log)
    res["train"] = {"seconds": seconds, "steps": steps,
                    "parameters": int(sum(p.numel() for p in model.parameters()))}
    return res


def run_unet_variant(cfg: dict, out: Path, log) -> dict:
    """The U-Net baseline is its own recipe: run ``training/baselines.py`` with this variant's budget."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve().parent / "baselines.py"), "--out", str(out),
           "--img-size", "128", "--steps", str(cfg["steps"]), "--batch-size", str(cfg["batch_size"]),
           "--lr", str(cfg["lr"]), "--warmup-steps", str(cfg["warmup_steps"]), "--max-side", str(cfg["max_side"]),
           "--seed", str(cfg["seed"]), "--val-limit", str(cfg["val_limit"]), "--data", *DATASETS,
           "--threads", str(torch.get_num_threads()), "--log", str(out / "log.txt")]
    if cfg.get("train_limit"):
        cmd += ["--train-limit", str(cfg["train_limit"])]
    log("running " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    return json.loads((out / "results.json").read_text())


def load_spread_examples(datasets, max_side: int, limit: int | None) -> list:
    """``limit`` pairs per data set, evenly spaced over its train split (not the first ones:
    polyp stems are grouped by centre), preloaded at ``max_side``."""
    from common import evenly_spaced, resolve_data

    from napari_samsp.finetune.data import load_examples
    from napari_samsp.io import list_pairs, read_splits, split_pairs

    out = []
    for entry in datasets:
        root = resolve_data(entry)
        tr, _ = split_pairs(list_pairs(root), read_splits(root))
        out += load_examples(evenly_spaced(tr, limit), root.name, max_side)
    return out


def decoder_stage_model(base, seed: int):
    """A copy of ``base`` (a SamModel) with a freshly initialised mask decoder and prompt encoder.

    The fresh modules come from ``build_model`` of the base's own config after
    ``torch.manual_seed(seed)``; the image encoder and the SAM-UNet branch are the base's weights.
    """
    from napari_samsp.models import build_model

    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    fresh = build_model(base.config)
    model.mask_decoder = fresh.mask_decoder
    model.prompt_encoder = fresh.prompt_encoder
    return model


def _default_model(cache: dict, name: str):
    if "base" not in cache:
        from napari_samsp.models.checkpoints import load_model

        cache["base"] = load_model(name, device="cpu")
    return cache["base"]


def run_decoder_variant(cfg: dict, out: Path, cache: dict, log) -> dict:
    """Decoder stage: re-learn the decoder + prompt encoder on the frozen default's cached features."""
    from napari_samsp.finetune.data import AugmentConfig
    from napari_samsp.finetune.loop import Callbacks, TrainConfig, encoder_is_frozen, train
    from napari_samsp.finetune.objective import ObjectiveConfig
    from napari_samsp.models.checkpoints import save_model

    loaded = _default_model(cache, cfg["model"])
    base = loaded.model
    data = cfg["data"]
    if cfg.get("kind") == "reference":  # the shipped model itself, evaluated on the same images
        num_passes = int(loaded.card.get("num_passes", 2))
        seg = SamSegmenter(base.eval(), loaded.model_id, num_passes, name=cfg["variant"])
        res = evaluate(seg, data, cfg["val_limit"], noc_objects=0, box_images=0, log=log)
        res["train"] = {"seconds": 0.0, "steps": 0, "parameters": int(sum(p.numel() for p in base.parameters()))}
        return res
    if "examples" not in cache:
        t = time.time()
        cache["examples"] = load_spread_examples(data, cfg["max_side"], cfg.get("train_limit"))
        log(f"loaded {len(cache['examples'])} training examples in {time.time() - t:.0f}s")
    train_ex = cache["examples"]
    features = cache.setdefault("features", {})  # one embedding per image, shared by every variant
    model = decoder_stage_model(base, cfg["seed"])
    tcfg = TrainConfig(
        steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"],
        trainable=("prompt_encoder", "mask_decoder"), objective=ObjectiveConfig(**cfg["objective"]),
        augment=AugmentConfig() if cfg["augment"] else None, val_every=10**9, checkpoint_every=50, seed=cfg["seed"],
    )
    losses = (out / "losses.jsonl").open("a")
    checked: list[bool] = []

    def on_loss(step: int, values: dict) -> None:
        if not checked:  # the loop froze the encoder, so it reuses the shared embeddings
            checked.append(encoder_is_frozen(model))
            if not checked[0]:
                raise RuntimeError("decoder stage: the encoder is not frozen, embeddings would not be cached")
        if step % 10 == 0:
            losses.write(json.dumps({"step": step, **values}) + "\n")
            losses.flush()
        if step % 50 == 0:
            log(f"{cfg['variant']} step {step}/{cfg['steps']} cached {len(features)} "
                + " ".join(f"{k}={v:.4f}" for k, v in values.items()))

    n_cached = len(features)
    result = train(model, train_ex, (), tcfg, Callbacks(on_loss=on_loss), checkpoint_path=out / "checkpoint.pt",
                   feature_cache=features)
    steps = load_checkpoint(out / "checkpoint.pt", "model").step
    log(f"{cfg['variant']}: {steps} steps, {len(features) - n_cached} images encoded in this call")
    model = result.model.eval()
    card = {
        "mode": "instance", "num_passes": cfg["objective"]["num_passes"],
        "training_data": [{"name": n, "count": sum(1 for e in train_ex if e.domain == n)} for n in sorted({e.domain for e in train_ex})],
        "steps": steps, "recipe": {"config": cfg, "command": "training/ablation.py --stage decoder"},
        "version": f"ablation-decoder-{cfg['variant']}", "parent": loaded.model_id,
    }
    save_model(model, out / "model.safetensors", card)
    seg = SamSegmenter(model, f"ablation-decoder-{cfg['variant']}", cfg["objective"]["num_passes"], name=cfg["variant"])
    res = evaluate(seg, data, cfg["val_limit"], noc_objects=0, box_images=0, log=log)
    res["train"] = {"seconds": result.seconds, "steps": steps, "images_encoded": len(features) - n_cached,
                    "trainable_parameters": int(sum(p.numel() for p in model.mask_decoder.parameters())
                                                + sum(p.numel() for p in model.prompt_encoder.parameters()))}
    return res


def run_variant(name: str, train_ex_cache: dict, force: bool = False) -> dict | None:
    out = RUNS / name
    done = out / "results.json"
    if done.exists() and not force:
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    cfg = variant_config(name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    log = log_to(out / "log.txt")
    log(f"variant {name}: {cfg['description']}")
    if cfg.get("stage") == "decoder":
        res = run_decoder_variant(cfg, out, train_ex_cache, log)
    elif cfg.get("kind") == "unet":
        res = run_unet_variant(cfg, out, log)
    else:
        if "examples" not in train_ex_cache:
            t = time.time()
            train_ex_cache["examples"] = load_train_examples(DATASETS, cfg["max_side"], cfg.get("train_limit"))
            log(f"loaded {len(train_ex_cache['examples'])} training examples in {time.time() - t:.0f}s")
        res = run_sam_variant(cfg, out, train_ex_cache["examples"], log)
    res["variant"] = name
    res["config"] = cfg
    done.write_text(json.dumps(res, indent=2))
    log(f"variant {name} done: mean Dice {res['mean_dice']:.4f}")
    return res


def extra_noc(name: str, log=print) -> None:
    """NoC again with the whole-image box on every click (how training presents "points only"
    prompts, see finetune.prompts.simulate_prompts); stored as ``noc_image_box`` per data set."""
    from napari_samsp.models.checkpoints import load_model

    p = RUNS / name / "results.json"
    model_file = RUNS / name / "model.safetensors"
    if not p.exists() or not model_file.exists():
        return
    res = json.loads(p.read_text())
    if all("noc_image_box" in d for d in res["datasets"].values()):
        return
    lm = load_model(str(model_file), device="cpu")
    seg = SamSegmenter(lm.model, lm.model_id, res["config"]["objective"]["num_passes"], name=name, click_box="image")
    for ds, d in res["datasets"].items():
        d["noc_image_box"] = noc_on(seg, val_pairs(ds, res["config"]["val_limit"]), ds in INSTANCE_SETS,
                                    res["config"]["noc_objects"])
        log(f"{name} {ds}: NoC@90 with image box {d['noc_image_box']['noc@90']:.1f} "
            f"(IoU after 1 click {d['noc_image_box']['miou_at_click'][0]:.3f})")
    p.write_text(json.dumps(res, indent=2))


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
SHORT = {"dsb2018_nuclei": "nuclei", "polypgen_polyps": "polyps", "hc18_fetal_head_us": "fetal head"}


def collect() -> dict[str, dict]:
    out = {}
    for name in stage_tables()[1]:
        p = RUNS / name / "results.json"
        if p.exists():
            out[name] = json.loads(p.read_text())
    return out


def markdown_table(results: dict[str, dict]) -> str:
    head = ("| variant | what changes | Dice nuclei | F1@0.5 nuclei | Dice polyps | Dice fetal head | mean Dice "
            "| NoC@90 nuclei / polyps / head | train min | s / image |")
    lines = [head, "|" + "---|" * 10]
    for name, r in results.items():
        d = r["datasets"]

        def noc(k):
            v = d.get(k, {}).get("noc@90")
            return "n/a" if v is None else f"{v:.1f}"

        spi = np.mean([d[k]["seconds_per_image"] for k in d])
        lines.append(
            f"| `{name}` | {r['config']['description']} | {d['dsb2018_nuclei']['dice']:.3f} | "
            f"{d['dsb2018_nuclei'].get('instance_f1@0.5', float('nan')):.3f} | {d['polypgen_polyps']['dice']:.3f} | "
            f"{d['hc18_fetal_head_us']['dice']:.3f} | **{r['mean_dice']:.3f}** | "
            f"{noc('dsb2018_nuclei')} / {noc('polypgen_polyps')} / {noc('hc18_fetal_head_us')} | "
            f"{r['train']['seconds'] / 60:.1f} | {spi:.3f} |"
        )
    return "\n".join(lines)


def paired_difference(res: dict, ref: dict, dataset: str) -> tuple[float, float, int]:
    """Mean per-image Dice difference ``res - ref`` on the images both scored, its standard error, n."""
    a = res["datasets"][dataset]["per_image_dice"]
    b = ref["datasets"][dataset]["per_image_dice"]
    diff = np.array([a[k] - b[k] for k in sorted(set(a) & set(b))])
    if len(diff) == 0:
        return float("nan"), float("nan"), 0
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return float(diff.mean()), se, len(diff)


def decoder_markdown(results: dict[str, dict], ref_name: str = "k2_ref") -> str:
    """The decoder-stage table: Dice per set, nuclei F1, and paired differences against ``ref_name``."""
    first = next(iter(results.values()))["datasets"]
    sets = [s for s in first if all(s in r["datasets"] for r in results.values())]
    ref = results.get(ref_name)
    head = ("| variant | what changes | " + " | ".join(f"Dice {SHORT.get(s, s)}" for s in sets)
            + " | F1@0.5 nuclei | mean Dice | " + " | ".join(f"Δ {SHORT.get(s, s)}" for s in sets)
            + f" | Δ mean (vs `{ref_name}`) | steps | train min |")
    lines = [head, "|" + "---|" * (7 + 2 * len(sets))]
    for name, r in results.items():
        d = r["datasets"]
        f1 = d.get("dsb2018_nuclei", {}).get("instance_f1@0.5")
        deltas, ses = [], []
        for s in sets:
            m, se, _ = paired_difference(r, ref, s) if ref is not None and name != ref_name else (float("nan"),) * 3
            deltas.append(m)
            ses.append(se)
        if ref is not None and name != ref_name:
            cells = [f"{m:+.3f} ± {se:.3f}" for m, se in zip(deltas, ses)]
            # the mean over sets of independent per-set means: s.e. = sqrt(sum se^2) / n_sets
            mean_cell = f"**{np.mean(deltas):+.3f} ± {np.sqrt(np.sum(np.square(ses))) / len(ses):.3f}**"
        else:
            cells, mean_cell = ["–"] * len(sets), "–"
        lines.append(
            f"| `{name}` | {r['config']['description']} | " + " | ".join(f"{d[s]['dice']:.3f}" for s in sets)
            + f" | {'n/a' if f1 is None else f'{f1:.3f}'} | **{r['mean_dice']:.3f}** | " + " | ".join(cells)
            + f" | {mean_cell} | {r['train']['steps']} | {r['train']['seconds'] / 60:.1f} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    sets = list(DATASETS)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 1.3]})
    ax = axes[0]
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        d = results[n]["datasets"]
        vals = [d[s]["dice"] for s in sets]
        # standard error over images, to show how much of a difference is image sampling
        errs = [d[s]["dice_std"] / np.sqrt(max(1, d[s]["n"])) for s in sets]
        ax.bar(np.arange(len(sets)) + i * width, vals, width, yerr=errs, capsize=2, label=n)
    ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2, [SHORT[s] for s in sets])
    ax.set_ylabel("mean Dice (30 val images, ± s.e.)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Ablation (samunet_micro, 128 px, 500 steps x 4)")
    ax = axes[1]
    for n in names:
        d = results[n]["datasets"].get("dsb2018_nuclei", {})
        if "instance_f1@0.5" in d:
            ax.barh(n, d["instance_f1@0.5"])
    ax.set_xlabel("instance F1@0.5, nuclei")
    ax.set_xlim(0, 1)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in stage_tables()[1]:
        p = RUNS / name / "losses.jsonl"
        if not p.exists():
            continue
        rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        by_step = {r["step"]: r["seg"] for r in rows if "seg" in r}
        if by_step:
            steps = sorted(by_step)
            k = 5  # running mean over 5 logged points (50 steps); "valid" avoids edge artefacts
            vals = np.convolve([by_step[s] for s in steps], np.ones(k) / k, mode="valid")
            ax.plot(steps[k // 2 : k // 2 + len(vals)], vals, label=name, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("seg. loss (20 focal + Dice)")
    ax.set_title("training loss, running mean of 50 steps (seed-0 variants share batches)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report() -> str:
    results = collect()
    if not results:
        return "no results yet"
    if STAGE == "decoder":  # no figures: the scratch ablation's figure names stay its own
        table = decoder_markdown(results)
        RUNS.mkdir(parents=True, exist_ok=True)
        (RUNS / "table.md").write_text(table + "\n")
        return table
    plot(results, FIGURES / "ablation.png")
    plot_losses(FIGURES / "ablation_losses.png")
    table = markdown_table(results)
    (RUNS / "table.md").write_text(table + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    global RUNS, STAGE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=list(STAGES), default="scratch",
                    help="scratch: micro models from scratch; decoder: a fresh decoder on the v3 default's frozen encoder")
    ap.add_argument("--only", nargs="+", choices=sorted(set(VARIANTS) | set(DECODER_VARIANTS)))
    ap.add_argument("--force", action="store_true", help="rerun even when results exist")
    ap.add_argument("--report", action="store_true", help="only write the table and figures")
    ap.add_argument("--extra-noc", action="store_true", help="add NoC with the whole-image box to finished SAM variants")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=Path, default=None, help=f"results folder (default {RUNS})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a budget key for every variant (smoke runs): steps, val_limit, noc_objects, train_limit, data")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    STAGE = args.stage
    RUNS = args.runs or STAGES[STAGE][2]
    variants = stage_tables()[1]
    unknown = set(args.only or ()) - set(variants)
    if unknown:
        ap.error(f"not variants of the {STAGE} stage: {', '.join(sorted(unknown))}")
    for item in args.set:
        k, _, v = item.partition("=")
        OVERRIDES[k] = json.loads(v)
    if args.extra_noc:
        for name in args.only or list(variants):
            extra_noc(name)
    elif not args.report:
        cache: dict = {}
        for name in args.only or list(variants):
            run_variant(name, cache, force=args.force)
            print(report(), flush=True)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
