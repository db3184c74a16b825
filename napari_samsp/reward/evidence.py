"""Per-candidate scores: the model's self-confidence and image evidence that does not come from the decoder.

Self-confidence (all in [0, 1]): the decoder's predicted IoU, the stability score,
and agreement (mean IoU of a candidate with the other candidates of its pool).

Image evidence (all in [0, 1], 0.5 = no information):

* ``boundary``: how strong the image edges are along the mask boundary, as the
  mean percentile of the Sobel gradient magnitude on a 2 px boundary band within
  the image's own gradient distribution (0.5 = a boundary drawn at random);
* ``contrast``: Fisher score of the pixel intensities inside the mask against a
  ring just outside it, ``f = max_c (mu_in - mu_out)^2 / (var_in + var_out)``, mapped
  by ``f / (1 + f)``;
* ``embedding``: similarity of the mask-pooled image embedding to the masks accepted
  in the annotation store: ``0.5 + 0.25 * (cos(in, P_fg) - cos(in, P_bg) + cos(out, P_bg) - cos(out, P_fg))``
  with ``P_fg``/``P_bg`` the mean pooled embeddings inside/outside the accepted masks
  and ``in``/``out`` this candidate's; exactly 0.5 while the store is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .candidates import CandidateSet

__all__ = [
    "EmbeddingPrototypes",
    "ImageCues",
    "agreement",
    "boundary_score",
    "contrast_score",
    "embedding_score",
    "evidence_features",
    "pooled_embeddings",
    "self_features",
]

SELF_NAMES = ("pred_iou", "stability", "agreement")
EVIDENCE_NAMES = ("boundary", "contrast", "embedding")


def pairwise_iou(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, N) IoU (two empty masks: 1)."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float32)


def agreement(masks: np.ndarray) -> np.ndarray:
    """Mean IoU of each candidate with the others; 1 for a pool of one."""
    n = len(masks)
    if n < 2:
        return np.ones(n, np.float32)
    m = pairwise_iou(masks)
    return ((m.sum(1) - np.diag(m)) / (n - 1)).astype(np.float32)


def self_features(cands: CandidateSet) -> np.ndarray:
    """(N, 3) predicted IoU, stability, agreement."""
    return np.stack([cands.pred_iou, cands.stability, agreement(cands.masks)], axis=1).astype(np.float32)


@dataclass
class ImageCues:
    """What the evidence terms need from one image, computed once per image."""

    rgb: np.ndarray  # (H, W, 3) float32
    grad: np.ndarray  # (H, W) gradient magnitude
    grad_sorted: np.ndarray  # a sorted sample of it (the image's gradient distribution)

    @classmethod
    def from_rgb(cls, rgb_u8: np.ndarray, sigma: float = 1.0, sample: int = 20000) -> "ImageCues":
        rgb = np.asarray(rgb_u8, np.float32)
        gray = ndimage.gaussian_filter(rgb.mean(-1), sigma)
        grad = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1)).astype(np.float32)
        flat = grad.ravel()
        if flat.size > sample:
            flat = flat[np.linspace(0, flat.size - 1, sample).astype(np.int64)]
        return cls(rgb, grad, np.sort(flat))


def _band(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)


def boundary_score(mask: np.ndarray, cues: ImageCues) -> float:
    """Mean percentile of the gradient magnitude on the mask's boundary band; 0 for an empty or full mask."""
    if not mask.any() or mask.all():
        return 0.0
    band = _band(mask)
    vals = cues.grad[band]
    if vals.size == 0 or cues.grad_sorted[-1] <= 0:
        return 0.5
    lo = np.searchsorted(cues.grad_sorted, vals, side="left")
    hi = np.searchsorted(cues.grad_sorted, vals, side="right")
    return float(np.mean((lo + hi) / 2.0) / len(cues.grad_sorted))


def contrast_score(mask: np.ndarray, cues: ImageCues, ring_frac: float = 0.15) -> float:
    """Fisher score of intensities inside vs a ring outside, mapped to [0, 1); 0 for an empty or full mask."""
    area = int(mask.sum())
    if area == 0 or mask.all():
        return 0.0
    r = float(np.clip(ring_frac * np.sqrt(area), 3, 40))
    ys, xs = np.nonzero(mask)
    pad = int(np.ceil(r)) + 1
    sl = (slice(max(0, ys.min() - pad), ys.max() + pad + 1), slice(max(0, xs.min() - pad), xs.max() + pad + 1))
    m = mask[sl]
    dist = ndimage.distance_transform_edt(~m)
    ring = (dist > 0) & (dist <= r)
    if not ring.any():
        return 0.0
    px = cues.rgb[sl]
    a, b = px[m], px[ring]
    f = (a.mean(0) - b.mean(0)) ** 2 / (a.var(0) + b.var(0) + 1.0)
    f = float(f.max())
    return f / (1.0 + f)


