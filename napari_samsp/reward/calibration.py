"""The CSR-style reward and its calibration to an expected Dice.

Two scores per candidate mask, each a weighted mean of its features (``evidence.py``):
``self`` (predicted IoU, stability, agreement) and ``evidence`` (boundary, contrast,
embedding similarity). Like CSR (Calibrated Self-Rewarding), they are combined on
**ranks**:

* within a candidate pool (choosing chosen/rejected masks of one image):
  ``reward = (1 - lam) * rank(self) + lam * rank(evidence)``, ranks scaled to [0, 1]
  inside the pool (:func:`pool_reward`);
* across images (calibration, ranking images): ranks against *fixed* reference
  distributions, the empirical CDFs of both scores over the calibration set's
  automatic masks: ``reward = (1 - lam) * F_self(self) + lam * F_evidence(evidence)``
  (:meth:`RewardCalibrator.absolute`), so an image's reward does not depend on which
  other images are scored with it.

:class:`RewardCalibrator` maps that absolute reward to an expected Dice with an
isotonic (monotone) regression (scikit-learn's ``IsotonicRegression``) fitted on images whose
corrected masks are known (the annotation store): for each, the Dice of the
model's automatic mask against the corrected mask. With fewer than
``min_samples`` such images it falls back to a prior, ``2 s / (1 + s)`` of the
self score ``s`` read as an IoU, and says so (``calibrated`` False).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy.stats import rankdata, spearmanr
from sklearn.isotonic import IsotonicRegression

LAMBDA_GRID = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)

__all__ = [
    "LAMBDA_GRID",
    "RewardCalibrator",
    "RewardConfig",
    "calibration_quality",
    "cross_validated_quality",
    "pool_reward",
    "rank01",
]


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward.

    Attributes:
        lam: weight of the image evidence against self-confidence (CSR's lambda); 1 ignores
            self-confidence, 0 ignores the evidence.
        self_weights: weights of (predicted IoU, stability, agreement) in the self score.
        evidence_weights: weights of (boundary, contrast, embedding similarity) in the evidence score.
        min_samples: corrected masks needed before the isotonic calibration replaces the prior.
    """

    lam: float = 0.9
    self_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    evidence_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    min_samples: int = 5

    def self_score(self, feats: np.ndarray) -> np.ndarray:
        w = np.asarray(self.self_weights, np.float64)
        return (np.atleast_2d(feats) @ w / max(w.sum(), 1e-12)).astype(np.float64)

    def evidence_score(self, feats: np.ndarray) -> np.ndarray:
        w = np.asarray(self.evidence_weights, np.float64)
        return (np.atleast_2d(feats) @ w / max(w.sum(), 1e-12)).astype(np.float64)


def rank01(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] (lowest 0, highest 1); 0.5 for a pool of one or all ties."""
    v = np.asarray(values, np.float64)
    if v.size <= 1:
        return np.full(v.shape, 0.5)
    r = rankdata(v, method="average")
    return (r - 1) / (v.size - 1)


def pool_reward(self_scores: np.ndarray, evidence_scores: np.ndarray, lam: float = 0.9) -> np.ndarray:
    """CSR's rank combination within one candidate pool: ``(1 - lam) * rank(self) + lam * rank(evidence)``."""
    return (1.0 - lam) * rank01(self_scores) + lam * rank01(evidence_scores)


def _cdf(sorted_ref: np.ndarray, values) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if sorted_ref.size == 0:
        return np.clip(v, 0, 1)
    lo = np.searchsorted(sorted_ref, v, side="left")
    hi = np.searchsorted(sorted_ref, v, side="right")
    return (lo + hi) / (2.0 * sorted_ref.size)


def prior_expected_dice(self_score) -> np.ndarray:
    """The uncalibrated guess: the self score read as an IoU, converted to Dice (monotone)."""
    s = np.clip(np.asarray(self_score, np.float64), 0, 1)
    return 2 * s / (1 + s)


