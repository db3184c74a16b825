"""Candidate masks for one image (semantic) or one object (instance), with the decoder's own confidence.

Candidates of one image, all on the (possibly downscaled, see :func:`prepare_image`) original grid:

* ``pass<k>``: every self-prompting pass; the last one is the *automatic* mask
  (what ``autoseg.segment`` returns in semantic mode);
* ``mm<j>``: SAM's three multimask outputs, prompted by the box of the automatic mask; only where the
  model's multimask outputs are trained (:func:`multimask_trained`: official SAM architectures). Our own
  models train the single-mask output alone, and their three multimask outputs are near-empty or arbitrary
  masks that would only lower every other candidate's agreement and be picked as the rejected mask;
* ``jit<j>``: single masks prompted by jittered copies of that box (+-10 % per side);
* ``flip`` (optional test-time augmentation): the automatic mask of the horizontally
  flipped image, flipped back. It needs a second encoder run per image (the
  embedding of the flipped image), about 0.6 s for ``samunet_tiny`` on one CPU core
  versus about 0.05 s for each decoder-only candidate, so it is off by default.

Each candidate carries its predicted IoU (the decoder's IoU head) and its
stability score (upstream ``calculate_stability_score``: IoU between the masks
thresholded at logit +1 and -1).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.utils.amg import calculate_stability_score

from ..embedding import Embedding
from ..models.build import multimask_trained
from ..models.card import DEFAULT_NUM_PASSES
from ..models.sam_sp import SamSP
from ..predictor import Predictor, as_plane
from ..boxes import mask_to_box
from ..transforms import to_rgb_uint8

__all__ = ["CandidateSet", "generate_candidates", "mask_box", "multimask_trained", "object_candidates", "prepare_image"]


@dataclass
class CandidateSet:
    """N candidate masks of one image (or one object).

    Attributes:
        masks: (N, H, W) bool.
        probs: (N, H, W) float32 foreground probabilities.
        pred_iou: (N,) the decoder's predicted IoU, clipped to [0, 1].
        stability: (N,) stability score in [0, 1].
        sources: name of each candidate (``pass1``, ``mm0``, ``jit1``, ``flip`` ...).
        auto_index: index of the model's automatic mask.
        object_id: the object (instance mode), None for a semantic image.
    """

    masks: np.ndarray
    probs: np.ndarray
    pred_iou: np.ndarray
    stability: np.ndarray
    sources: list[str]
    auto_index: int = 0
    object_id: int | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def auto_mask(self) -> np.ndarray:
        return self.masks[self.auto_index]


def prepare_image(image: np.ndarray, max_side: int | None = 512) -> np.ndarray:
    """Any 2D image (gray, RGB, RGBA; any dtype) -> (H, W, 3) uint8, downscaled (area) to ``max_side``.

    Scoring works on this grid; a mask's Dice hardly changes with the downscale, and
    the cost of the image-evidence terms stays bounded for large images.
    """
    rgb = to_rgb_uint8(as_plane(np.asarray(image)))
    if max_side and max(rgb.shape[:2]) > max_side:
        scale = max_side / max(rgb.shape[:2])
        h, w = (max(1, round(s * scale)) for s in rgb.shape[:2])
        t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
        rgb = F.interpolate(t, (h, w), mode="area")[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    return np.ascontiguousarray(rgb)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) x0, y0, x1, y1 around a mask on its grid (inclusive max, :mod:`napari_samsp.boxes`);
    the whole image when empty."""
    box = mask_to_box(mask)
    if box is None:
        h, w = mask.shape
        return np.array([0, 0, w - 1, h - 1], np.float32)
    return box


def _jitter(box: np.ndarray, shape: tuple[int, int], rng: np.random.Generator, frac: float) -> np.ndarray:
    h, w = shape
    bw, bh = max(1.0, box[2] - box[0]), max(1.0, box[3] - box[1])
    d = rng.uniform(-frac, frac, 4) * np.array([bw, bh, bw, bh])
    out = box + d
    return np.array([np.clip(out[0], 0, w - 1), np.clip(out[1], 0, h - 1), np.clip(out[2], 0, w - 1), np.clip(out[3], 0, h - 1)], np.float32)


def _orig_logits(emb: Embedding, low_res: torch.Tensor) -> torch.Tensor:
    """(N, 1|M, L, L) low-res logits -> (N*M, H, W) logits on the original grid of ``emb``."""
    with torch.inference_mode():
        x = emb.transform.logits_to_original(low_res.float().cpu())
    return x.reshape(-1, *x.shape[-2:])


def _stability(logits: torch.Tensor) -> np.ndarray:
    """Stability per mask of (N, H, W) logits; an empty mask at both thresholds counts as 0."""
    with torch.inference_mode():
        s = calculate_stability_score(logits, 0.0, 1.0)
        empty = (logits > -1.0).flatten(1).sum(1) == 0
    return torch.where(empty, torch.zeros_like(s), s).clamp(0, 1).numpy().astype(np.float32)


class _Collector:
    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.iou: list[float] = []
        self.sources: list[str] = []

    def add(self, logits: torch.Tensor, iou, names: list[str]) -> None:
        self.logits.append(logits)
        self.iou += [float(v) for v in np.asarray(iou, np.float32).ravel()]
        self.sources += names

    def build(self, auto_index: int, object_id: int | None = None) -> CandidateSet:
        lg = torch.cat(self.logits)
        probs = torch.sigmoid(lg).numpy().astype(np.float32)
        return CandidateSet(
            masks=(lg > 0).numpy(),
            probs=probs,
            pred_iou=np.clip(np.asarray(self.iou, np.float32), 0, 1),
            stability=_stability(lg),
            sources=list(self.sources),
            auto_index=auto_index,
            object_id=object_id,
        )


