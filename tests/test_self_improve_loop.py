"""One training loop: ``finetune.loop.train`` takes the objective and the sampler as values, and
self-improvement (score -> pseudo set -> train -> gate) trains through it (micro models, synthetic discs)."""

from __future__ import annotations

import copy
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from test_finetune import disc_examples, micro, same_weights, small_config, snapshot
from test_reward import _disc, _micro_loaded, _write_pairs

from napari_samsp.finetune import loop
from napari_samsp.finetune.data import BalancedSampler
from napari_samsp.finetune.loop import Callbacks, TrainConfig, TrainingCancelled, train
from napari_samsp.finetune.objective import ObjectiveConfig, SelfPromptObjective
from napari_samsp.models.sam_sp import SamSP
from napari_samsp.reward import improve as improve_mod
from napari_samsp.reward.improve import ImproveConfig, self_improve
from napari_samsp.reward.objective import MixedSampler, PseudoExample, SelfImproveObjective, unpack_pseudo

# -- the loop takes the objective and the sampler as values ---------------------------------------------------


class CountingObjective(torch.nn.Module):
    """The default objective, counting its calls and keeping the examples the loop passes."""

    wants_examples = True

    def __init__(self, model, seed: int) -> None:
        super().__init__()
        self.inner = SelfPromptObjective(model, ObjectiveConfig(num_passes=2, prompts_per_image=1), seed=seed)
        self.calls = 0
        self.seen: list[list] = []

    def forward(self, images, labels, valid, features=None, examples=None):
        self.calls += 1
        self.seen.append(list(examples))
        return self.inner(images, labels, valid, features=features)


class RecordingSampler(BalancedSampler):
    made: list["RecordingSampler"] = []

    def __init__(self, examples, seed):
        super().__init__(examples, seed)
        self.seed, self.drawn = seed, []
        RecordingSampler.made.append(self)

    def draw(self):
        ex = super().draw()
        self.drawn.append(ex)
        return ex


@pytest.mark.parametrize("trainable", [("mask_decoder",), ("encoder", "mask_decoder")])  # cached and image paths
def test_train_calls_the_given_objective_on_the_given_samplers_draws(trainable):
    model = micro()
    before = snapshot(model)
    made: list[CountingObjective] = []

    def factory(m, seed):
        made.append(CountingObjective(m, seed))
        return made[-1]

    RecordingSampler.made.clear()
    cfg = small_config(steps=3, trainable=trainable, seed=5)
    train(model, disc_examples(4), (), cfg, objective=factory, sampler=RecordingSampler)
    assert len(made) == 1 and made[0].inner.model is model  # built on the trained model
    assert made[0].calls == 3
    (sampler,) = RecordingSampler.made
    assert sampler.seed == 5 * 1000  # the loop's per-rank / resume seed
    assert [ex for batch in made[0].seen for ex in batch] == sampler.drawn  # the drawn rows, in order
    assert all(len(batch) == cfg.batch_size for batch in made[0].seen)
    assert not same_weights(before, snapshot(model))


def test_train_takes_a_built_objective_and_refuses_a_factory_of_something_else():
    model = micro()
    obj = CountingObjective(model, 0)
    train(model, disc_examples(3), (), small_config(steps=2, trainable=("mask_decoder",)), objective=obj)
    assert obj.calls == 2
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        train(model, disc_examples(3), (), small_config(steps=1), objective=lambda m, s: "loss")


def test_the_default_objective_and_sampler_as_values_give_the_default_run():
    cfg = small_config(steps=3, trainable=("mask_decoder", "prompt_encoder"))
    a, b = micro(), micro()
    train(a, disc_examples(4), (), cfg)
    train(b, disc_examples(4), (), cfg, objective=lambda m, seed: SelfPromptObjective(m, cfg.objective, seed=seed),
          sampler=lambda examples, seed: BalancedSampler(examples, seed))
    assert same_weights(snapshot(a), snapshot(b))


def test_a_shared_feature_cache_encodes_each_image_once_across_calls(monkeypatch):
    model = micro()
    examples = disc_examples(2)
    calls = []
    real = type(model).encode
    monkeypatch.setattr(type(model), "encode", lambda self, x: calls.append(1) or real(self, x))
    cache: dict = {}
    cfg = small_config(steps=4, trainable=("mask_decoder",), augment=None)
    train(model, examples, (), cfg, feature_cache=cache)
    first = len(calls)
    assert 1 <= first <= 2 and len(cache) == first
    train(model, examples, (), cfg, feature_cache=cache)
    assert len(calls) == first  # no new encoder run: the same image arrays
    # A new array (even with equal pixels) is a new entry, never a stale hit.
    train(model, [copy.deepcopy(ex) for ex in examples], (), cfg, feature_cache=cache)
    assert len(calls) > first


