"""The model card's ``preprocessing``: upstream SAM's for foreign weights, the legacy one for ours,
inherited by fine-tuned children and used by the training data path."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from _upstream_models import upstream_sam
from segment_anything.utils.transforms import ResizeLongestSide

from napari_samsp.errors import WeightsError
from napari_samsp.finetune.data import AugmentConfig, Example, prepare_sample
from napari_samsp.models import build_model
from napari_samsp.models.checkpoints import DEFAULT_WEIGHTS, load_model, read_card, save_model
from napari_samsp.predictor import Predictor
from napari_samsp.transforms import (
    LEGACY_PREPROCESSING,
    SAM_PIXEL_MEAN,
    SAM_PREPROCESSING,
    InputTransform,
    model_preprocessing,
    set_model_preprocessing,
)

MEAN = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)


def _rgb(h: int = 70, w: int = 110, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_default_model_is_legacy_and_its_card_says_so():
    loaded = load_model(None, device="cpu")
    assert model_preprocessing(loaded.model) == LEGACY_PREPROCESSING
    sidecar = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert sidecar["preprocessing"] == LEGACY_PREPROCESSING
    assert read_card(DEFAULT_WEIGHTS).get("preprocessing", LEGACY_PREPROCESSING) == LEGACY_PREPROCESSING


def test_sam_input_is_upstream_preprocess_exactly():
    """resize (upstream ResizeLongestSide) + mean padding + normalize_pixels == upstream Sam.preprocess."""
    up = upstream_sam("micro")
    model = build_model("micro")
    rgb = _rgb()
    t = InputTransform(128, rgb.shape[:2], SAM_PREPROCESSING)
    ours = model.normalize_pixels(t.image_to_tensor(rgb)[None])
    resized = torch.as_tensor(ResizeLongestSide(128).apply_image(rgb)).permute(2, 0, 1).contiguous()[None]
    assert torch.equal(ours, up.preprocess(resized))
    h, w = t.resized_size
    assert h < 128 and (ours[..., h:, :] == 0).all() and (ours[..., :, w:] == 0).all()


def test_legacy_input_pads_before_normalising():
    model = build_model("micro")
    t = InputTransform(128, (70, 110))
    x = model.normalize_pixels(t.image_to_tensor(_rgb())[None])
    h, _ = t.resized_size
    torch.testing.assert_close(x[0, :, h:, :], (-model.pixel_mean / model.pixel_std).expand(3, 128 - h, 128))


@pytest.mark.parametrize("prep", [SAM_PREPROCESSING, LEGACY_PREPROCESSING])
def test_training_samples_are_prepared_like_inference(prep):
    rgb = _rgb(61, 97)
    labels = np.zeros((61, 97), np.int32)
    labels[10:30, 20:60] = 1
    smp = prepare_sample(Example(rgb, labels, "d", "s"), 128, preprocessing=prep)
    t = InputTransform(128, rgb.shape[:2], prep)
    h, w = t.resized_size
    assert smp.valid[:h, :w].all() and smp.valid.sum() == h * w
    # without augmentation a training sample is exactly what the predictor feeds the encoder
    assert torch.equal(smp.image, t.image_to_tensor(rgb))
    pad = smp.image[:, h:, :]
    assert torch.equal(pad, (MEAN if prep == SAM_PREPROCESSING else torch.zeros(3, 1, 1)).expand_as(pad))
    # augmented samples keep the padding rule
    aug = prepare_sample(Example(rgb, labels, "d", "s"), 128, random.Random(0), AugmentConfig(), preprocessing=prep)
    rows = aug.valid.any(1).sum()
    tail = aug.image[:, rows:, :]
    assert torch.equal(tail, (MEAN if prep == SAM_PREPROCESSING else torch.zeros(3, 1, 1)).expand_as(tail))


def test_card_round_trip_and_conflicts(tmp_path):
    model = set_model_preprocessing(build_model("micro"), SAM_PREPROCESSING)
    path = save_model(model, tmp_path / "m.safetensors", {"mode": "semantic"})
    assert read_card(path)["preprocessing"] == SAM_PREPROCESSING
    assert model_preprocessing(load_model(str(path), device="cpu").model) == SAM_PREPROCESSING
    with pytest.raises(ValueError, match="card says preprocessing 'samsp-v1' but the model was prepared with 'sam'"):
        save_model(model, tmp_path / "n.safetensors", {"preprocessing": LEGACY_PREPROCESSING})
    # a card naming an unknown preprocessing is refused with one line
    legacy = build_model("micro")
    path = save_model(legacy, tmp_path / "l.safetensors", {})
    card = read_card(path)
    assert card["preprocessing"] == LEGACY_PREPROCESSING
    card["preprocessing"] = "bogus"
    from safetensors.torch import load_file, save_file

    save_file(load_file(path), path, metadata={"format": "pt", "samsp_card": json.dumps(card)})
    with pytest.raises(WeightsError, match="unknown preprocessing 'bogus'"):
        load_model(str(path), device="cpu")


def test_embeddings_of_another_preprocessing_are_not_reused():
    model = build_model("micro").eval()
    p = Predictor(model, "same-id", None)
    p.set_image(_rgb())
    set_model_preprocessing(model, SAM_PREPROCESSING)
    p.set_image(_rgb())
    assert not p.last_embed_was_cached
    p.set_image(_rgb())
    assert p.last_embed_was_cached


def test_finetuned_child_of_official_weights_inherits_sam_preprocessing(tmp_path, monkeypatch):
    from test_finetune import job_config, write_disc_layout

    import napari_samsp.finetune.loop as loop
    from napari_samsp.finetune.job import finetune_model
    from napari_samsp.finetune.versions import ModelVersions

    path = tmp_path / "sam_micro.pth"
    torch.save(upstream_sam("micro").state_dict(), path)
    base = load_model(str(path), device="cpu")
    assert base.card["preprocessing"] == SAM_PREPROCESSING
    seen = []
    real = loop.prepare_sample

    def spy(*args, **kwargs):
        seen.append(kwargs.get("preprocessing", args[4] if len(args) > 4 else LEGACY_PREPROCESSING))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "prepare_sample", spy)
    data = write_disc_layout(tmp_path / "data", n=4)
    result = finetune_model(base, [data], job_config(2))
    assert seen and set(seen) == {SAM_PREPROCESSING}  # training and validation samples
    versions = ModelVersions(tmp_path / "project")
    info = versions.add(result.model, result.card)
    assert read_card(info.path)["preprocessing"] == SAM_PREPROCESSING
    child = load_model(str(info.path), device="cpu")
    assert model_preprocessing(child.model) == SAM_PREPROCESSING