def _seed_for(emb: Embedding) -> int:
    return zlib.crc32(emb.key.encode()) & 0xFFFFFFFF


def generate_candidates(
    predictor: Predictor,
    image: np.ndarray | Embedding | None = None,
    num_passes: int = DEFAULT_NUM_PASSES,
    multimask: bool | None = None,
    num_jitter: int = 2,
    jitter: float = 0.1,
    tta: bool = False,
) -> CandidateSet:
    """Candidate masks of one image in semantic mode (see the module docstring).

    Args:
        predictor: holds the model; it is not changed.
        image: an array (embedded first; use :func:`prepare_image` for a bounded grid), its
            :class:`~napari_samsp.embedding.Embedding`, or None for the predictor's set_image one.
        num_passes: self-prompting passes K; the last pass is the automatic mask (``auto_index``).
        multimask, num_jitter, jitter: box-prompted candidates around the automatic mask; ``multimask``
            None: SAM's three outputs only when they are trained (:func:`multimask_trained`).
        tta: add the flip test-time-augmentation candidate (one extra encoder run).
    """
    emb = predictor.embedding_of(image)
    col = _Collector()
    with torch.inference_mode():
        passes = SamSP(predictor.model, num_passes=max(1, int(num_passes))).run_passes(emb.features)
    for k, p in enumerate(passes):
        col.add(_orig_logits(emb, p.logits[:1]), p.iou[:1, :1].cpu().numpy(), [f"pass{k}"])
    auto = len(passes) - 1
    auto_mask = (col.logits[auto][0] > 0).numpy()
    box = mask_box(auto_mask)
    if multimask is None:
        multimask = multimask_trained(predictor.model)
    if multimask:
        pred = predictor.predict(box=box, multimask_output=True, embedding=emb)
        col.add(_orig_logits(emb, torch.from_numpy(pred.logits)[None]), pred.scores, [f"mm{j}" for j in range(len(pred.scores))])
    if num_jitter > 0:
        rng = np.random.default_rng(_seed_for(emb))
        boxes = np.stack([_jitter(box, auto_mask.shape, rng, jitter) for _ in range(num_jitter)])
        _, low, scores = predictor.predict_batch(boxes=boxes, embedding=emb)
        col.add(_orig_logits(emb, torch.from_numpy(low)), scores, [f"jit{j}" for j in range(num_jitter)])
    if tta:
        flipped = predictor.embed(np.ascontiguousarray(emb.rgb[:, ::-1]))
        with torch.inference_mode():
            fp = SamSP(predictor.model, num_passes=max(1, int(num_passes))).run_passes(flipped.features)[-1]
        lg = _orig_logits(flipped, fp.logits[:1]).flip(-1)
        col.add(lg, fp.iou[:1, :1].cpu().numpy(), ["flip"])
    return col.build(auto)


def object_candidates(
    predictor: Predictor,
    labels: np.ndarray,
    num_jitter: int = 2,
    jitter: float = 0.1,
    max_objects: int = 256,
    *,
    embedding: Embedding | None = None,
    multimask: bool | None = None,
) -> dict[int, CandidateSet]:
    """Candidates of every object of an instance label image on ``embedding`` (default: the
    predictor's set_image one).

    Per object: its own mask as segmented (``auto``, ``auto_index`` 0, predicted IoU from
    a re-decode of its box + centre point), SAM's three multimask outputs for that prompt
    (``multimask``; None: only when they are trained, :func:`multimask_trained`), and ``num_jitter``
    jittered-box masks.
    """
    emb = predictor.embedding_of(embedding)
    if multimask is None:
        multimask = multimask_trained(predictor.model)
    labels = np.asarray(labels)
    out: dict[int, CandidateSet] = {}
    slices = ndimage.find_objects(labels.astype(np.int64))
    ids = [i + 1 for i, sl in enumerate(slices) if sl is not None][:max_objects]
    for oid in ids:
        obj = labels == oid
        box = mask_box(obj)
        inner = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        py, px = np.unravel_index(int(np.argmax(inner)), obj.shape)
        pt = np.array([[px, py]], np.float32)
        single = predictor.predict(point_coords=pt, box=box, multimask_output=False, embedding=emb)
        col = _Collector()
        auto_logit = torch.from_numpy(np.where(obj, 4.0, -4.0).astype(np.float32))[None]
        # The object's own mask: its logit field is the single re-decode where they agree, +-4 elsewhere.
        dec = _orig_logits(emb, torch.from_numpy(single.logits)[None])
        agree = (dec > 0) == torch.from_numpy(obj)[None]
        col.add(torch.where(agree, dec, auto_logit), single.scores, ["auto"])
        if multimask:
            multi = predictor.predict(point_coords=pt, box=box, multimask_output=True, embedding=emb)
            col.add(_orig_logits(emb, torch.from_numpy(multi.logits)[None]), multi.scores, [f"mm{j}" for j in range(len(multi.scores))])
        if num_jitter > 0:
            rng = np.random.default_rng(oid * 7919 + _seed_for(emb))
            boxes = np.stack([_jitter(box, obj.shape, rng, jitter) for _ in range(num_jitter)])
            _, low, scores = predictor.predict_batch(boxes=boxes, embedding=emb)
            col.add(_orig_logits(emb, torch.from_numpy(low)), scores, [f"jit{j}" for j in range(num_jitter)])
        out[oid] = col.build(0, oid)
    return out
