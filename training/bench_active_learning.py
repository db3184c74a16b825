"""Active-learning benchmark with a simulated annotator (the ground truth plays the human).

    python training/bench_active_learning.py --dataset polypgen_polyps --seeds 2 > runs/al/bench.log 2>&1

Protocol (small on purpose: a 2-core shared CPU):

* data: a pool of ``--pool`` images from the data set's train split (the unlabeled images), ``--dev``
  other train images (validation that gates self-improvement rounds), and ``--val`` images of the
  val split on which every number is reported;
* base model: ``napari_samsp/weights/default.safetensors``, else the newest ``runs/*/model.safetensors``,
  else the newest ``runs/*/checkpoint.pt`` (a training run in progress, snapshotted), else a random ``tiny``;
* every fine-tune starts from the base, trains the prompt encoder and mask decoder only (frozen
  encoder: each image is encoded once for the whole benchmark) for ``--steps`` steps;
* strategies, starting from the same random ``--step`` labels per seed, adding ``--step`` per round
  up to ``--max-labels``: ``random``; ``uncertainty`` (lowest self-confidence first: predicted IoU,
  stability, agreement); ``reward`` (lowest calibrated expected Dice first, CSR blend lambda
  ``--lam``, with the near-duplicate guard). The calibration of ``reward`` uses, for every annotated
  image, its reward and the Dice of the automatic mask the annotator corrected, at the time of
  annotation (what the store holds in practice);
* calibration is measured on the held-out val images (Spearman, MAE, reliability) and every
  single feature's Spearman with the real Dice is reported;
* self-improvement: from the ``reward`` model at ``--improve-at`` labels, ``self_improve`` on the
  rest of the pool, with pseudo-labels + preference term and with pseudo-labels only.

Writes ``OUT/results.json`` and the figures ``docs/figures/al_*.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
from dataclasses import dataclass  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_ROOT, REPO  # noqa: E402

sys.path.insert(0, str(REPO))
from napari_samsp.finetune.checkpoint import load_checkpoint  # noqa: E402
from napari_samsp.finetune.data import Example, load_examples  # noqa: E402
from napari_samsp.io import list_pairs, read_splits, write_json_atomic, write_png_atomic  # noqa: E402
from napari_samsp.metrics import dice as dice_score  # noqa: E402
from napari_samsp.models.checkpoints import DEFAULT_WEIGHTS, LoadedModel, load_model, make_card, save_model  # noqa: E402
from napari_samsp.models.sam_sp import SamSP  # noqa: E402
from napari_samsp.predictor import EmbeddingCache, Predictor  # noqa: E402
from napari_samsp.reward.calibration import RewardCalibrator, RewardConfig, calibration_quality, prior_expected_dice  # noqa: E402
from napari_samsp.reward.evidence import EmbeddingPrototypes, pooled_embeddings  # noqa: E402
from napari_samsp.finetune.loop import train  # noqa: E402
from napari_samsp.models.sam_model import ImageFeatures  # noqa: E402
from napari_samsp.reward.improve import ImproveConfig, round_config, self_improve  # noqa: E402
from napari_samsp.reward.ranking import diversity_order, score_image  # noqa: E402

FEATURES = ("pred_iou", "stability", "agreement", "boundary", "contrast", "embedding")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- base model ------------------------------------------------------------------------------------
def pick_base(out: Path) -> LoadedModel:
    if DEFAULT_WEIGHTS.is_file():
        return load_model(None, device="cpu")
    models = sorted(REPO.glob("runs/*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if models:
        return load_model(str(models[-1]), device="cpu")
    snap = out / "base.safetensors"
    if snap.is_file():
        return load_model(str(snap), device="cpu")
    ckpts = sorted(REPO.glob("runs/*/checkpoint.pt"), key=lambda p: p.stat().st_mtime)
    for ck in reversed(ckpts):
        try:
            read = load_checkpoint(ck, "best")
            model = read.build_model()
            step = read.step
        except Exception as exc:  # a checkpoint being rewritten, another format: try the next
            log(f"cannot use {ck}: {exc}")
            continue
        card = {"mode": "semantic", "num_passes": read.num_passes,
                "steps": step, "note": f"snapshot of {ck} at step {step} (training in progress)"}
        if read.preprocessing:
            card["preprocessing"] = read.preprocessing
        save_model(model.eval(), snap, make_card(model.config, card))
        log(f"base: snapshot of {ck} at step {step} -> {snap}")
        return load_model(str(snap), device="cpu")
    log("no trained model found: a random 'tiny' (numbers will be meaningless)")
    return load_model("tiny", device="cpu")


# -- data --------------------------------------------------------------------------------------------
def load_data(dataset: str, pool: int, dev: int, val: int, max_side: int):
    root = DATA_ROOT / dataset
    pairs = {p.stem: p for p in list_pairs(root)}
    splits = read_splits(root) or {}
    rng = np.random.default_rng(1234)
    train_stems = sorted(s for s in splits.get("train", pairs) if s in pairs)
    val_stems = sorted(s for s in splits.get("val", []) if s in pairs)
    pick = rng.permutation(len(train_stems))[: pool + dev]
    pool_p = [pairs[train_stems[i]] for i in pick[:pool]]
    dev_p = [pairs[train_stems[i]] for i in pick[pool:]]
    val_p = [pairs[val_stems[i]] for i in np.sort(rng.permutation(len(val_stems))[:val])]
    return (load_examples(pool_p, dataset, max_side), load_examples(dev_p, dataset, max_side),
            load_examples(val_p, dataset, max_side))


@dataclass
class TrainItem:
    """One image of a bank: encoder features, target labels (S, S), valid (S, S) in the model frame."""

    features: ImageFeatures
    labels: torch.Tensor
    valid: torch.Tensor


class Bank:
    """Images on the scoring grid, their embeddings (frozen encoder: computed once) and training items."""

    def __init__(self, base: LoadedModel, examples: list[Example]):
        self.cache = EmbeddingCache(None, max_memory_entries=100000)
        self.cache_id = "al-bench-frozen-encoder"
        self.examples = examples
        pred = Predictor(base.model, self.cache_id, self.cache)
        self.items: list[TrainItem] = []
        self.gt: list[np.ndarray] = []
        self.pooled_gt: list[tuple[np.ndarray, np.ndarray]] = []
        for ex in examples:
            pred.set_image(ex.image)
            gt = ex.labels > 0
            t = pred.transform
            labels = t.mask_to_tensor(gt.astype(np.int64))
            valid = torch.zeros(t.img_size, t.img_size, dtype=torch.bool)
            h, w = t.resized_size
            valid[:h, :w] = True
            self.items.append(TrainItem(pred.features, labels, valid))
            self.gt.append(gt)
            fg, bg = pooled_embeddings(pred.features.embeddings, gt[None], t.resized_size, t.img_size)
            self.pooled_gt.append((fg[0], bg[0]))

    def predictor(self, model) -> Predictor:
        return Predictor(model, self.cache_id, self.cache)

    def protos(self, idx) -> EmbeddingPrototypes:
        p = EmbeddingPrototypes()
        for i in idx:
            p.add(*self.pooled_gt[i])
        return p


def finetune(base: LoadedModel, examples: list[Example], steps: int, lr: float, seed: int):
    """Corrected masks only, with the settings of a self-improvement round (through the one loop)."""
    model = copy.deepcopy(base.model).eval()
    cfg = ImproveConfig(steps=steps, batch_size=4, lr=lr, seed=seed, human_prompts=0)
    train(model, examples, config=round_config(cfg, base.model_card.num_passes, seed, cfg.batch_size),
          device=next(model.parameters()).device)
    return model.eval()


@torch.inference_mode()
def val_dice(model, items: list[TrainItem], num_passes: int) -> float:
    sp = SamSP(model, num_passes=num_passes)
    out = []
    for it in items:
        lg = sp.run_passes(it.features)[-1].logits
        pred = (model.upscale_logits(lg)[0, 0] > 0) & it.valid
        gt = it.labels > 0
        den = int(pred.sum() + gt.sum())
        out.append(1.0 if den == 0 else 2.0 * int((pred & gt).sum()) / den)
    return float(np.mean(out))


def score_all(bank: Bank, model, idx, cal: RewardCalibrator, num_passes: int, protos) -> dict[int, dict]:
    """Reward features of the automatic mask of each image, its real Dice, and the ImageScore pieces needed."""
    pred = bank.predictor(model)
    cfg = cal.config
    out = {}
    for i in idx:
        sc = score_image(pred, bank.examples[i].image, cal, num_passes, max_side=None, protos_override=protos)
        a = sc.candidates.auto_index
        sf, ef = sc.self_feats[a], sc.evidence_feats[a]
        s, e = float(cfg.self_score(sf)[0]), float(cfg.evidence_score(ef)[0])
        out[i] = {"self": s, "evidence": e, "feats": np.concatenate([sf, ef]).tolist(),
                  "expected": float(cal.expected_dice(s, e)), "prior": float(prior_expected_dice(s)),
                  "dice": float(dice_score(sc.auto_mask, bank.gt[i])), "descriptor": sc.descriptor,
                  "pool_pick": (sc.chosen, sc.rejected, sc.candidates.sources[sc.chosen], sc.candidates.sources[sc.rejected]),
                  "chosen_dice": float(dice_score(sc.candidates.masks[sc.chosen], bank.gt[i])),
                  "rejected_dice": float(dice_score(sc.candidates.masks[sc.rejected], bank.gt[i])),
                  "best_dice": float(max(dice_score(m, bank.gt[i]) for m in sc.candidates.masks))}
    return out


def make_calibrator(samples: list[dict], cfg: RewardConfig, protos) -> RewardCalibrator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = RewardCalibrator(cfg).fit([s["self"] for s in samples], [s["evidence"] for s in samples], [s["dice"] for s in samples])
    cal.protos = protos
    return cal


def feature_spearman(rows: list[dict], cfg: RewardConfig) -> dict:
    d = np.array([r["dice"] for r in rows])
    f = np.array([r["feats"] for r in rows])
    out = {}
    for j, name in enumerate(FEATURES):
        out[name] = float(spearmanr(f[:, j], d).statistic) if np.ptp(f[:, j]) > 0 else float("nan")
    s = np.array([r["self"] for r in rows])
    e = np.array([r["evidence"] for r in rows])
    out["self"] = float(spearmanr(s, d).statistic)
    out["evidence"] = float(spearmanr(e, d).statistic)
    from scipy.stats import rankdata
    rs, re_ = rankdata(s) / len(s), rankdata(e) / len(e)
    for lam in (0.0, 0.5, 0.9, 1.0):
        out[f"blend_lam{lam}"] = float(spearmanr((1 - lam) * rs + lam * re_, d).statistic)
    return out


# -- one AL run ---------------------------------------------------------------------------------------
def run_strategy(strategy: str, seed: int, base, bank: Bank, pool_idx, val_bank: Bank, args, rcfg: RewardConfig, init):
    k = base.model_card.num_passes
    labeled = list(init)
    samples: list[dict] = []
    curve, calib = [], []
    # calibration samples of the initial labels: the base model's masks, prototypes of the other initial labels
    if strategy == "reward":
        for i in labeled:
            others = [j for j in labeled if j != i]
            samples.append(score_all(bank, base.model, [i], RewardCalibrator(rcfg), k, bank.protos(others))[i])
    model = snapshot = None
    while True:
        model = finetune(base, [bank.examples[i] for i in labeled], args.steps, args.lr, seed)
        vd = val_dice(model, val_bank.items, k)
        curve.append({"labels": len(labeled), "val_dice": vd})
        log(f"seed {seed} {strategy}: {len(labeled)} labels -> val Dice {vd:.4f}")
        rest = [i for i in pool_idx if i not in labeled]
        if strategy == "reward" and (args.calib_every or len(labeled) >= args.max_labels):
            cal = make_calibrator(samples, rcfg, bank.protos(labeled))
            vrows = score_all(val_bank, model, range(len(val_bank.examples)), cal, k, bank.protos(labeled))
            rows = list(vrows.values())
            q = calibration_quality([r["expected"] for r in rows], [r["dice"] for r in rows])
            qp = calibration_quality([r["prior"] for r in rows], [r["dice"] for r in rows])
            calib.append({"labels": len(labeled), "n_calibration": len(samples), "calibrated": cal.calibrated,
                          "quality": q, "prior_quality": qp, "features": feature_spearman(rows, rcfg),
                          "rows": [{kk: v for kk, v in r.items() if kk != "descriptor"} for r in rows]})
            log(f"  calibration on {len(rows)} held-out: Spearman {q['spearman']:.3f} MAE {q['mae']:.3f} "
                f"(prior: Spearman {qp['spearman']:.3f} MAE {qp['mae']:.3f})")
        if strategy == "reward" and len(labeled) == args.improve_at:
            snapshot = {"model": copy.deepcopy(model), "labeled": list(labeled),
                        "cal": make_calibrator(list(samples), rcfg, bank.protos(labeled))}
        if len(labeled) >= args.max_labels or not rest:
            break
        rng = np.random.default_rng(seed * 100 + len(labeled))
        if strategy == "random":
            new = list(rng.permutation(rest)[: args.step])
        else:
            cal = make_calibrator(samples, rcfg, bank.protos(labeled)) if strategy == "reward" else RewardCalibrator(rcfg)
            sc = score_all(bank, model, rest, cal, k, bank.protos(labeled) if strategy == "reward" else None)
            if strategy == "uncertainty":
                order = sorted(rest, key=lambda i: (sc[i]["self"], i))
            else:
                base_order = sorted(rest, key=lambda i: (sc[i]["expected"], sc[i]["self"], i))
                desc = np.stack([sc[i]["descriptor"] for i in base_order])
                pos, _ = diversity_order(range(len(base_order)), desc, args.diversity)
                order = [base_order[j] for j in pos]
            new = order[: args.step]
            if strategy == "reward":
                samples += [sc[i] for i in new]
        labeled += [int(i) for i in new]
    return {"curve": curve, "calibration": calib, "labeled": labeled, "model": model, "snapshot": snapshot}


def write_store(root: Path, examples: list[Example], idx: list[int]) -> Path:
    """Labeled images as a data-layout folder (what an annotation store is), all in train."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    stems = []
    for i in idx:
        stem = f"img{i:04d}"
        write_png_atomic(root / "images" / f"{stem}.png", examples[i].image)
        write_png_atomic(root / "masks" / f"{stem}.png", ((examples[i].labels > 0) * 255).astype(np.uint8))
        stems.append(stem)
    write_json_atomic(root / "splits.json", {"train": stems[1:], "val": stems[:1]})
    return root


