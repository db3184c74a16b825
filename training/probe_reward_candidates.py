"""Should SAM's three multimask outputs sit in the reward's candidate pools of a model that never trained them?

    OMP_NUM_THREADS=1 python training/probe_reward_candidates.py --images 20 --out /work/runs/csrmm/probe.json

Our own models (configs with ``official: False``) train only the decoder's single-mask output, so their
three multimask outputs (candidates ``mm0..mm2``) are untrained. For the embedded default model
(``load_model("default")``) on ``--images`` val images of each data set (``splits.json`` "val", evenly
spaced, downscaled to ``--max-side``), every image is scored with ``score_image`` twice: with the mm
candidates (``multimask=True``, the old default) and without (``multimask=False``, what a non-official
model now gets). Per data set and variant:

* ``features``: Spearman of each reward feature of the automatic mask (predicted IoU, stability, agreement,
  boundary, contrast, embedding similarity), of the self / evidence scores and of their rank blends with the
  automatic mask's true Dice (``bench_active_learning.feature_spearman``). Only ``agreement`` (mean IoU with
  the other candidates of the pool) and what contains it can differ between the variants;
* ``calibration``: cross-validated quality of the isotonic calibration on these images
  (``cross_validated_quality``, lambda 0.9 and lambda chosen from ``LAMBDA_GRID``);
* ``pairs``: the preference pair of self-improvement (chosen / rejected = best / worst pool reward):
  mean true Dice of the automatic, chosen, rejected and best candidate, how often chosen beats rejected,
  and which sources are chosen / rejected;
* ``objects`` (instance data sets, ``--objects``): the same question per object of the automatic instance
  segmentation (``object_candidates``): Spearman of the object's self features with its best IoU against a
  ground-truth object.

The embedding-similarity evidence uses prototypes of the other probe images' ground truth (leave-one-out),
as ``collect_store_samples`` does. Writes one JSON to ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_active_learning import feature_spearman  # noqa: E402
from common import DATASETS, INSTANCE_SETS, set_threads, val_pairs  # noqa: E402

from napari_samsp.autoseg import segment  # noqa: E402
from napari_samsp.finetune.data import load_examples  # noqa: E402
from napari_samsp.io import write_json_atomic  # noqa: E402
from napari_samsp.metrics import dice as dice_score  # noqa: E402
from napari_samsp.metrics import iou_matrix  # noqa: E402
from napari_samsp.models.checkpoints import load_model  # noqa: E402
from napari_samsp.predictor import EmbeddingCache, Predictor  # noqa: E402
from napari_samsp.reward.calibration import LAMBDA_GRID, RewardCalibrator, RewardConfig, cross_validated_quality  # noqa: E402
from napari_samsp.reward.candidates import object_candidates  # noqa: E402
from napari_samsp.reward.evidence import SELF_NAMES, EmbeddingPrototypes, pooled_embeddings, self_features  # noqa: E402
from napari_samsp.reward.ranking import score_image  # noqa: E402

VARIANTS = {"with_mm": True, "without_mm": False}


def _rho(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(spearmanr(x, y).statistic) if len(x) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")


def score_rows(pred: Predictor, examples, num_passes: int, cfg: RewardConfig, multimask: bool) -> list[dict]:
    """One row per image: the automatic mask's features, scores and Dice, and its pool's preference pair."""
    gts, pooled = [], []
    protos = EmbeddingPrototypes()
    for ex in examples:
        emb = pred.embed(ex.image)
        gt = ex.labels > 0
        fg, bg = pooled_embeddings(emb.features.embeddings, gt[None], emb.transform.resized_size, pred.model.img_size)
        protos.add(fg[0], bg[0])
        gts.append(gt)
        pooled.append((fg[0], bg[0]))
    cal = RewardCalibrator(cfg)
    rows = []
    for ex, gt, (fg, bg) in zip(examples, gts, pooled):
        sc = score_image(pred, ex.image, cal, num_passes, max_side=None, protos_override=protos.without(fg, bg),
                         multimask=multimask)
        a = sc.candidates.auto_index
        sf, ef = sc.self_feats[a], sc.evidence_feats[a]
        dices = [float(dice_score(m, gt)) for m in sc.candidates.masks]
        src = sc.candidates.sources
        rows.append({"stem": ex.stem, "dice": dices[a], "feats": np.concatenate([sf, ef]).tolist(),
                     "self": float(cfg.self_score(sf)[0]), "evidence": float(cfg.evidence_score(ef)[0]),
                     "chosen": src[sc.chosen], "rejected": src[sc.rejected], "chosen_dice": dices[sc.chosen],
                     "rejected_dice": dices[sc.rejected], "best_dice": max(dices)})
    return rows


def summarise(rows: list[dict], cfg: RewardConfig) -> dict:
    s, e, d = (np.array([r[k] for r in rows]) for k in ("self", "evidence", "dice"))
    cv9 = cross_validated_quality(s, e, d, cfg)
    cva = cross_validated_quality(s, e, d, cfg, lam_grid=LAMBDA_GRID)
    return {
        "features": feature_spearman(rows, cfg),
        "calibration": {"cv_lam0.9": {k: cv9[k] for k in ("spearman", "mae")},
                        "cv_auto_lam": {k: cva[k] for k in ("spearman", "mae")}},
        "pairs": {
            "auto_dice": float(d.mean()),
            "chosen_dice": float(np.mean([r["chosen_dice"] for r in rows])),
            "rejected_dice": float(np.mean([r["rejected_dice"] for r in rows])),
            "best_dice": float(np.mean([r["best_dice"] for r in rows])),
            "chosen_beats_rejected": float(np.mean([r["chosen_dice"] > r["rejected_dice"] for r in rows])),
            "chosen_sources": dict(Counter(r["chosen"] for r in rows)),
            "rejected_sources": dict(Counter(r["rejected"] for r in rows)),
        },
    }


def object_rows(pred: Predictor, examples, num_passes: int, cfg: RewardConfig, max_objects: int) -> dict:
    """Per object of the automatic instance segmentation: self features with and without mm, and its best IoU."""
    out = {name: {"feats": [], "self": []} for name in VARIANTS}
    target = []
    for ex in examples:
        emb = pred.embed(ex.image)
        seg = segment(pred, emb, mode="instance", num_passes=num_passes)
        if not seg.labels.any():
            continue
        iou, _, pred_ids = iou_matrix(ex.labels, seg.labels)
        best = dict(zip(pred_ids.tolist(), (iou.max(0) if iou.size else np.zeros(len(pred_ids))).tolist()))
        oids = None
        for name, mm in VARIANTS.items():
            cands = object_candidates(pred, seg.labels, max_objects=max_objects, embedding=emb, multimask=mm)
            oids = sorted(cands)
            for oid in oids:
                sf = self_features(cands[oid])[0]
                out[name]["feats"].append(sf)
                out[name]["self"].append(float(cfg.self_score(sf)[0]))
        target += [best[o] for o in oids]
    res: dict = {"n_objects": len(target), "mean_best_iou": float(np.mean(target)) if target else float("nan")}
    for name in VARIANTS:
        f = np.array(out[name]["feats"]).reshape(-1, len(SELF_NAMES))
        res[name] = {n: _rho(f[:, j], target) for j, n in enumerate(SELF_NAMES)}
        res[name]["self"] = _rho(out[name]["self"], target)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", action="append", default=None)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--objects", type=int, default=8, help="instance data sets: images for the per-object probe (0: off)")
    ap.add_argument("--max-objects", type=int, default=40)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    set_threads(1)
    loaded = load_model(args.model, device="cpu")
    num_passes = loaded.model_card.num_passes
    pred = Predictor(loaded.model.eval(), loaded.model_id, EmbeddingCache(None, max_memory_entries=256))
    cfg = RewardConfig()
    report: dict = {"model": args.model, "model_id": loaded.model_id, "config": loaded.model.config.name,
                    "official": bool(loaded.model.config.official), "num_passes": num_passes, "data": {}}
    for name in args.data or list(DATASETS):
        t0 = time.time()
        examples = load_examples(val_pairs(name, args.images), name, args.max_side)
        entry: dict = {"n": len(examples)}
        for variant, mm in VARIANTS.items():
            entry[variant] = summarise(score_rows(pred, examples, num_passes, cfg, mm), cfg)
        if name in INSTANCE_SETS and args.objects:
            entry["objects"] = object_rows(pred, examples[: args.objects], num_passes, cfg, args.max_objects)
        entry["seconds"] = round(time.time() - t0, 1)
        report["data"][name] = entry
        print(name, json.dumps({v: {"agreement": entry[v]["features"]["agreement"], "self": entry[v]["features"]["self"],
                                    "cv": entry[v]["calibration"]["cv_lam0.9"]["spearman"],
                                    "chosen": entry[v]["pairs"]["chosen_dice"], "rejected": entry[v]["pairs"]["rejected_dice"]}
                                for v in VARIANTS}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