@dataclass
class RewardCalibrator:
    """Absolute reward and its map to an expected Dice (see the module docstring).

    Fit with :meth:`fit` on (self score, evidence score, true Dice) of the automatic
    masks of corrected images; unfitted (or with too few samples) it uses the prior.
    """

    config: RewardConfig = field(default_factory=RewardConfig)
    ref_self: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref_evidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    knots_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    knots_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_samples: int = 0
    protos: object | None = None  # evidence.EmbeddingPrototypes of the accepted masks
    message: str = "no corrected masks: expected Dice is the uncalibrated prior"

    @property
    def calibrated(self) -> bool:
        return self.n_samples >= self.config.min_samples and self.knots_x.size > 0

    def absolute(self, self_score, evidence_score) -> np.ndarray:
        """Reward comparable across images: the rank blend against the reference distributions."""
        lam = self.config.lam
        return (1 - lam) * _cdf(self.ref_self, self_score) + lam * _cdf(self.ref_evidence, evidence_score)

    def expected_dice(self, self_score, evidence_score) -> np.ndarray:
        if not self.calibrated:
            return prior_expected_dice(self_score)
        r = self.absolute(self_score, evidence_score)
        return np.clip(np.interp(r, self.knots_x, self.knots_y), 0, 1)

    def fit(self, self_scores, evidence_scores, dice, lam_grid=None) -> "RewardCalibrator":
        """Fit the reference distributions and the isotonic map.

        ``lam_grid`` (e.g. ``LAMBDA_GRID``): choose lambda from it by the Spearman correlation of the
        absolute reward with the real Dice on these samples (ties: the one closest to ``config.lam``),
        instead of CSR's fixed lambda, once there are ``2 * min_samples`` samples. Useful where the image
        evidence does not fit the modality (on hc18 ultrasound lambda 0.9 ranks worse than 0.25).
        """
        s = np.asarray(self_scores, np.float64).ravel()
        e = np.asarray(evidence_scores, np.float64).ravel()
        d = np.asarray(dice, np.float64).ravel()
        self.n_samples = int(s.size)
        if s.size < self.config.min_samples:
            self.ref_self, self.ref_evidence = np.zeros(0), np.zeros(0)
            self.knots_x, self.knots_y = np.zeros(0), np.zeros(0)
            self.message = (
                f"only {s.size} corrected mask(s) (< {self.config.min_samples}): "
                "expected Dice is the uncalibrated prior"
            )
            warnings.warn(self.message, stacklevel=2)
            return self
        self.ref_self, self.ref_evidence = np.sort(s), np.sort(e)
        if lam_grid is not None and np.ptp(d) > 0 and s.size >= 2 * self.config.min_samples:
            best = None
            for lam in lam_grid:
                r = (1 - lam) * _cdf(self.ref_self, s) + lam * _cdf(self.ref_evidence, e)
                rho = float(spearmanr(r, d).statistic) if np.ptp(r) > 0 else -1.0
                key = (round(rho, 6), -abs(lam - self.config.lam))
                if best is None or key > best[0]:
                    best = (key, float(lam))
            self.config = replace(self.config, lam=best[1])
        # scikit-learn's pool-adjacent-violators; its thresholds are the knots we store and interpolate
        iso = IsotonicRegression(out_of_bounds="clip").fit(self.absolute(s, e), d)
        self.knots_x, self.knots_y = iso.X_thresholds_, iso.y_thresholds_
        self.message = f"calibrated on {s.size} corrected masks (lambda {self.config.lam:g})"
        return self

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "ref_self": self.ref_self.tolist(),
            "ref_evidence": self.ref_evidence.tolist(),
            "knots_x": self.knots_x.tolist(),
            "knots_y": self.knots_y.tolist(),
            "n_samples": self.n_samples,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "RewardCalibrator":
        cfg = data.get("config", {})
        cfg = RewardConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        return cls(
            cfg,
            np.asarray(data["ref_self"], np.float64),
            np.asarray(data["ref_evidence"], np.float64),
            np.asarray(data["knots_x"], np.float64),
            np.asarray(data["knots_y"], np.float64),
            int(data["n_samples"]),
            None,
            str(data.get("message", "")),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_dict())


def calibration_quality(expected, true, bins: int = 10) -> dict:
    """How well expected Dice matches real Dice: Spearman, MAE and a reliability table.

    Returns:
        {"n", "spearman", "mae", "bias" (mean expected - real), "bins": [{"lo", "hi", "count",
        "expected", "real"}]} with equal-width bins of the expected Dice (empty bins left out).
    """
    e = np.asarray(expected, np.float64).ravel()
    t = np.asarray(true, np.float64).ravel()
    out: dict = {"n": int(e.size), "spearman": float("nan"), "mae": float("nan"), "bias": float("nan"), "bins": []}
    if e.size == 0:
        return out
    out["mae"] = float(np.mean(np.abs(e - t)))
    out["bias"] = float(np.mean(e - t))
    if e.size > 2 and np.ptp(e) > 0 and np.ptp(t) > 0:
        out["spearman"] = float(spearmanr(e, t).statistic)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(e, edges[1:-1]), 0, bins - 1)
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out["bins"].append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(sel.sum()),
                                "expected": float(e[sel].mean()), "real": float(t[sel].mean())})
    return out


def cross_validated_quality(self_scores, evidence_scores, dice, config: RewardConfig | None = None, folds: int = 5,
                            seed: int = 0, lam_grid=None) -> dict:
    """:func:`calibration_quality` of calibrators fitted on the other folds (honest, unlike the training fit)."""
    s, e, d = (np.asarray(a, np.float64).ravel() for a in (self_scores, evidence_scores, dice))
    cfg = config or RewardConfig()
    n = s.size
    pred = np.zeros(n)
    order = np.random.default_rng(seed).permutation(n)
    k = max(2, min(folds, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in range(k):
            test = order[f::k]
            train = np.setdiff1d(order, test)
            cal = RewardCalibrator(cfg).fit(s[train], e[train], d[train], lam_grid)
            pred[test] = cal.expected_dice(s[test], e[test])
    return calibration_quality(pred, d)
