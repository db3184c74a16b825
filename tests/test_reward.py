"""Calibrated self-reward, active-learning ranking and self-improvement (micro models, synthetic images)."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_samsp.errors import DataLayoutError
from napari_samsp.models.checkpoints import LoadedModel
from napari_samsp.models.sam_sp import PassOutput, SamSP
from napari_samsp.predictor import Prediction, Predictor
from napari_samsp.reward import (
    RewardCalibrator,
    RewardConfig,
    calibration_quality,
    generate_candidates,
    object_candidates,
    pool_reward,
    rank01,
    rank_images,
    rank_paths,
)
from napari_samsp.reward import improve as improve_mod
from napari_samsp.reward.calibration import cross_validated_quality, prior_expected_dice
from napari_samsp.reward.candidates import multimask_trained
from napari_samsp.reward.evidence import EmbeddingPrototypes, ImageCues, boundary_score, contrast_score, embedding_score
from napari_samsp.reward.improve import ImproveConfig, preference_loss, self_improve
from napari_samsp.reward.ranking import fit_calibrator


def _disc(h=64, w=64, cy=32, cx=32, r=12, noise=8.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img = np.where(mask, 200.0, 50.0) + rng.normal(0, noise, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _write_pairs(root: Path, n: int, val: int = 1, seed: int = 0) -> Path:
    from napari_samsp.io import write_json_atomic, write_png_atomic

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stems = []
    for i in range(n):
        img, mask = _disc(48, 56, 20 + i % 7, 24 + i % 5, 8 + i % 4, seed=seed + i)
        stem = f"s{i:02d}"
        write_png_atomic(root / "images" / f"{stem}.png", img)
        write_png_atomic(root / "masks" / f"{stem}.png", (mask * 255).astype(np.uint8))
        stems.append(stem)
    write_json_atomic(root / "splits.json", {"train": stems[val:], "val": stems[:val]})
    return root


# -- candidates --------------------------------------------------------------------------


def test_candidates_shapes(micro_model):
    p = Predictor(micro_model, "micro")
    img, _ = _disc(40, 56)
    c = generate_candidates(p, img, num_passes=2, multimask=True, num_jitter=2, tta=True)
    assert c.masks.shape == (8, 40, 56) and c.masks.dtype == bool
    assert c.probs.shape == (8, 40, 56)
    assert c.pred_iou.shape == c.stability.shape == (8,)
    assert c.sources == ["pass0", "pass1", "mm0", "mm1", "mm2", "jit0", "jit1", "flip"]
    assert c.auto_index == 1
    assert ((c.stability >= 0) & (c.stability <= 1)).all()
    # candidates (the flip's second embedding included) leave the predictor as it was: holding nothing
    assert not p.is_image_set
    labels = np.zeros((40, 56), np.uint16)
    labels[5:15, 5:15] = 1
    labels[20:35, 30:50] = 2
    objs = object_candidates(p, labels, embedding=p.embed(img), multimask=True)
    assert sorted(objs) == [1, 2]
    assert objs[2].masks.shape == (6, 40, 56) and objs[2].sources[0] == "auto"
    assert np.array_equal(objs[2].masks[0], labels == 2)


# -- reward combination, evidence, calibration -------------------------------------------------


def _official_micro():
    """The micro model with an official-architecture config (as official SAM / MedSAM / micro-sam weights are)."""
    from napari_samsp.models import build_model
    from napari_samsp.models.build import get_config

    torch.manual_seed(0)
    return build_model(dataclasses.replace(get_config("micro"), official=True)).eval()


def _has_mm(sources) -> bool:
    return any(s.startswith("mm") for s in sources)


def test_multimask_candidates_only_where_they_are_trained(micro_model):
    """Our own models train only the single-mask output: their three multimask outputs are no candidates."""
    img, _ = _disc(40, 56)
    labels = np.zeros((40, 56), np.uint16)
    labels[5:15, 5:15] = 1
    labels[20:35, 30:50] = 2
    ours = Predictor(micro_model, "micro")
    assert not multimask_trained(micro_model) and not micro_model.config.multimask_trained
    assert generate_candidates(ours, img, num_passes=2).sources == ["pass0", "pass1", "jit0", "jit1"]
    objs = object_candidates(ours, labels, embedding=ours.embed(img))
    assert [o.sources for o in objs.values()] == [["auto", "jit0", "jit1"]] * 2
    # asked for explicitly, they are still there
    assert generate_candidates(ours, img, num_passes=2, multimask=True).sources[2:5] == ["mm0", "mm1", "mm2"]
    assert all(o.sources[1:4] == ["mm0", "mm1", "mm2"] for o in object_candidates(ours, labels, multimask=True, embedding=ours.embed(img)).values())
    # official architectures (official SAM, MedSAM, micro-sam, their fine-tunes) trained them
    official = _official_micro()
    theirs = Predictor(official, "micro-official")
    assert multimask_trained(official)
    assert generate_candidates(theirs, img, num_passes=2).sources == ["pass0", "pass1", "mm0", "mm1", "mm2", "jit0", "jit1"]
    assert all(o.sources == ["auto", "mm0", "mm1", "mm2", "jit0", "jit1"] for o in object_candidates(theirs, labels, embedding=theirs.embed(img)).values())
    assert not _has_mm(generate_candidates(theirs, img, num_passes=2, multimask=False).sources)
    assert not multimask_trained(torch.nn.Linear(2, 2))  # no config: nothing is assumed trained


def test_scoring_pools_follow_the_model(monkeypatch, micro_model):
    """score_image (semantic and per object) and its calibration use the same pools: no mm for our models."""
    from napari_samsp.reward import ranking

    seen = []
    real = ranking.object_candidates

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.extend(c.sources for c in out.values())
        return out

    monkeypatch.setattr(ranking, "object_candidates", recording)
    for model, expect in ((micro_model, False), (_official_micro(), True)):
        p, good_img, _ = _good_and_bad(monkeypatch, model)
        seen.clear()
        sc = ranking.score_image(p, good_img, mode="instance")
        assert _has_mm(sc.candidates.sources) is expect and len(sc.pool) == len(sc.candidates)
        assert sc.objects and seen and all(_has_mm(s) is expect for s in seen)
        assert all(len(v[1]) == len(s) for v, s in zip(sc.objects.values(), seen))
        assert _has_mm(ranking.score_image(p, good_img, multimask=not expect).candidates.sources) is not expect


def test_self_improvement_pairs_follow_the_model(tmp_path, micro_model, monkeypatch):
    """The calibration and the chosen / rejected pools of self-improvement hold no untrained mm candidate."""
    from napari_samsp.reward import ranking

    store = _write_pairs(tmp_path / "store", 6)
    pools = []
    real = ranking.generate_candidates

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        pools.append(out.sources)
        return out

    monkeypatch.setattr(ranking, "generate_candidates", recording)
    monkeypatch.setattr(improve_mod, "_train_round", lambda model, pseudo, run, r: ({}, None))
    monkeypatch.setattr(improve_mod, "_validate", lambda m, v, k: 0.5)
    unlabeled = [_disc(48, 48, 20, 24, 9, seed=s)[0] for s in (10, 11)]
    for multimask, expect in ((None, False), (True, True)):
        pools.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self_improve(_micro_loaded(micro_model), unlabeled, [store], rounds=1,
                         config=ImproveConfig(steps=1, batch_size=2, multimask=multimask))
        assert len(pools) == 6 + 2  # the store's corrected images (calibration), then the unlabeled ones
        assert all(_has_mm(s) is expect for s in pools)


def test_rank_combination_lambda():
    self_s = np.array([0.1, 0.9, 0.5, 0.3])
    ev = np.array([0.8, 0.2, 0.5, 0.6])
    r1 = pool_reward(self_s, ev, lam=1.0)
    assert np.allclose(r1, rank01(ev))
    assert np.allclose(pool_reward(self_s[::-1].copy(), ev, lam=1.0), r1)  # self-confidence ignored
    r0 = pool_reward(self_s, ev, lam=0.0)
    assert np.allclose(r0, rank01(self_s))
    assert np.allclose(pool_reward(self_s, ev[::-1].copy(), lam=0.0), r0)  # evidence ignored
    assert np.argmax(pool_reward(self_s, ev, 0.9)) == 0 and np.argmax(r0) == 1
    assert rank01(np.array([3.0])).tolist() == [0.5]


def test_evidence_prefers_aligned_mask():
    img, mask = _disc(64, 64, 32, 32, 12)
    shifted = np.roll(mask, (7, 9), axis=(0, 1))
    cues = ImageCues.from_rgb(np.repeat(img[..., None], 3, -1))
    assert boundary_score(mask, cues) > boundary_score(shifted, cues) + 0.1
    assert boundary_score(mask, cues) > 0.8
    assert contrast_score(mask, cues) > contrast_score(shifted, cues) + 0.1
    assert boundary_score(np.zeros_like(mask), cues) == 0.0
    # no accepted masks: the embedding term is neutral
    assert np.allclose(embedding_score(np.ones((2, 4)), np.ones((2, 4)), EmbeddingPrototypes()), 0.5)
    protos = EmbeddingPrototypes()
    protos.add(np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0]))
    s = embedding_score(np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), np.array([[0, 1.0, 0, 0], [1.0, 0, 0, 0]]), protos)
    assert s[0] > 0.9 and s[1] < 0.1


def test_calibrator_fits_and_reports():
    rng = np.random.default_rng(1)
    ev = rng.uniform(0, 1, 60)
    se = rng.uniform(0, 1, 60)
    dice = np.clip(ev * 0.9 + 0.1 * se, 0, 1)
    cal = RewardCalibrator(RewardConfig(lam=0.9)).fit(se, ev, dice)
    assert cal.calibrated
    q = calibration_quality(cal.expected_dice(se, ev), dice)
    assert q["spearman"] > 0.9 and q["mae"] < 0.1 and q["bins"]
    cv = cross_validated_quality(se, ev, dice, RewardConfig(lam=0.9))
    assert cv["spearman"] > 0.8
    perfect = calibration_quality(dice, dice)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["mae"] == 0.0
    assert (np.diff(cal.knots_x) >= 0).all() and (np.diff(cal.knots_y) >= 0).all()  # monotone map
    back = RewardCalibrator.from_dict(cal.to_dict())
    assert np.allclose(back.expected_dice(se, ev), cal.expected_dice(se, ev))


def test_too_few_corrections_uses_prior(tmp_path, micro_model):
    with pytest.warns(UserWarning, match="uncalibrated prior"):
        cal = RewardCalibrator().fit([0.5, 0.6, 0.7], [0.2, 0.3, 0.4], [0.9, 0.1, 0.5])
    assert not cal.calibrated
    assert np.allclose(cal.expected_dice(0.6, 0.1), prior_expected_dice(0.6))
    store = _write_pairs(tmp_path / "store", 3)
    p = Predictor(micro_model, "micro")
    with pytest.warns(UserWarning):
        rows = rank_images(p, [_disc(seed=5)[0]], store=store)
    assert rows[0]["calibrated"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = fit_calibrator(p, store)
    assert cal.samples.dice.shape == (3,) and not cal.calibrated


# -- ranking ---------------------------------------------------------------------------------------


def _install_field_oracle(monkeypatch, predictor: Predictor, fields: dict, iou: float = 0.5) -> None:
    """SamSP.run_passes / Predictor.predict / predict_batch answer with a logit field chosen by image shape."""
    import torch.nn.functional as F

    from test_autoseg import track_embeddings

    embedding_of = track_embeddings(monkeypatch, predictor)

    def low_res(emb) -> torch.Tensor:
        field = fields[emb.rgb.shape[:2]]
        t = emb.transform
        s, side = t.img_size, predictor.low_res_size
        h, w = t.resized_size
        x = torch.from_numpy(np.asarray(field, np.float32))[None, None]
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
        x = F.pad(x, (0, s - w, 0, s - h), value=-20.0)
        return F.interpolate(x, (side, side), mode="bilinear", align_corners=False)

    def run_passes(self, features, num_passes=None):
        k = num_passes or self.num_passes
        return [PassOutput(low_res(embedding_of(features)), torch.full((1, 1), iou)) for _ in range(k)]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=False, *, embedding=None):
        m = 3 if multimask_output else 1
        emb = self.embedding_of(embedding)
        lr = low_res(emb).repeat(1, m, 1, 1)
        masks = self._to_masks(lr, embedding=emb)[0]
        return Prediction(masks, lr[0].numpy(), np.full(m, iou, np.float32))

    def predict_batch(self, boxes=None, point_coords=None, point_labels=None, mask_input=None, chunk=64, *, embedding=None):
        n = len(boxes)
        emb = self.embedding_of(embedding)
        lr = low_res(emb).repeat(n, 1, 1, 1)
        return self._to_masks(lr, embedding=emb)[:, 0], lr.numpy(), np.full(n, iou, np.float32)

    monkeypatch.setattr(SamSP, "run_passes", run_passes)
    monkeypatch.setattr(Predictor, "predict", predict)
    monkeypatch.setattr(Predictor, "predict_batch", predict_batch)


def _good_and_bad(monkeypatch, micro_model) -> tuple[Predictor, np.ndarray, np.ndarray]:
    """A predictor whose oracle is confident and right on the good image, hesitant and misplaced on the bad one."""
    good_img, good_mask = _disc(64, 64, 32, 32, 12, seed=1)
    bad_img, bad_mask = _disc(64, 72, 32, 36, 12, seed=2)
    rng = np.random.default_rng(3)
    wrong = np.roll(bad_mask, (14, 16), axis=(0, 1))
    fields = {
        (64, 64): np.where(good_mask, 8.0, -8.0),  # confident and right
        (64, 72): np.where(wrong, 0.6, -0.6) + rng.normal(0, 0.3, bad_mask.shape),  # hesitant and misplaced
    }
    p = Predictor(micro_model, "micro")
    _install_field_oracle(monkeypatch, p, fields)
    return p, good_img, bad_img


def test_rank_puts_bad_automatic_mask_first(monkeypatch, micro_model):
    p, good_img, bad_img = _good_and_bad(monkeypatch, micro_model)
    rows = rank_images(p, [good_img, bad_img], diversity=None)
    assert [r["index"] for r in rows] == [1, 0]
    assert rows[0]["expected_dice"] < rows[1]["expected_dice"]
    assert rows[0]["evidence"] < rows[1]["evidence"]
    assert [r["rank"] for r in rows] == [0, 1]
    # the order holds on evidence alone as well (lambda = 1)
    from napari_samsp.reward.ranking import score_image

    cal = RewardCalibrator(RewardConfig(lam=1.0))
    assert score_image(p, bad_img, cal).reward < score_image(p, good_img, cal).reward


def test_diversity_guard_separates_identical_images(micro_model):
    p = Predictor(micro_model, "micro")
    rng = np.random.default_rng(0)
    a = _disc(64, 64, 30, 30, 10, seed=0)[0]
    others = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), np.full((64, 64), 30, np.uint8)]
    images = [a, a.copy(), *others]
    rows = rank_images(p, images, diversity=0.9)
    pos = {r["index"]: r for r in rows}
    dup = [r for r in rows if r["duplicate_of"] is not None]
    assert len(dup) == 1
    twin = dup[0]
    assert {twin["index"], twin["duplicate_of"]} == {0, 1}
    assert twin["rank"] == len(images) - 1
    assert pos[twin["duplicate_of"]]["rank"] < twin["rank"]
    off = rank_images(p, images, diversity=None)
    assert all(r["duplicate_of"] is None for r in off)
    assert abs(pos[0]["expected_dice"] - pos[1]["expected_dice"]) < 1e-9


def test_mixed_sizes_and_channels(micro_model, tmp_path):
    from napari_samsp.io import write_png_atomic

    p = Predictor(micro_model, "micro")
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (37, 53), dtype=np.uint8),
        rng.integers(0, 65535, (64, 40), dtype=np.uint16),
        rng.integers(0, 255, (50, 50, 4), dtype=np.uint8),
        rng.integers(0, 255, (30, 90, 3), dtype=np.uint8),
        rng.random((45, 45)).astype(np.float32),
    ]
    rows = rank_images(p, images)
    assert sorted(r["rank"] for r in rows) == list(range(5))
    # each row's expected Dice is the (uncalibrated) calibrator's map of that row's two scores
    prior = RewardCalibrator()
    for r in rows:
        assert r["expected_dice"] == pytest.approx(float(prior.expected_dice(r["self_confidence"], r["evidence"])), abs=1e-9)
    # lowest expected Dice first; near-duplicates are moved behind their twin, so check the others' order
    by_rank = sorted(rows, key=lambda r: r["rank"])
    eds = [r["expected_dice"] for r in by_rank if r["duplicate_of"] is None]
    assert len(eds) >= 2 and eds == sorted(eds)
    path = write_png_atomic(tmp_path / "x.png", images[0])
    out = list(rank_paths(p, [path]))
    assert out[0]["image"] == str(path)
    assert set(out[0]) >= {"image", "expected_dice", "reward", "self_confidence", "evidence", "calibrated", "rank"}


def test_empty_input_raises(micro_model, tmp_path):
    from napari_samsp.io import find_images

    p = Predictor(micro_model, "micro")
    with pytest.raises(DataLayoutError):
        rank_images(p, [])
    with pytest.raises(DataLayoutError):
        list(rank_paths(p, []))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError):
        find_images([tmp_path / "empty"])


# -- self-improvement ------------------------------------------------------------------------------


def test_preference_loss():
    ref = torch.zeros(1, 1, 4, 4)
    chosen = torch.zeros(1, 1, 4, 4)
    chosen[..., :2] = 1
    rejected = torch.zeros(1, 1, 4, 4)
    same = preference_loss(ref.clone(), ref, chosen, rejected)
    assert same.item() == pytest.approx(np.log(2), rel=1e-5)
    better = ref.clone()
    better[..., :2] = 3.0  # more confident in the chosen foreground than the reference
    assert preference_loss(better, ref, chosen, rejected).item() < np.log(2)
    worse = ref.clone()
    worse[..., :2] = -3.0
    assert preference_loss(worse, ref, chosen, rejected).item() > np.log(2)
    # pixels where chosen and rejected agree do not count
    assert preference_loss(ref + 5 * (1 - chosen), ref, chosen, rejected).item() == pytest.approx(np.log(2), rel=1e-5)
    assert preference_loss(ref, ref, chosen, chosen).item() == 0.0


def _micro_loaded(model) -> LoadedModel:
    return LoadedModel(model, {"num_passes": 2, "mode": "semantic", "version": "micro-test"}, "micro-test", "test", True)


def _states_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_self_improve_runs_and_keeps_base(tmp_path, micro_model):
    store = _write_pairs(tmp_path / "store", 4)
    base = _micro_loaded(micro_model)
    before = copy.deepcopy(micro_model.state_dict())
    unlabeled = [_disc(48, 48, 20, 24, 9, seed=s)[0] for s in (10, 11, 12)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = self_improve(base, unlabeled, [store], rounds=1, config=ImproveConfig(steps=2, batch_size=2))
    assert len(rep.rounds) == 1 and rep.rounds[0].n_pseudo == 3
    assert {"human", "pseudo", "pref"} <= set(rep.rounds[0].losses)
    assert _states_equal(before, micro_model.state_dict())  # the base is untouched
    assert rep.model is not micro_model
    assert rep.card["self_improve"]["rounds"][0]["round"] == 1


def test_self_improve_rejects_worse_round(tmp_path, micro_model, monkeypatch):
    store = _write_pairs(tmp_path / "store", 4)
    base = _micro_loaded(micro_model)
    unlabeled = [_disc(48, 48, 20, 24, 9, seed=s)[0] for s in (10, 11)]
    snapshots = []
    values = iter([0.5, 0.6, 0.55])  # base, round 1 (better), round 2 (worse)

    def fake_validate(model, val, k):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return next(values)

    monkeypatch.setattr(improve_mod, "_validate", fake_validate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = self_improve(base, unlabeled, [store], rounds=3, config=ImproveConfig(steps=2, batch_size=2, lr=1e-2))
    assert [r.accepted for r in rep.rounds] == [True, False]  # stopped after the worse round
    assert rep.final_val == 0.6 and rep.base_val == 0.5
    assert "kept the model of round 1" in rep.rounds[1].message
    assert _states_equal(snapshots[1], rep.model.state_dict())  # round 1's weights, not round 2's
    assert not _states_equal(snapshots[2], rep.model.state_dict())

    values2 = iter([0.5, 0.4])
    monkeypatch.setattr(improve_mod, "_validate", lambda m, v, k: next(values2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep2 = self_improve(base, unlabeled, [store], rounds=2, config=ImproveConfig(steps=2, batch_size=2, lr=1e-2))
    assert not rep2.improved and "base model" in rep2.message
    assert _states_equal(micro_model.state_dict(), rep2.model.state_dict())


def test_self_improve_needs_corrections(micro_model):
    with pytest.raises(DataLayoutError):
        self_improve(_micro_loaded(micro_model), [np.zeros((8, 8), np.uint8)], [])


def test_lambda_selection_follows_the_informative_score():
    from napari_samsp.reward.calibration import LAMBDA_GRID

    rng = np.random.default_rng(2)
    se = rng.uniform(0, 1, 80)
    ev = rng.uniform(0, 1, 80)  # uninformative evidence
    dice = np.clip(0.2 + 0.7 * se + rng.normal(0, 0.03, 80), 0, 1)
    fixed = RewardCalibrator(RewardConfig(lam=0.9)).fit(se, ev, dice)
    auto = RewardCalibrator(RewardConfig(lam=0.9)).fit(se, ev, dice, lam_grid=LAMBDA_GRID)
    assert auto.config.lam == 0.0 and fixed.config.lam == 0.9
    q_auto = calibration_quality(auto.expected_dice(se, ev), dice)
    q_fixed = calibration_quality(fixed.expected_dice(se, ev), dice)
    assert q_auto["spearman"] > q_fixed["spearman"] + 0.2


def test_store_with_enough_corrections_calibrates(tmp_path, micro_model):
    store = _write_pairs(tmp_path / "store", 6)
    p = Predictor(micro_model, "micro")
    cal = fit_calibrator(p, store, select_lambda=True)
    assert cal.calibrated and cal.samples.dice.shape == (6,)
    assert cal.protos is not None and cal.protos.count == 6
    rows = rank_images(p, [_disc(seed=9)[0], _disc(seed=10)[0]], calibrator=cal)
    assert all(r["calibrated"] for r in rows)


def test_instance_mode_ranks_by_the_objects(monkeypatch, micro_model):
    """Instance mode scores each object on its own pool: the image's numbers are their area-weighted means."""
    p, good_img, bad_img = _good_and_bad(monkeypatch, micro_model)
    rows = rank_images(p, [good_img, bad_img], diversity=None, mode="instance", keep_scores=True)
    assert [r["index"] for r in rows] == [1, 0]
    assert rows[0]["expected_dice"] < rows[1]["expected_dice"]
    for r in rows:
        objects = r["score"].objects
        assert objects, "instance mode scored no object"
        eds = [v[0] for v in objects.values()]
        assert min(eds) - 1e-9 <= r["expected_dice"] <= max(eds) + 1e-9  # a weighted mean of its objects
    with pytest.raises(ValueError, match="mode"):
        rank_images(p, [good_img], mode="panoptic")