def run_improve(seed: int, model, base: LoadedModel, bank: Bank, labeled, pool_idx, dev_ex, val_bank: Bank, args, rcfg, samples_cal):
    k = base.model_card.num_passes
    store = write_store(Path(args.out) / f"store_seed{seed}", bank.examples, labeled)
    rest = [i for i in pool_idx if i not in labeled]
    loaded = LoadedModel(model, {"num_passes": k, "mode": "semantic"}, f"al-seed{seed}-{len(labeled)}", "bench", False)
    out = {"labels": len(labeled), "before": val_dice(model, val_bank.items, k)}
    for name, pw in (("pseudo+pref", args.pref_weight), ("pseudo only", 0.0)):
        t0 = time.time()
        cfg = ImproveConfig(steps=args.improve_steps, lr=args.lr, pref_weight=pw, beta=args.beta, reward=rcfg, seed=seed, max_side=args.max_side,
                            human_prompts=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = self_improve(loaded, [bank.examples[i].image for i in rest], [store], rounds=args.rounds,
                               config=cfg, val_examples=dev_ex, calibrator=samples_cal)
        vd = val_dice(rep.model, val_bank.items, k)
        out[name] = {"val_dice": vd, "dev_before": rep.base_val, "dev_after": rep.final_val, "message": rep.message,
                     "rounds": [{kk: v for kk, v in r.__dict__.items()} for r in rep.rounds], "seconds": time.time() - t0}
        log(f"seed {seed} self-improve [{name}]: val Dice {out['before']:.4f} -> {vd:.4f}; {rep.message}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="polypgen_polyps")
    ap.add_argument("--pool", type=int, default=60)
    ap.add_argument("--dev", type=int, default=10)
    ap.add_argument("--val", type=int, default=30)
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--max-labels", type=int, default=40)
    ap.add_argument("--steps", type=int, default=60, help="fine-tune steps (decoder + prompt encoder)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--lam", type=float, default=0.9)
    ap.add_argument("--diversity", type=float, default=0.9)
    ap.add_argument("--strategies", default="random,uncertainty,reward")
    ap.add_argument("--improve-at", type=int, default=20, help="labels of the reward run where self-improvement starts (0: skip)")
    ap.add_argument("--improve-steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--pref-weight", type=float, default=1.0)
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--calib-every", action="store_true", help="measure calibration after every round (else at the end)")
    ap.add_argument("--out", default=str(REPO / "runs" / "al"))
    ap.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    ap.add_argument("--seed-start", type=int, default=0, help="first seed; > 0 appends to an existing OUT/results.json")
    ap.add_argument("--analyse-only", action="store_true", help="recompute the summary, analysis and figures from OUT/results.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.analyse_only:
        results = json.loads((out / "results.json").read_text())
        results["summary"] = summarise(results)
        results["analysis"] = analyse(results)
        write_json_atomic(out / "results.json", results)
        log(json.dumps({"summary": results["summary"], "analysis": {k: v for k, v in results["analysis"].items() if k != "auto_lambda"}}, indent=1))
        make_figures(results, Path(args.figures))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    base = pick_base(out)
    k = base.model_card.num_passes
    pool_ex, dev_ex, val_ex = load_data(args.dataset, args.pool, args.dev, args.val, args.max_side)
    log(f"data: pool {len(pool_ex)}, dev {len(dev_ex)}, val {len(val_ex)} of {args.dataset}; encoding once")
    bank, val_bank = Bank(base, pool_ex), Bank(base, val_ex)
    rcfg = RewardConfig(lam=args.lam)
    pool_idx = list(range(len(pool_ex)))
    results = {"args": dict(vars(args)), "base": {"source": base.source, "card_steps": base.card.get("steps"), "note": base.card.get("note")},
               "base_val_dice": val_dice(base.model, val_bank.items, k), "runs": {}, "improve": [], "full": []}
    log(f"base model val Dice {results['base_val_dice']:.4f}")
    if args.seed_start > 0 and (out / "results.json").is_file():
        old = json.loads((out / "results.json").read_text())
        results.update({k: old[k] for k in ("runs", "improve", "full")})
        results["args"]["seeds"] = args.seed_start + args.seeds
    strategies = args.strategies.split(",")
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        init = [int(i) for i in np.random.default_rng(seed).permutation(pool_idx)[: args.step]]
        full = finetune(base, bank.examples, args.steps, args.lr, seed)
        results["full"].append(val_dice(full, val_bank.items, k))
        log(f"seed {seed}: all {len(pool_idx)} labels -> val Dice {results['full'][-1]:.4f}")
        for strat in strategies:
            res = run_strategy(strat, seed, base, bank, pool_idx, val_bank, args, rcfg, init)
            results["runs"].setdefault(strat, []).append({kk: v for kk, v in res.items() if kk not in ("model", "snapshot")})
            write_json_atomic(out / "results.json", results)
            snap = res["snapshot"]
            if snap is not None:
                results["improve"].append(run_improve(seed, snap["model"], base, bank, snap["labeled"], pool_idx, dev_ex,
                                                      val_bank, args, rcfg, snap["cal"]))
        write_json_atomic(out / "results.json", results)
    results["seconds"] = time.time() - t_start
    results["summary"] = summarise(results)
    results["analysis"] = analyse(results)
    write_json_atomic(out / "results.json", results)
    log(json.dumps(results["summary"], indent=1))
    make_figures(results, Path(args.figures))
    return 0


def summarise(results: dict) -> dict:
    full = float(np.mean(results["full"]))
    target = 0.95 * full
    summ = {"base_val_dice": results["base_val_dice"], "full_data_dice": full, "target_95pct": target, "strategies": {}}
    for strat, runs in results["runs"].items():
        labels = [p["labels"] for p in runs[0]["curve"]]
        mean = np.mean([[p["val_dice"] for p in r["curve"]] for r in runs], axis=0)
        reach = next((n for n, d in zip(labels, mean) if d >= target), None)
        entry = {"labels": labels, "mean_val_dice": mean.tolist(), "labels_to_95pct": reach}
        cal = [r["calibration"][-1] for r in runs if r["calibration"]]
        if cal:
            entry["calibration_spearman"] = float(np.mean([c["quality"]["spearman"] for c in cal]))
            entry["calibration_mae"] = float(np.mean([c["quality"]["mae"] for c in cal]))
            entry["prior_spearman"] = float(np.mean([c["prior_quality"]["spearman"] for c in cal]))
            entry["prior_mae"] = float(np.mean([c["prior_quality"]["mae"] for c in cal]))
            entry["feature_spearman"] = {f: float(np.nanmean([c["features"][f] for c in cal])) for f in cal[0]["features"]}
            rows = [row for c in cal for row in c["rows"]]
            entry["chosen_beats_rejected"] = float(np.mean([r["chosen_dice"] >= r["rejected_dice"] for r in rows]))
            entry["chosen_dice"] = float(np.mean([r["chosen_dice"] for r in rows]))
            entry["auto_dice"] = float(np.mean([r["dice"] for r in rows]))
            entry["rejected_dice"] = float(np.mean([r["rejected_dice"] for r in rows]))
            entry["oracle_best_candidate_dice"] = float(np.mean([r["best_dice"] for r in rows]))
        summ["strategies"][strat] = entry
    if results["improve"]:
        summ["improve"] = {
            name: {"before": float(np.mean([r["before"] for r in results["improve"]])),
                   "after": float(np.mean([r[name]["val_dice"] for r in results["improve"]])),
                   "rounds_kept": [sum(x["accepted"] for x in r[name]["rounds"]) for r in results["improve"]]}
            for name in ("pseudo+pref", "pseudo only")
        }
    return summ


def analyse(results: dict) -> dict:
    """Post hoc, from the held-out rows: calibration quality vs lambda, 5-fold cross-validated on the held-out
    images themselves (a representative calibration set, unlike the annotation-time one, which holds the
    images the strategy picked as hardest), and with lambda chosen per fold."""
    from napari_samsp.reward.calibration import LAMBDA_GRID, cross_validated_quality

    rows = [row for r in results["runs"].get("reward", []) for c in r["calibration"] for row in c["rows"]]
    if len(rows) < 10:
        return {}
    s = np.array([r["self"] for r in rows])
    e = np.array([r["evidence"] for r in rows])
    d = np.array([r["dice"] for r in rows])
    out = {"n": len(rows), "lambda": {}}
    for lam in LAMBDA_GRID:
        q = cross_validated_quality(s, e, d, RewardConfig(lam=lam))
        out["lambda"][str(lam)] = {"spearman": q["spearman"], "mae": q["mae"]}
    q = cross_validated_quality(s, e, d, RewardConfig(lam=0.9), lam_grid=LAMBDA_GRID)
    out["auto_lambda"] = {"spearman": q["spearman"], "mae": q["mae"], "bins": q["bins"]}
    q9 = cross_validated_quality(s, e, d, RewardConfig(lam=0.9))
    out["lambda_0.9"] = {"spearman": q9["spearman"], "mae": q9["mae"], "bins": q9["bins"]}
    qp = calibration_quality(prior_expected_dice(s), d)
    out["prior"] = {"spearman": qp["spearman"], "mae": qp["mae"], "bins": qp["bins"]}
    ann = [c["quality"] for r in results["runs"]["reward"] for c in r["calibration"]]
    out["annotation_time"] = {"spearman": float(np.nanmean([q["spearman"] for q in ann])), "mae": float(np.mean([q["mae"] for q in ann]))}
    return out


def make_figures(results: dict, figdir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    summ = results["summary"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for strat, runs in results["runs"].items():
        labels = [p["labels"] for p in runs[0]["curve"]]
        vals = np.array([[p["val_dice"] for p in r["curve"]] for r in runs])
        ax.errorbar(labels, vals.mean(0), yerr=vals.std(0) if len(vals) > 1 else None, marker="o", capsize=3, label=strat)
    ax.axhline(summ["full_data_dice"], color="k", ls="--", lw=1, label=f"all {results['args']['pool']} labels")
    ax.axhline(summ["target_95pct"], color="gray", ls=":", lw=1, label="95 % of that")
    ax.axhline(summ["base_val_dice"], color="r", ls=":", lw=1, label="base model")
    if summ.get("improve"):
        imp = summ["improve"]["pseudo+pref"]
        ax.scatter([results["args"]["improve_at"]], [imp["after"]], marker="*", s=150, color="purple", zorder=5, label="reward + self-improve")
    ax.set_xlabel("annotated images")
    ax.set_ylabel(f"val Dice ({results['args']['dataset']}, n={results['args']['val']})")
    ax.legend(fontsize=7)
    ax.set_title("Active learning: simulated annotator")
    fig.tight_layout()
    fig.savefig(figdir / "al_curves.png", dpi=120)
    plt.close(fig)
    cal = [r["calibration"][-1] for r in results["runs"].get("reward", []) if r["calibration"]]
    if cal:
        rows = [row for c in cal for row in c["rows"]]
        e = np.array([r["expected"] for r in rows])
        t = np.array([r["dice"] for r in rows])
        p = np.array([r["prior"] for r in rows])
        q, qp = calibration_quality(e, t), calibration_quality(p, t)
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        ax = axes[0]
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        curves = [(q, f"annotation-time calibration, lambda {results['args']['lam']}"), (qp, "uncalibrated prior (self-confidence)")]
        an = results.get("analysis") or {}
        if an.get("auto_lambda"):
            curves.append((an["auto_lambda"], f"held-out calibration (5-fold CV, lambda chosen), n={an['n']}"))
        for qq, name in curves:
            b = qq["bins"] if "bins" in qq else []
            ax.plot([x["expected"] for x in b], [x["real"] for x in b], marker="o", label=f"{name}: rho {qq['spearman']:.2f}, MAE {qq['mae']:.2f}")
        ax.set_xlabel("expected Dice (binned)")
        ax.set_ylabel("real Dice")
        ax.set_title("Reliability (binned), held-out images")
        ax.legend(fontsize=6)
        ax = axes[1]
        ax.scatter(e, t, s=10, alpha=0.6, label="annotation-time calibration (last round)")
        ax.scatter(p, t, s=10, alpha=0.4, marker="x", label="prior")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("expected Dice")
        ax.set_ylabel("real Dice")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figdir / "al_reliability.png", dpi=120)
        plt.close(fig)
        fs = summ["strategies"]["reward"]["feature_spearman"]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = list(fs)
        ax.bar(range(len(names)), [fs[n] for n in names], color=["C0"] * 3 + ["C1"] * 3 + ["C2"] * (len(names) - 6))
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("Spearman with real Dice")
        ax.set_title("Which reward terms predict the automatic mask's Dice (held-out)")
        fig.tight_layout()
        fig.savefig(figdir / "al_features.png", dpi=120)
        plt.close(fig)
    an = results.get("analysis") or {}
    if an.get("lambda"):
        lams = [float(x) for x in an["lambda"]]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.plot(lams, [v["spearman"] for v in an["lambda"].values()], marker="o", label="Spearman (5-fold CV)")
        ax.plot(lams, [v["mae"] for v in an["lambda"].values()], marker="s", label="MAE (5-fold CV)")
        ax.axhline(an["auto_lambda"]["spearman"], color="C0", ls=":", lw=1, label="Spearman, lambda chosen per fold")
        ax.axhline(an["prior"]["spearman"], color="gray", ls="--", lw=1, label="Spearman of the uncalibrated prior")
        ax.set_xlabel("lambda (weight of image evidence)")
        ax.set_title(f"Calibration vs lambda, n={an['n']} held-out masks")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figdir / "al_lambda.png", dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
