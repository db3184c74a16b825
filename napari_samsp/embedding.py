"""The image encoder's output for one 2D plane as a plain, frozen value.

:meth:`napari_samsp.predictor.Predictor.embed` makes one (from the embedding cache or the
encoder); decoding (``Predictor.predict(..., embedding=...)``, ``autoseg.segment``,
``everything.everything_masks``, the reward's candidates) takes it explicitly, so no caller
depends on which image a shared predictor happens to hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .models.sam_model import ImageFeatures
from .transforms import InputTransform

__all__ = ["Embedding", "MIRROR_VIEWS"]

# (mirror rows, mirror columns) of each test-time view: the plane itself first, then its mirror
# images; flip_views = 1, 2 or 4 takes the first 1, 2 or 4.
MIRROR_VIEWS = ((False, False), (False, True), (True, False), (True, True))


@dataclass(frozen=True, eq=False)
class Embedding:
    """Features of one normalised 2D plane, with the mapping between its pixel grid and the model input.

    Attributes:
        features: the encoder's output, batch 1, on the predictor's device: ``embeddings``
            (1, C, g, g) with g = S / patch, and for SAM-UNet ``hires`` (1, C', 4g, 4g).
        transform: maps the original (H, W) grid to the model's (S, S) input and back
            (resize the longest side, pad; the model's preprocessing).
        rgb: (H, W, 3) uint8, read-only: the normalised plane the encoder saw (before resizing).
        key: :func:`~napari_samsp.predictor.image_key` of ``rgb`` (content hash, shape included).
        cache_id: the embedding cache's model key: model id, weights digest and preprocessing.
        from_cache: the features came from the cache (no encoder run). Provenance, not content.
        mirrors: features of the plane mirrored left-right, top-bottom and both, in
            :data:`MIRROR_VIEWS` order after the plane itself, as many as the predictor's
            ``flip_views`` asks for (prompted decodes average them); empty for one view.

    Two embeddings with the same :attr:`id` hold the same features. Equality is identity
    (the value holds tensors and arrays).
    """

    features: ImageFeatures
    transform: InputTransform
    rgb: np.ndarray
    key: str
    cache_id: str
    from_cache: bool = False
    mirrors: tuple[ImageFeatures, ...] = ()

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the plane."""
        return tuple(self.transform.original_size)  # type: ignore[return-value]

    @property
    def id(self) -> tuple[str, str]:
        """(cache id, pixel key): what identifies the features."""
        return self.cache_id, self.key