def test_calibration_from_an_annotation_store(tmp_path, micro_model):
    """The plugin's store calibrates the reward: one sample per corrected entry, each against its own mask."""
    from napari_samsp.metrics import dice as dice_metric
    from napari_samsp.reward.candidates import prepare_image
    from napari_samsp.reward.ranking import score_image
    from napari_samsp.store import AnnotationStore

    store = AnnotationStore(tmp_path / "store")
    truth = {}
    for i in range(6):
        img, mask = _disc(56, 64, 18 + 4 * i, 20 + 5 * i, 7 + i, seed=20 + i)
        entry = store.add(img, mask.astype(np.uint8), source=f"cell{i}.png")
        truth[entry.stem] = (img, mask)
    store.add(_disc(seed=40)[0], _disc(seed=40)[1].astype(np.uint8), source="accepted.png", corrected=False)
    p = Predictor(micro_model, "micro")
    cal = fit_calibrator(p, store)
    samples = cal.samples
    assert cal.calibrated and sorted(samples.stems) == sorted(truth)  # corrected entries only
    for stem, d in zip(samples.stems, samples.dice):
        img, mask = truth[stem]
        auto = score_image(p, prepare_image(img, 512), RewardCalibrator(), max_side=None).auto_mask
        assert d == pytest.approx(dice_metric(auto, mask), abs=1e-6)
    # rank_images with the store itself uses that calibration
    rows = rank_images(p, [_disc(seed=9)[0]], store=store)
    assert rows[0]["calibrated"] is True
    assert rows[0]["expected_dice"] == pytest.approx(float(cal.expected_dice(rows[0]["self_confidence"], rows[0]["evidence"])))