# -- self-improvement goes through the one loop ---------------------------------------------------------------


def _setup(tmp_path, micro_model, n_unlabeled=2):
    store = _write_pairs(tmp_path / "store", 4)
    unlabeled = [_disc(48, 48, 20, 24, 9, seed=s)[0] for s in range(10, 10 + n_unlabeled)]
    return _micro_loaded(micro_model), unlabeled, store


def test_self_improve_trains_through_finetune_loop_train(tmp_path, micro_model, monkeypatch):
    base, unlabeled, store = _setup(tmp_path, micro_model)
    calls = []
    real_train = loop.train

    def spy(model, examples, val, config, callbacks, **kw):
        objective = kw["objective"](model, config.seed)
        sampler = kw["sampler"](examples, 0)
        lrs = []
        user_on_loss = callbacks.on_loss

        def on_loss(step, values):
            lrs.append(values["lr"])
            user_on_loss(step, values)

        calls.append({"objective": objective, "sampler": sampler, "config": config, "lrs": lrs, "n": len(examples)})
        return real_train(model, examples, val, config, Callbacks(callbacks.progress, on_loss, None, callbacks.should_cancel), **kw)

    monkeypatch.setattr(improve_mod, "train", spy)
    stages = []
    cfg = ImproveConfig(steps=4, batch_size=2, lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = self_improve(base, unlabeled, [store], rounds=1, config=cfg, progress=lambda *a: stages.append(a))
    assert len(calls) == 1
    call = calls[0]
    assert isinstance(call["objective"], SelfImproveObjective)
    assert isinstance(call["sampler"], MixedSampler) and len(call["sampler"].pseudo) == 2
    assert call["n"] == 3 + 2  # the store's 3 training pairs + 2 pseudo-labelled images
    assert call["config"].steps == 4 and call["config"].batch_size == 2 and call["config"].grad_clip == 1.0
    # The loop's schedule (warm-up 0, cosine): full lr at the first step, lower after.
    assert call["lrs"][0] == pytest.approx(1e-3) and call["lrs"][-1] < 1e-3
    assert [s for s in stages if s[0] == "round 1: training"] == [("round 1: training", k, 4) for k in range(1, 5)]
    assert {"human", "pseudo", "pref", "total"} <= set(rep.rounds[0].losses)


def test_without_confident_pseudo_labels_a_round_trains_on_the_corrections_alone(tmp_path, micro_model, monkeypatch):
    base, unlabeled, store = _setup(tmp_path, micro_model)
    kinds = []
    real_forward = SelfImproveObjective.forward

    def spy(self, images, labels, valid, features=None, examples=None):
        kinds.append([type(e).__name__ for e in examples])
        return real_forward(self, images, labels, valid, features, examples)

    monkeypatch.setattr(SelfImproveObjective, "forward", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = self_improve(base, unlabeled, [store], rounds=1, config=ImproveConfig(steps=2, batch_size=3, min_confidence=1.01))
    assert rep.rounds[0].n_pseudo == 0 and set(rep.rounds[0].losses) == {"human", "total"}
    assert kinds == [["Example"] * 3] * 2  # the whole batch is corrected examples


def test_self_improve_cancel_is_the_loops(tmp_path, micro_model):
    base, unlabeled, store = _setup(tmp_path, micro_model)
    before = snapshot(micro_model)
    polls = []

    def cancel() -> bool:  # 2 polls while scoring (one per image), then one per training step
        polls.append(1)
        return len(polls) > 3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TrainingCancelled, match=r"round 1: fine-tuning cancelled at step 1"):
            self_improve(base, unlabeled, [store], rounds=2, config=ImproveConfig(steps=5, batch_size=2), should_cancel=cancel)
    assert len(polls) == 4
    assert same_weights(before, snapshot(micro_model))


def test_a_nan_step_is_skipped_by_the_loop_and_a_diverged_round_is_refused(tmp_path, micro_model, monkeypatch, caplog):
    base, unlabeled, store = _setup(tmp_path, micro_model)
    real_forward = SelfImproveObjective.forward
    calls = []

    def nan_first(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            out["total"] = out["total"] * float("nan")
        return out

    monkeypatch.setattr(SelfImproveObjective, "forward", nan_first)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="napari_samsp.finetune.loop"):
        warnings.simplefilter("ignore")
        rep = self_improve(base, unlabeled, [store], rounds=1, config=ImproveConfig(steps=3, batch_size=2))
    assert len(calls) == 3
    assert any(r.name == "napari_samsp.finetune.loop" and "non-finite loss at step 0" in r.getMessage() for r in caplog.records)
    assert all(math.isfinite(v) for v in rep.rounds[0].losses.values())  # the mean of the 2 finite steps

    # Non-finite every step: the loop raises TrainingDiverged; the gate refuses the round and keeps the base.
    monkeypatch.setattr(SelfImproveObjective, "forward",
                        lambda self, *a, **k: {**real_forward(self, *a, **k), "total": torch.tensor(float("nan"), requires_grad=True)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = self_improve(base, unlabeled, [store], rounds=2, config=ImproveConfig(steps=6, batch_size=2, max_bad_steps=3))
    assert len(rep.rounds) == 1 and not rep.rounds[0].accepted and not rep.improved
    assert "diverged" in rep.rounds[0].message and "NaN/inf for 3 steps" in rep.rounds[0].message
    assert same_weights(snapshot(micro_model), snapshot(rep.model))


# -- the preference objective ---------------------------------------------------------------------------------


def _margin(model, reference, example: PseudoExample) -> float:
    """Mean over pixels where chosen and rejected differ of s * (z_model - z_ref): > 0 prefers chosen."""
    from napari_samsp.finetune.data import prepare_sample
    from napari_samsp.transforms import model_preprocessing

    smp = prepare_sample(example, model.img_size, preprocessing=model_preprocessing(model))
    chosen, rejected = unpack_pseudo(smp.labels[None])
    diff = (chosen != rejected) & smp.valid[None, None]
    s = chosen * 2 - 1
    with torch.no_grad():
        feats = model.encode(model.normalize_pixels(smp.image[None]))
        z = model.upscale_logits(SamSP(model, num_passes=2).run_passes(feats)[-1].logits)
        z_ref = model.upscale_logits(SamSP(reference, num_passes=2).run_passes(feats)[-1].logits)
    return float((s * (z - z_ref))[diff].mean())


@pytest.mark.parametrize("swap", [False, True])
def test_the_preference_term_moves_the_model_towards_the_chosen_mask(swap):
    model = micro()
    reference = copy.deepcopy(model).eval()
    img, disc = _disc(48, 48, 24, 24, 12, seed=3)
    smaller = _disc(48, 48, 24, 24, 6, seed=3)[1]  # the worse candidate: under-segments the disc
    good, bad = (smaller, disc) if swap else (disc, smaller)
    pseudo = PseudoExample.from_masks(np.repeat(img[..., None], 3, -1), good, bad, 0.9, "u0")
    human = disc_examples(1)
    objective = SelfImproveObjective(model, reference, ObjectiveConfig(num_passes=2, prompts_per_image=0), 0,
                                     human_weight=0.0, pseudo_weight=0.0, pref_weight=1.0)
    prefs = []
    cfg = TrainConfig(steps=12, batch_size=2, lr=3e-3, warmup_steps=0, trainable=("mask_decoder",), augment=None,
                      objective=ObjectiveConfig(num_passes=2), val_every=10**6, checkpoint_every=10**6)
    train(model, human + [pseudo], (), cfg, Callbacks(on_loss=lambda s, v: prefs.append(v["pref"])),
          objective=objective, sampler=MixedSampler.factory(1, 1))
    assert prefs[0] == pytest.approx(math.log(2), abs=1e-5)  # the model is its reference at the first step
    assert prefs[-1] < prefs[0] - 0.05
    assert _margin(model, reference, pseudo) > 0  # prefers whichever mask was chosen, relative to the reference


# -- the gate -------------------------------------------------------------------------------------------------


def test_the_gate_refuses_a_round_that_makes_the_model_worse(tmp_path, micro_model, monkeypatch):
    """Real training through the loop, real validation: a round whose objective drives every logit negative
    (empty masks, Dice 0 on the discs) is undone and the base weights come back."""
    base, unlabeled, store = _setup(tmp_path, micro_model)
    before = snapshot(micro_model)
    val = disc_examples(3, seed=10, domain="val")  # the random micro model scores about 0.2 here

    def sabotage(self, images, labels, valid, features=None, examples=None):
        logits = self.sp.run_passes(features)[-1].logits
        return {"total": logits.mean() + 10.0}

    monkeypatch.setattr(SelfImproveObjective, "forward", sabotage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = self_improve(base, unlabeled, [store], rounds=2, val_examples=val,
                           config=ImproveConfig(steps=10, batch_size=2, lr=5e-2))
    assert rep.base_val > 0.05, rep.base_val  # there was something to lose
    (r1,) = rep.rounds
    assert r1.val_after < r1.val_before and not r1.accepted
    assert "did not beat" in r1.message and "kept the base model" in r1.message
    assert same_weights(before, snapshot(rep.model)) and rep.final_val == rep.base_val
