"""Scoring images with the calibrated self-reward, fitting the calibration from the store, active-learning order."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..embedding import Embedding
from ..errors import DataLayoutError
from ..metrics import dice as dice_score
from ..models.card import DEFAULT_NUM_PASSES
from ..predictor import Predictor
from .calibration import RewardCalibrator, RewardConfig, pool_reward
from .candidates import CandidateSet, generate_candidates, object_candidates, prepare_image
from .evidence import (
    EmbeddingPrototypes,
    ImageCues,
    boundary_score,
    contrast_score,
    embedding_score,
    global_embedding,
    pooled_embeddings,
    self_features,
)

__all__ = ["ImageScore", "StoreSamples", "fit_calibrator", "rank_images", "rank_paths", "score_image", "store_pairs"]


@dataclass
class ImageScore:
    """The reward of one image's automatic mask and of all its candidates.

    Attributes:
        expected_dice: calibrated estimate of the automatic mask's Dice (prior when not calibrated).
        reward: the absolute (cross-image) reward of the automatic mask, in [0, 1].
        self_confidence, evidence: its two scores, each in [0, 1].
        candidates: the candidate pool (masks on the scoring grid, see ``prepare_image``).
        self_feats, evidence_feats: (N, 3) features per candidate.
        pool: (N,) CSR rank reward within the pool (chosen = argmax, rejected = argmin).
        descriptor: global embedding of the image (diversity guard).
        rgb: the image on the scoring grid.
    """

    expected_dice: float
    reward: float
    self_confidence: float
    evidence: float
    calibrated: bool
    candidates: CandidateSet
    self_feats: np.ndarray
    evidence_feats: np.ndarray
    pool: np.ndarray
    descriptor: np.ndarray
    rgb: np.ndarray
    pooled: tuple[np.ndarray, np.ndarray] | None = None
    objects: dict = field(default_factory=dict)

    @property
    def auto_mask(self) -> np.ndarray:
        return self.candidates.auto_mask

    @property
    def chosen(self) -> int:
        return int(np.argmax(self.pool))

    @property
    def rejected(self) -> int:
        return int(np.argmin(self.pool))


def _load(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from ..io import read_image

        return read_image(image)
    return np.asarray(image)


def _features(predictor: Predictor, emb: Embedding, cands: CandidateSet, cues: ImageCues) -> tuple[np.ndarray, np.ndarray, tuple]:
    sf = self_features(cands)
    bc = np.array([[boundary_score(m, cues), contrast_score(m, cues)] for m in cands.masks], np.float32).reshape(-1, 2)
    pooled = pooled_embeddings(emb.features.embeddings, cands.masks, emb.transform.resized_size, predictor.model.img_size)
    return sf, bc, pooled


def score_image(
    predictor: Predictor,
    image,
    calibrator: RewardCalibrator | None = None,
    num_passes: int = DEFAULT_NUM_PASSES,
    tta: bool = False,
    max_side: int | None = 512,
    mode: str = "semantic",
    protos_override: EmbeddingPrototypes | None = None,
    multimask: bool | None = None,
) -> ImageScore:
    """Candidates, features and the calibrated reward of one image (the predictor is not changed).

    In ``instance`` mode the image's numbers are the area-weighted means over its objects,
    each object scored on its own candidate pool (``ImageScore.objects``: id -> (expected Dice, pool reward)).
    ``multimask``: put SAM's three multimask outputs into the pools; None: only where they are trained
    (``candidates.multimask_trained``: official SAM architectures).
    """
    rgb = prepare_image(_load(image), max_side)
    return _score_embedding(predictor, predictor.embed(rgb), calibrator, num_passes, tta, mode, protos_override, multimask)


def _score_embedding(
    predictor: Predictor,
    emb: Embedding,
    calibrator: RewardCalibrator | None,
    num_passes: int,
    tta: bool,
    mode: str,
    protos_override: EmbeddingPrototypes | None,
    multimask: bool | None = None,
) -> ImageScore:
    """:func:`score_image` on the embedding of an image already prepared (``emb.rgb``)."""
    cal = calibrator or RewardCalibrator()
    cfg = cal.config
    protos = protos_override if protos_override is not None else cal.protos
    rgb = emb.rgb
    cands = generate_candidates(predictor, emb, num_passes=num_passes, multimask=multimask, tta=tta)
    cues = ImageCues.from_rgb(rgb)
    sf, bc, pooled = _features(predictor, emb, cands, cues)
    similarity = embedding_score(pooled[0], pooled[1], protos)[:, None]
    ef = np.concatenate([bc, similarity], axis=1)
    s, e = cfg.self_score(sf), cfg.evidence_score(ef)
    a = cands.auto_index
    desc = global_embedding(emb.features.embeddings, emb.transform.resized_size, predictor.model.img_size)
    result = ImageScore(
        expected_dice=float(cal.expected_dice(s[a], e[a])),
        reward=float(cal.absolute(s[a], e[a])),
        self_confidence=float(s[a]),
        evidence=float(e[a]),
        calibrated=cal.calibrated,
        candidates=cands,
        self_feats=sf,
        evidence_feats=ef,
        pool=pool_reward(s, e, cfg.lam),
        descriptor=desc,
        rgb=rgb,
        pooled=pooled,
    )
    if mode == "instance":
        _score_objects(predictor, emb, result, cal, protos, num_passes, multimask)
    elif mode != "semantic":
        raise ValueError(f"mode must be 'semantic' or 'instance', got {mode!r}")
    return result


def _score_objects(predictor: Predictor, emb: Embedding, result: ImageScore, cal: RewardCalibrator, protos, num_passes: int,
                   multimask: bool | None = None) -> None:
    from ..autoseg import segment

    seg = segment(predictor, emb, mode="instance", num_passes=num_passes)
    if not seg.labels.any():
        return
    cues = ImageCues.from_rgb(result.rgb)
    cfg = cal.config
    vals, weights = [], []
    for oid, cands in object_candidates(predictor, seg.labels, embedding=emb, multimask=multimask).items():
        sf, bc, pooled = _features(predictor, emb, cands, cues)
        ef = np.concatenate([bc, embedding_score(pooled[0], pooled[1], protos)[:, None]], axis=1)
        s, e = cfg.self_score(sf), cfg.evidence_score(ef)
        ed = float(cal.expected_dice(s[0], e[0]))
        result.objects[oid] = (ed, pool_reward(s, e, cfg.lam), float(s[0]), float(e[0]), float(cal.absolute(s[0], e[0])))
        vals.append((ed, float(s[0]), float(e[0]), float(cal.absolute(s[0], e[0]))))
        weights.append(float(cands.masks[0].sum()) or 1.0)
    v = np.average(np.asarray(vals), axis=0, weights=weights)
    result.expected_dice, result.self_confidence, result.evidence, result.reward = (float(x) for x in v)


# -- calibration from corrected masks ----------------------------------------------------------


@dataclass
class StoreSamples:
    """Automatic-mask scores and true Dice of corrected images (the calibration set)."""

    stems: list[str]
    self_scores: np.ndarray
    evidence_scores: np.ndarray
    dice: np.ndarray
    protos: EmbeddingPrototypes


def store_pairs(store, split: str = "auto", min_samples: int = 5) -> list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]]:
    """(stem, loader) of the corrected images of an ``AnnotationStore``, a folder in the data layout, or a list of them.

    ``split``: "all", "val" (the validation split only: entries no fine-tune trained on, so
    their automatic masks are not optimistic), or "auto" (val when it holds ``min_samples``, else all).
    """
    from ..io import list_pairs, read_pair, read_splits
    from ..store import AnnotationStore

    if store is None:
        return []
    stores = store if isinstance(store, (list, tuple)) else [store]
    out: list = []
    vals: list = []
    for st in stores:
        if isinstance(st, AnnotationStore):
            val = set(st.splits().get("val", [])) if len(st) > 1 else set()
            for e in st.entries():
                if e.corrected:
                    item = (e.stem, (lambda s=st, stem=e.stem: s.load(stem)))
                    out.append(item)
                    if e.stem in val:
                        vals.append(item)
            continue
        root = Path(st)
        pairs = list_pairs(root)
        splits = read_splits(root) or {}
        val = set(splits.get("val", []))
        for p in pairs:
            item = (p.stem, (lambda pp=p: read_pair(pp)))
            out.append(item)
            if p.stem in val:
                vals.append(item)
    if split == "all":
        return out
    if split == "val":
        return vals
    return vals if len(vals) >= min_samples else out


def collect_store_samples(
    predictor: Predictor, store, num_passes: int, config: RewardConfig | None = None,
    max_side: int | None = 512, split: str = "auto", limit: int | None = None, multimask: bool | None = None,
) -> StoreSamples:
    """Score the automatic mask of every corrected image and its true Dice against the correction.

    The embedding-similarity evidence of each sample uses prototypes of the *other* samples
    (leave-one-out), so a sample never rates itself. ``multimask``: as for :func:`score_image` (the
    calibration must see the candidate pools that scoring uses: they change the agreement feature).
    """
    cfg = config or RewardConfig()
    pairs = store_pairs(store, split, cfg.min_samples)[: limit or None]
    rows = []
    protos = EmbeddingPrototypes()
    for stem, loader in pairs:
        image, labels = loader()
        rgb = prepare_image(image, max_side)
        gt = _resize_mask(np.asarray(labels) > 0, rgb.shape[:2])
        emb = predictor.embed(rgb)
        sc = _score_embedding(predictor, emb, RewardCalibrator(cfg), num_passes, False, "semantic", EmbeddingPrototypes(),
                              multimask)
        gfg, gbg = pooled_embeddings(emb.features.embeddings, gt[None], emb.transform.resized_size, predictor.model.img_size)
        protos.add(gfg[0], gbg[0])
        a = sc.candidates.auto_index
        rows.append((stem, sc, a, gfg[0], gbg[0], dice_score(sc.auto_mask, gt)))
    s_list, e_list, d_list = [], [], []
    for stem, sc, a, gfg, gbg, d in rows:
        loo = protos.without(gfg, gbg)
        similarity = embedding_score(sc.pooled[0][a : a + 1], sc.pooled[1][a : a + 1], loo)[0]
        ef = sc.evidence_feats[a].copy()
        ef[2] = similarity
        s_list.append(float(cfg.self_score(sc.self_feats[a])[0]))
        e_list.append(float(cfg.evidence_score(ef)[0]))
        d_list.append(float(d))
    return StoreSamples([r[0] for r in rows], np.asarray(s_list), np.asarray(e_list), np.asarray(d_list), protos)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.interpolate(t, shape, mode="area")[0, 0] >= 0.5).numpy()


def fit_calibrator(
    predictor: Predictor, store, num_passes: int = DEFAULT_NUM_PASSES, config: RewardConfig | None = None,
    max_side: int | None = 512, split: str = "auto", select_lambda: bool = False, multimask: bool | None = None,
) -> RewardCalibrator:
    """A :class:`RewardCalibrator` for the predictor's model from the corrected masks of ``store``.

    Fewer than ``config.min_samples`` corrected images: uncalibrated (prior), with a warning.
    The result's ``samples`` attribute holds the :class:`StoreSamples` used. ``select_lambda``: choose
    lambda from ``calibration.LAMBDA_GRID`` on these samples instead of using ``config.lam``.
    ``multimask``: the candidate pools' multimask outputs, as for :func:`score_image`.
    """
    from .calibration import LAMBDA_GRID

    cfg = config or RewardConfig()
    samples = collect_store_samples(predictor, store, num_passes, cfg, max_side, split, multimask=multimask)
    cal = RewardCalibrator(cfg).fit(samples.self_scores, samples.evidence_scores, samples.dice,
                                    LAMBDA_GRID if select_lambda else None)
    cal.protos = samples.protos if samples.protos.count else None
    cal.samples = samples  # type: ignore[attr-defined]
    return cal


# -- active learning ------------------------------------------------------------------------------


def diversity_order(order: Sequence[int], descriptors: np.ndarray, threshold: float | None) -> tuple[list[int], dict[int, int]]:
    """Push near-duplicates (cosine of global descriptors > ``threshold``) behind the image they duplicate.

    Descriptors are centred on their mean when there are 3 or more, so what all images share
    does not make everything look alike. Returns the new order and {duplicate: twin}.
    """
    order = list(order)
    if threshold is None or threshold >= 1 or len(order) < 2:
        return order, {}
    d = np.asarray(descriptors, np.float64)
    if len(d) >= 3:
        d = d - d.mean(0, keepdims=True)
    norm = np.linalg.norm(d, axis=1)
    unit = d / np.maximum(norm, 1e-12)[:, None]
    cos = unit @ unit.T
    same = np.all(np.isclose(d[:, None, :], d[None, :, :], atol=1e-6), axis=-1)
    cos = np.where(same, 1.0, cos)
    kept: list[int] = []
    deferred: list[int] = []
    twin: dict[int, int] = {}
    for i in order:
        match = [j for j in kept if cos[i, j] > threshold]
        if match:
            twin[i] = match[0]
            deferred.append(i)
        else:
            kept.append(i)
    return kept + deferred, twin


def rank_images(
    predictor: Predictor,
    images_or_paths: Sequence,
    store=None,
    calibrator: RewardCalibrator | None = None,
    num_passes: int = DEFAULT_NUM_PASSES,
    diversity: float | None = 0.9,
    tta: bool = False,
    config: RewardConfig | None = None,
    mode: str = "semantic",
    max_side: int | None = 512,
    progress: Callable[[int, int], None] | None = None,
    keep_scores: bool = False,
    select_lambda: bool = False,
) -> list[dict]:
    """Order unlabeled images for annotation: lowest expected Dice first, near-duplicates pushed down.

    Args:
        images_or_paths: arrays (any 2D image: gray, RGB, RGBA, any dtype) and/or image paths.
        store: corrected masks that calibrate the reward (``AnnotationStore``, data-layout folder,
            or a list); ignored when ``calibrator`` is given.
        diversity: cosine threshold of the duplicate guard; None or >= 1 disables it.
        keep_scores: put the :class:`ImageScore` under ``"score"`` in each row (not JSON-serialisable).
        select_lambda: let the store's corrected masks choose lambda (see :func:`fit_calibrator`).

    Returns:
        One dict per image, annotate-first order: image, index, expected_dice, reward,
        self_confidence, evidence, calibrated, rank (0-based), duplicate_of (index or None).

    Raises:
        DataLayoutError: nothing to rank.
    """
    items = list(images_or_paths)
    if not items:
        raise DataLayoutError("no images to rank")
    cal = calibrator
    if cal is None:
        cal = (fit_calibrator(predictor, store, num_passes, config, max_side, select_lambda=select_lambda)
               if store is not None else RewardCalibrator(config or RewardConfig()))
    scores: list[ImageScore] = []
    for i, item in enumerate(items):
        scores.append(score_image(predictor, item, cal, num_passes, tta, max_side, mode))
        if progress is not None:
            progress(i + 1, len(items))
    base = sorted(range(len(items)), key=lambda i: (scores[i].expected_dice, scores[i].reward, i))
    order, twin = diversity_order(base, np.stack([s.descriptor for s in scores]), diversity)
    rows = []
    for rank, i in enumerate(order):
        s = scores[i]
        item = items[i]
        row = {
            "image": str(item) if isinstance(item, (str, Path)) else f"#{i}",
            "index": i,
            "expected_dice": float(np.clip(s.expected_dice, 0, 1)),
            "reward": float(s.reward),
            "self_confidence": float(s.self_confidence),
            "evidence": float(s.evidence),
            "calibrated": bool(s.calibrated),
            "rank": rank,
            "duplicate_of": twin.get(i),
        }
        if keep_scores:
            row["score"] = s
        rows.append(row)
    return rows


def rank_paths(predictor: Predictor, paths: Sequence, store=None, num_passes: int = DEFAULT_NUM_PASSES, select_lambda: bool = True,
               **kwargs) -> Iterator[dict]:
    """:func:`rank_images` for the CLI: yields JSON-ready rows, lowest expected Dice first.

    ``store`` may be a path (an annotation store or a data-layout folder); a store with fewer
    than 5 corrected masks gives ``"calibrated": false`` rows (with a warning). With 10 or more
    corrected masks lambda is chosen on them (``select_lambda``), else it is ``RewardConfig.lam`` (0.9).
    """
    if store is not None and isinstance(store, (str, Path)):
        from ..store import AnnotationStore

        root = Path(store)
        if not root.is_dir():
            raise DataLayoutError(f"annotation store not found: {root}")
        store = AnnotationStore(root, create=False) if (root / "manifest.jsonl").exists() else root
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        rows = rank_images(predictor, list(paths), store=store, num_passes=num_passes, select_lambda=select_lambda, **kwargs)
    for row in rows:
        row.pop("score", None)
        yield row
