"""Training data: image/mask pairs in the fixed data layout, prepared like inference, augmented.

Every sample is resized and padded by the same :func:`~napari_samsp.transforms.resize_and_pad`
as inference, with the preprocessing of the model being trained (its card's
``preprocessing``: pass ``model_preprocessing(model)``), so the model learns
that padding is background exactly as it will see it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from ..errors import DataLayoutError, InputImageError
from ..transforms import LEGACY_PREPROCESSING, SAM_PREPROCESSING, check_preprocessing, resize_and_pad, to_rgb_uint8


@dataclass
class Example:
    """One preloaded training example.

    Attributes:
        image: (H, W, 3) uint8 on the original grid (downscaled when very large).
        labels: (H, W) int32 instance labels (binary masks become a single label 1).
        domain: dataset name, used to balance sampling across domains.
        stem: file stem, for reporting.
    """

    image: np.ndarray
    labels: np.ndarray
    domain: str
    stem: str


@dataclass
class Sample:
    """One augmented, model-ready sample.

    Attributes:
        image: (3, S, S) float32 in [0, 255] space, padded as the preprocessing says.
        labels: (S, S) int64 instance labels in the input frame (0 outside the image).
        valid: (S, S) bool, True inside the (unpadded) image.
    """

    image: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor


def load_examples(
    pairs: Sequence, domain: str, max_side: int = 512
) -> list[Example]:
    """Read pairs (objects with ``stem``, ``image_path``, ``mask_path``) into memory.

    Images larger than ``max_side`` are downscaled (area for images, nearest for
    labels) once here, so augmentation works on small arrays.
    """
    from ..io import read_pair

    out = []
    for pair in pairs:
        image, labels = read_pair(pair)  # store entries: read under the store's lock
        image = to_rgb_uint8(image)
        labels = labels.astype(np.int32)
        scale = max_side / max(image.shape[:2])
        if scale < 1:
            h, w = (round(s * scale) for s in image.shape[:2])
            t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            image = F.interpolate(t, (h, w), mode="area")[0].permute(1, 2, 0).round().byte().numpy()
            lt = torch.from_numpy(labels)[None, None].float()
            labels = F.interpolate(lt, (h, w), mode="nearest")[0, 0].int().numpy()
        out.append(Example(image, labels, domain, pair.stem))
    return out


@dataclass
class AugmentConfig:
    """Augmentations; each is drawn independently per sample."""

    flip: bool = True
    rot90: bool = True
    scale_crop: tuple[float, float] = (0.5, 1.0)  # crop side as a fraction of the image side
    scale_crop_prob: float = 0.5
    brightness: float = 0.15  # +- fraction of 255
    contrast: float = 0.25  # multiplicative +- fraction
    gamma: float = 0.25  # log-uniform +- range
    gray_prob: float = 0.1
    invert_prob: float = 0.0


def _dihedral(img: torch.Tensor, lab: torch.Tensor, rng: random.Random, cfg: AugmentConfig):
    if cfg.flip and rng.random() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    if cfg.flip and rng.random() < 0.5:
        img, lab = img.flip(-2), lab.flip(-2)
    if cfg.rot90:
        k = rng.randrange(4)
        if k:
            img, lab = torch.rot90(img, k, (-2, -1)), torch.rot90(lab, k, (-2, -1))
    return img, lab


def _intensity(img: torch.Tensor, rng: random.Random, cfg: AugmentConfig) -> torch.Tensor:
    x = img / 255.0
    if cfg.gray_prob and rng.random() < cfg.gray_prob:
        x = x.mean(0, keepdim=True).expand_as(x)
    if cfg.invert_prob and rng.random() < cfg.invert_prob:
        x = 1 - x
    if cfg.gamma:
        x = x.clamp(0, 1) ** math.exp(rng.uniform(-cfg.gamma, cfg.gamma))
    if cfg.contrast:
        mean = x.mean()
        x = (x - mean) * (1 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    if cfg.brightness:
        x = x + rng.uniform(-cfg.brightness, cfg.brightness)
    return (x.clamp(0, 1) * 255.0).contiguous()


def prepare_sample(
    example: Example,
    img_size: int,
    rng: random.Random | None = None,
    augment: AugmentConfig | None = None,
    preprocessing: str = LEGACY_PREPROCESSING,
) -> Sample:
    """Crop/augment one example and map it into the model's input frame.

    ``preprocessing`` must be the trained model's (``transforms.model_preprocessing(model)``).
    """
    check_preprocessing(preprocessing)
    img = torch.from_numpy(example.image).permute(2, 0, 1).float()  # (3, H, W)
    lab = torch.from_numpy(example.labels.astype(np.int64))  # (H, W)
    if augment is not None and rng is not None:
        img, lab = _dihedral(img, lab, rng, augment)
        h, w = lab.shape
        if augment.scale_crop_prob and rng.random() < augment.scale_crop_prob:
            frac = rng.uniform(*augment.scale_crop)
            ch, cw = max(8, round(h * frac)), max(8, round(w * frac))
            y0, x0 = rng.randrange(h - ch + 1), rng.randrange(w - cw + 1)
            img, lab = img[:, y0 : y0 + ch, x0 : x0 + cw], lab[y0 : y0 + ch, x0 : x0 + cw]
        img = _intensity(img, rng, augment)
    h, w = lab.shape
    if preprocessing == SAM_PREPROCESSING:
        nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    else:
        scale = img_size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = resize_and_pad(img, img_size, preprocessing, (nh, nw))
    lab = F.interpolate(lab[None, None].float(), (nh, nw), mode="nearest")[0, 0].long()
    pad = (0, img_size - nw, 0, img_size - nh)
    valid = torch.zeros(img_size, img_size, dtype=torch.bool)
    valid[:nh, :nw] = True
    return Sample(img, F.pad(lab, pad), valid)


class BalancedSampler:
    """Draws examples so every domain is equally likely, whatever its size.

    ``domain_weights`` (name -> relative weight, default 1) tilts the balance, e.g.
    towards a domain the model has not learnt yet; unknown names are an error so a
    typo in a recipe does not silently train on the default balance.
    """

    def __init__(
        self, examples: Sequence[Example], seed: int = 0, domain_weights: dict[str, float] | None = None
    ) -> None:
        if not examples:
            raise DataLayoutError("no training examples")
        self.by_domain: dict[str, list[Example]] = {}
        for ex in examples:
            self.by_domain.setdefault(ex.domain, []).append(ex)
        self.domains = sorted(self.by_domain)
        weights = dict(domain_weights or {})
        unknown = sorted(set(weights) - set(self.domains))
        if unknown:
            raise ValueError(f"domain_weights names unknown domains {unknown}; known: {self.domains}")
        self.weights = [float(weights.get(d, 1.0)) for d in self.domains]
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"domain_weights must be >= 0 and not all zero, got {weights}")
        self.rng = random.Random(seed)

    def draw(self) -> Example:
        if len(set(self.weights)) == 1:  # balanced: the same draws as before weights existed
            domain = self.rng.choice(self.domains)
        else:
            domain = self.rng.choices(self.domains, weights=self.weights)[0]
        return self.rng.choice(self.by_domain[domain])


def collate(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> images (B, 3, S, S) float in [0, 255], labels (B, S, S) int64, valid (B, S, S) bool."""
    return (
        torch.stack([s.image for s in samples]),
        torch.stack([s.labels for s in samples]),
        torch.stack([s.valid for s in samples]),
    )


def check_examples(examples: Sequence[Example]) -> None:
    """Refuse data the loop cannot learn from, with a clear reason."""
    if not examples:
        raise DataLayoutError("no training examples: the data folders or the store are empty")
    if all(int(ex.labels.max()) == 0 for ex in examples):
        raise InputImageError("every training mask is empty: nothing to learn from")
