"""Outputs of the public inference paths on fixed inputs, saved to an .npz, to compare two versions
of the code bit for bit (written for issue 12's Embedding change; no behaviour may change).

Covers ``Predictor.predict`` / ``predict_batch`` / ``decode_batch``, ``segment_image`` (semantic,
instance, whole and tiled), everything-mode (whole and tiled), reward candidates (flip TTA included),
object candidates, ``score_image``, ``ObjectEditor`` and ``propagate_object``, with the random
``micro`` model and the embedded default model. Usage, from a checkout of each version::

    SAMSP_CACHE=off PYTHONPATH=OLD python scripts/outputs_snapshot.py /tmp/old.npz
    SAMSP_CACHE=off PYTHONPATH=NEW python scripts/outputs_snapshot.py /tmp/new.npz
    python scripts/outputs_snapshot.py --compare /tmp/old.npz /tmp/new.npz
"""
import sys

import numpy as np
import torch

from napari_samsp.models import build_model
from napari_samsp.models.checkpoints import load_model
from napari_samsp.predictor import Predictor
from napari_samsp.autoseg import segment_image
from napari_samsp.everything import segment_everything
from napari_samsp.reward.candidates import generate_candidates, object_candidates
from napari_samsp.reward.ranking import score_image
from napari_samsp.interactive import propagate_object, ObjectEditor, PromptSet
from napari_samsp.sample_data_gen import synthetic_nuclei, synthetic_nuclei_stack


def compare(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    if sorted(a.files) != sorted(b.files):
        print("different outputs:", sorted(set(a.files) ^ set(b.files)))
        return 1
    bad = [k for k in a.files if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
    print(f"compared {len(a.files)} outputs; different: {bad or 'none'}")
    return 1 if bad else 0


def snapshot(path: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {}
    micro = build_model("micro").eval()
    default = load_model("default", device="cpu")
    for name, model, mid in (("micro", micro, "m"), ("default", default.model, default.model_id)):
        p = Predictor(model, mid)
        img, _ = synthetic_nuclei((96, 120), n=8, seed=1)
        big, _ = synthetic_nuclei((300, 420), n=20, seed=2)
        p.set_image(img)
        for k, kw in enumerate(({"point_coords": np.array([[40., 50.]]), "point_labels": np.array([1])},
                                {"box": np.array([10., 10., 60., 50.]), "multimask_output": True})):
            r = p.predict(**kw); out[f"{name}/predict{k}"] = np.concatenate([r.logits.ravel(), r.scores, r.masks.ravel()])
        bx = np.array([[0, 0, 30, 30], [20, 10, 90, 70]], np.float32)
        out[f"{name}/pb"] = np.concatenate([a.ravel().astype(np.float64) for a in p.predict_batch(boxes=bx)])
        out[f"{name}/db"] = np.concatenate([a.ravel().astype(np.float64) for a in p.decode_batch(boxes=bx)])
        for mode in ("semantic", "instance"):
            r = segment_image(p, img, mode=mode, num_passes=2); out[f"{name}/seg_{mode}"] = np.concatenate([r.labels.ravel(), r.probability.ravel()])
            out[f"{name}/seg_{mode}_scores"] = np.array(sorted(r.scores.items()), np.float64).ravel()
        modes = ("semantic", "instance") if name == "default" else ("semantic",)
        for mode in modes:
            r = segment_image(p, big, mode=mode, num_passes=2); out[f"{name}/tiled_{mode}"] = np.concatenate([r.labels.ravel(), r.probability.ravel()])
        for shp, im in (("whole", img), ("tiled", big)):
            r = segment_everything(p, im, points_per_side=6); out[f"{name}/every_{shp}"] = np.concatenate([r.labels.ravel(), r.probability.ravel()])
        c = generate_candidates(p, img, tta=True); out[f"{name}/cands"] = np.concatenate([c.probs.ravel(), c.pred_iou, c.stability])
        lab = np.zeros(img.shape, np.uint16); lab[10:30, 10:30] = 1; lab[50:80, 60:100] = 2
        p.set_image(img)
        oc = object_candidates(p, lab); out[f"{name}/objc"] = np.concatenate([oc[i].probs.ravel() for i in (1, 2)])
        for mode in ("semantic", "instance"):
            s = score_image(p, img, mode=mode); out[f"{name}/score_{mode}"] = np.array([s.expected_dice, s.reward, s.self_confidence, s.evidence])
        p.set_image(img)
        ed = ObjectEditor(p, np.zeros(img.shape, np.uint32), 1)
        ed.update(PromptSet(np.array([[40., 50.]], np.float32), np.array([1]), None))
        out[f"{name}/editor"] = ed.update(PromptSet(np.array([[40., 50.], [45., 60.]], np.float32), np.array([1, 0]), None)).astype(np.float64).ravel()
        stack, gt = synthetic_nuclei_stack((5, 64, 64), n=4, seed=0)
        from napari_samsp.interactive import StackNormaliser
        norm = StackNormaliser(stack)
        tid = int(np.bincount(gt[2].ravel())[1:].argmax() + 1)
        pr = propagate_object(p, norm.plane, 5, gt.astype(np.uint32), 2, tid)
        out[f"{name}/prop"] = np.concatenate([np.array(sorted(pr), np.float64)] + [pr[z].ravel().astype(np.float64) for z in sorted(pr)])
    np.savez(path, **out)
    print(len(out), "arrays written to", path)


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    snapshot(sys.argv[1])