def _to_embedding_grid(masks: np.ndarray, resized_hw: tuple[int, int], img_size: int, grid: int) -> torch.Tensor:
    """(N, H, W) masks -> (N, grid, grid) soft masks on the embedding grid (input frame, padding 0)."""
    m = torch.from_numpy(np.asarray(masks, np.float32))[:, None]
    h, w = resized_hw
    m = F.interpolate(m, (h, w), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, img_size - w, 0, img_size - h))
    return F.adaptive_avg_pool2d(m, grid)[:, 0]


def pooled_embeddings(embeddings: torch.Tensor, masks: np.ndarray, resized_hw: tuple[int, int], img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask-pooled embeddings inside and outside each mask (within the image): (N, C) each.

    Args:
        embeddings: (1, C, h, w) or (C, h, w) image embedding.
        masks: (N, H, W) on the original grid.
    """
    emb = embeddings.detach().float().cpu()
    if emb.ndim == 4:
        emb = emb[0]
    c, g, _ = emb.shape
    inside = _to_embedding_grid(masks, resized_hw, img_size, g)
    valid = _to_embedding_grid(np.ones((1, *masks.shape[1:]), bool), resized_hw, img_size, g)[0]
    outside = (valid - inside).clamp_min(0)
    flat = emb.reshape(c, -1)
    def pool(w: torch.Tensor) -> np.ndarray:
        w = w.reshape(len(w), -1)
        return ((w @ flat.T) / w.sum(1, keepdim=True).clamp_min(1e-6)).numpy()
    return pool(inside), pool(outside)


def global_embedding(embeddings: torch.Tensor, resized_hw: tuple[int, int], img_size: int, cells: int = 4) -> np.ndarray:
    """A global image descriptor: the embedding average-pooled on a ``cells`` x ``cells`` grid over the image area."""
    emb = embeddings.detach().float().cpu()
    if emb.ndim == 3:
        emb = emb[None]
    g = emb.shape[-1]
    h = max(1, round(resized_hw[0] * g / img_size))
    w = max(1, round(resized_hw[1] * g / img_size))
    return F.adaptive_avg_pool2d(emb[..., :h, :w], cells).flatten().numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.atleast_2d(a)
    return (a @ b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b) + 1e-8)


@dataclass
class EmbeddingPrototypes:
    """Sums of pooled embeddings inside (fg) and outside (bg) accepted masks; leave-one-out capable."""

    fg_sum: np.ndarray | None = None
    bg_sum: np.ndarray | None = None
    count: int = 0

    def add(self, fg: np.ndarray, bg: np.ndarray) -> None:
        fg, bg = np.asarray(fg, np.float64).ravel(), np.asarray(bg, np.float64).ravel()
        self.fg_sum = fg.copy() if self.fg_sum is None else self.fg_sum + fg
        self.bg_sum = bg.copy() if self.bg_sum is None else self.bg_sum + bg
        self.count += 1

    def without(self, fg: np.ndarray, bg: np.ndarray) -> "EmbeddingPrototypes":
        """The prototypes with one member taken out (calibrating on a member must not see itself)."""
        if self.count <= 1 or self.fg_sum is None:
            return EmbeddingPrototypes()
        return EmbeddingPrototypes(self.fg_sum - np.ravel(fg), self.bg_sum - np.ravel(bg), self.count - 1)

    @property
    def empty(self) -> bool:
        return self.count == 0


def embedding_score(inside: np.ndarray, outside: np.ndarray, protos: EmbeddingPrototypes | None) -> np.ndarray:
    """(N,) similarity in [0, 1] of candidates' pooled embeddings to the accepted masks; 0.5 without prototypes."""
    n = len(np.atleast_2d(inside))
    if protos is None or protos.empty:
        return np.full(n, 0.5, np.float32)
    pf, pb = protos.fg_sum / protos.count, protos.bg_sum / protos.count
    s = _cos(inside, pf) - _cos(inside, pb) + _cos(outside, pb) - _cos(outside, pf)
    return np.clip(0.5 + 0.25 * s, 0, 1).astype(np.float32)


def evidence_features(
    cands: CandidateSet,
    cues: ImageCues,
    embeddings: torch.Tensor | None = None,
    resized_hw: tuple[int, int] | None = None,
    img_size: int | None = None,
    protos: EmbeddingPrototypes | None = None,
) -> np.ndarray:
    """(N, 3) boundary, contrast, embedding similarity of every candidate."""
    b = np.array([boundary_score(m, cues) for m in cands.masks], np.float32)
    c = np.array([contrast_score(m, cues) for m in cands.masks], np.float32)
    if embeddings is not None and protos is not None and not protos.empty:
        inside, outside = pooled_embeddings(embeddings, cands.masks, resized_hw, img_size)
        e = embedding_score(inside, outside, protos)
    else:
        e = np.full(len(cands), 0.5, np.float32)
    return np.stack([b, c, e], axis=1).astype(np.float32)
