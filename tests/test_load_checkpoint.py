"""``finetune.checkpoint.load_checkpoint``: a round trip through the real checkpoint writer (``loop.train``)."""

from __future__ import annotations

import json

import pytest
import torch
from test_finetune import disc_examples, small_config

from napari_samsp.errors import WeightsError
from napari_samsp.finetune.checkpoint import load_checkpoint
from napari_samsp.finetune.loop import train
from napari_samsp.finetune.objective import ObjectiveConfig
from napari_samsp.models import build_model
from napari_samsp.transforms import SAM_PREPROCESSING, model_preprocessing


def _run(tmp_path, steps=3, val_every=0, config=True):
    run = tmp_path / "run"
    run.mkdir()
    if config:
        (run / "config.json").write_text(json.dumps({
            "config": {"model": "micro", "mode": "instance", "objective": {"num_passes": 1}},
            "train": {"steps": steps}, "preprocessing": SAM_PREPROCESSING}))
    torch.manual_seed(0)
    model = build_model("micro")
    cfg = small_config(steps=steps, objective=ObjectiveConfig(num_passes=1, prompts_per_image=0))
    if val_every:
        cfg.val_every = val_every
    ex = disc_examples(2)
    result = train(model, ex, ex[:1] if val_every else (), cfg, checkpoint_path=run / "checkpoint.pt")
    return run / "checkpoint.pt", result


def test_round_trip_last_weights_config_and_step(tmp_path):
    path, result = _run(tmp_path)
    ck = load_checkpoint(path, "best")  # no validation: falls back to the last step's weights
    assert ck.which == "model" and ck.step == 3 and ck.best_step == 0
    assert ck.model_name == "micro" and ck.mode == "instance" and ck.num_passes == 1
    assert ck.train_config == {"steps": 3} and ck.preprocessing == SAM_PREPROCESSING
    final = result.model.state_dict()
    assert set(ck.weights) == set(final)
    for k, v in ck.weights.items():
        assert torch.equal(v, final[k].cpu()), k
    model = ck.build_model()
    assert not model.training and model_preprocessing(model) == SAM_PREPROCESSING
    for k, v in model.state_dict().items():
        assert torch.equal(v, final[k].cpu()), k
    card = ck.card()
    assert card["mode"] == "instance" and card["num_passes"] == 1 and card["checkpoint"]["step"] == 3
    assert ck.model_id == "ckpt-run-model-3"


def test_best_weights_are_the_best_validation_step(tmp_path):
    path, _ = _run(tmp_path, steps=4, val_every=2)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    ck = load_checkpoint(path, "best")
    assert ck.which == "best" and ck.best_step == raw["state"]["best_step"] > 0
    assert all(torch.equal(v, raw["best"][k]) for k, v in ck.weights.items())
    assert len(ck.history) == len(raw["state"]["history"]) >= 2
    last = load_checkpoint(path, "model")
    assert last.which == "model" and all(torch.equal(v, raw["model"][k]) for k, v in last.weights.items())


def test_without_run_config_defaults_and_no_preprocessing_change(tmp_path):
    path, _ = _run(tmp_path, steps=1, config=False)
    ck = load_checkpoint(path)
    assert ck.run_config == {} and ck.preprocessing is None and ck.model_name == "samunet_tiny"
    assert ck.mode == "semantic" and ck.num_passes == 2
    assert "preprocessing" not in ck.card()
    with pytest.raises(WeightsError, match="do not fit"):
        ck.build_model()  # the default architecture is not the one trained: one clear error
    assert ck.build_model("micro") is not None


def test_bad_files_raise_one_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(WeightsError, match="not a training checkpoint"):
        load_checkpoint(other)
