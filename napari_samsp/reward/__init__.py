"""Calibrated self-reward (after CSR), active-learning ranking and the self-improvement round.

* ``candidates``: candidate masks per image / object (self-prompting passes, multimask, jittered boxes, flip TTA);
* ``evidence``: self-confidence features and image evidence (edges, contrast, embedding similarity to the store);
* ``calibration``: CSR rank blend, isotonic calibration to an expected Dice, calibration quality;
* ``ranking``: :func:`rank_images` / :func:`rank_paths` (``samsp rank``), :func:`fit_calibrator`;
* ``improve``: :func:`self_improve`, preference fine-tuning on unlabeled images mixed with corrected masks
  (score -> pseudo set -> ``finetune.loop.train`` -> gate);
* ``objective``: what that training optimises and draws (pseudo-label + preference objective, mixed sampler).
"""

from .calibration import (
    RewardCalibrator,
    RewardConfig,
    calibration_quality,
    cross_validated_quality,
    pool_reward,
    rank01,
)
from .candidates import CandidateSet, generate_candidates, object_candidates, prepare_image
from .ranking import ImageScore, fit_calibrator, rank_images, rank_paths, score_image

__all__ = [
    "CandidateSet",
    "ImageScore",
    "RewardCalibrator",
    "RewardConfig",
    "calibration_quality",
    "cross_validated_quality",
    "fit_calibrator",
    "generate_candidates",
    "object_candidates",
    "pool_reward",
    "prepare_image",
    "rank01",
    "rank_images",
    "rank_paths",
    "score_image",
]


def __getattr__(name):  # the training part imports the fine-tuning stack: only on demand
    if name in ("self_improve", "ImprovementReport", "preference_loss"):
        from . import improve

        return getattr(improve, name)
    raise AttributeError(name)
