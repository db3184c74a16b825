"""The typed model card (napari_samsp.models.card): defaults, round trip, child cards, segment options."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from napari_samsp.autoseg import auto_mode, card_segment_options
from napari_samsp.models import build_model
from napari_samsp.models.card import (
    DEFAULT_MODE,
    DEFAULT_NUM_PASSES,
    DEFAULT_PREPROCESSING,
    ModelCard,
    SegmentOptions,
)
from napari_samsp.models.checkpoints import load_model, make_card, read_card, save_model
from napari_samsp.transforms import LEGACY_PREPROCESSING, SAM_PREPROCESSING

DEFAULT_JSON = Path(__file__).resolve().parents[1] / "napari_samsp" / "weights" / "default.json"


def test_the_embedded_default_card_loads_with_its_own_values():
    d = json.loads(DEFAULT_JSON.read_text())
    card = ModelCard.from_dict(d)
    assert card.config_name == "samunet_tiny" and card.input_size == 256
    assert card.mode == "instance" and card.num_passes == 2 and card.refine_instances is False
    assert card.preprocessing == "samsp-v1" and card.version == d["version"] and card.parent == d["parent"]
    assert card.steps == 9726 and [e["count"] for e in card.training_data] == [411, 1016, 651]  # v3.3b
    assert card.prompt_flip_views == 4 and card.flip_views == 1  # the editor averages four views; prompt-free one
    assert card.metrics["full_val"]["mean_dice"] == 0.641 and card.parent == "756f7e88fd93479aa39406cc094f7711"
    assert set(card.extra) == {"checkpoint", "license_note", "note", "recipe", "refine_instances_note"}


def test_a_minimal_old_card_gets_the_documented_defaults():
    card = ModelCard.from_dict({"version": "abc"})
    assert (card.mode, card.num_passes, card.refine_instances, card.preprocessing) == ("semantic", 2, True, "samsp-v1")
    assert DEFAULT_MODE == "semantic" and DEFAULT_NUM_PASSES == 2 and DEFAULT_PREPROCESSING == LEGACY_PREPROCESSING
    assert card.parent is None and card.steps == 0 and card.training_data == () and not card.random
    assert dict(card.everything) == {} and card.origin is None and card.config_name is None
    assert ModelCard.from_dict(None) == ModelCard()
    # placeholders old writers used for "not set" mean the default too
    assert ModelCard.from_dict({"num_passes": 0, "preprocessing": ""}).num_passes == 2
    # the input size follows the config when the card does not say it
    assert ModelCard.from_dict({"config": {"name": "x", "img_size": 64}}).input_size == 64


def test_round_trip_is_lossless_including_unknown_keys():
    d = json.loads(DEFAULT_JSON.read_text())
    assert ModelCard.from_dict(d).to_dict() == d
    foreign = {"format": "samsp-1", "mode": "everything", "origin": "official SAM checkpoint", "random": True,
               "everything": {"points_per_side": 16}, "preprocessing": "sam", "num_passes": 1,
               "vendor": {"nested": [1, {"a": None}]}, "parent": None, "version": "v", "created": "2026-01-01"}
    card = ModelCard.from_dict(foreign)
    out = card.to_dict()
    assert {k: out[k] for k in foreign} == foreign
    assert ModelCard.from_dict(out) == card
    minimal = {"mode": "instance", "zzz": 3}
    back = ModelCard.from_dict(minimal).to_dict()
    assert back["zzz"] == 3 and back["mode"] == "instance" and back["num_passes"] == 2
    # the writer and the reader agree: a saved card reads back as the same typed card
    assert ModelCard.from_dict(json.loads(json.dumps(back))) == ModelCard.from_dict(minimal)


def test_the_card_is_frozen_all_through():
    card = ModelCard.from_dict(json.loads(DEFAULT_JSON.read_text()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.num_passes = 3
    with pytest.raises(TypeError):
        card.metrics["full_val"] = {}
    with pytest.raises(TypeError):
        card.extra["recipe"]["stage"] = None
    with pytest.raises(TypeError):
        card.training_data[0]["count"] = 1
    given = {"a": [1]}
    held = ModelCard(extra={"x": given})
    given["a"].append(2)  # the caller's dict changes, the card does not
    assert held.to_dict()["x"] == {"a": [1]}


def test_invalid_values_are_refused_with_one_line():
    with pytest.raises(ValueError, match="card mode must be one of"):
        ModelCard.from_dict({"mode": "panoptic"})
    with pytest.raises(ValueError, match="num_passes"):
        ModelCard.from_dict({"num_passes": -1})
    with pytest.raises(ValueError, match="unknown preprocessing"):
        ModelCard.from_dict({"preprocessing": "imagenet"})
    with pytest.raises(ValueError, match="training_data entries"):
        ModelCard.from_dict({"training_data": [{"name": "x"}]})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        ModelCard.from_dict({"metrics": {"x": object()}})


def test_child_sets_the_parent_keeps_how_to_run_and_resets_history():
    parent = ModelCard.from_dict(json.loads(DEFAULT_JSON.read_text()))
    child = parent.child(steps=10, metrics={"after": {"dice": 0.9}}, finetune={"lr": 1e-4})
    assert child.parent == parent.version and child.version is None and child.created is None
    assert child.preprocessing == parent.preprocessing == "samsp-v1"
    assert (child.mode, child.num_passes, child.refine_instances) == ("instance", 2, False)
    assert child.config == parent.config and child.input_size == parent.input_size
    assert child.steps == 10 and dict(child.metrics) == {"after": {"dice": 0.9}} and child.training_data == ()
    assert child.extra["finetune"] == {"lr": 0.0001} and child.extra["license_note"] == parent.extra["license_note"]
    for own in ("note", "checkpoint", "recipe"):  # the parent's own history is not the child's
        assert own in parent.extra and own not in child.extra
    assert child.child().parent is None  # an unsaved child has no version yet
    sam = ModelCard.from_dict({"preprocessing": "sam", "mode": "everything", "version": "p"})
    assert sam.child(mode="instance").preprocessing == SAM_PREPROCESSING


def test_make_card_and_save_model_write_through_the_typed_card(tmp_path):
    model = build_model("micro")
    card = ModelCard.from_dict({"version": "p1", "mode": "instance", "num_passes": 3}).child(steps=4, note="n")
    out = save_model(model, tmp_path / "m.safetensors", card)  # a ModelCard is accepted as is
    back = ModelCard.from_dict(read_card(out))
    assert back.parent == "p1" and back.steps == 4 and back.num_passes == 3 and back.extra["note"] == "n"
    assert back.version and back.created and back.config_name == "micro" and back.input_size == model.img_size
    assert make_card(model.config, {})["num_passes"] == DEFAULT_NUM_PASSES
    loaded = load_model(str(out), device="cpu")
    assert loaded.model_card == back and loaded.model_card.mode == "instance"


def test_segment_options_pick_everything_for_foreign_weights_and_the_card_mode_otherwise(tmp_path):
    wrapped = tmp_path / "micro_sam_like.pt"  # foreign weights: a SAM state dict as micro-sam saves it
    torch.save({"model_state": build_model("micro").state_dict()}, wrapped)
    foreign = load_model(wrapped, device="cpu")
    opts = SegmentOptions.from_card(foreign.model_card)
    assert opts.mode == "everything" and opts.kwargs() == {}
    assert foreign.model_card.preprocessing == SAM_PREPROCESSING
    ours = ModelCard.from_dict(json.loads(DEFAULT_JSON.read_text()))
    opts = SegmentOptions.from_card(ours)
    assert opts.mode == "instance" and opts.kwargs() == {"num_passes": 2, "refine_instances": False, "flip_views": ours.flip_views}
    assert SegmentOptions.from_card(ours, "semantic").mode == "semantic"
    evt = {"mode": "everything", "everything": {"points_per_side": 16}, "num_passes": 3}
    assert SegmentOptions.from_card(evt).kwargs() == {"points_per_side": 16}
    assert SegmentOptions.from_card(evt, "instance").kwargs() == {"num_passes": 3, "refine_instances": True, "flip_views": 1}
    assert SegmentOptions.from_card(None).kwargs() == {"num_passes": 2, "refine_instances": True, "flip_views": 1}
    assert SegmentOptions.from_card({"flip_views": 2.0}).kwargs()["flip_views"] == 2
    assert ModelCard.from_dict({"flip_views": 4}).to_dict()["flip_views"] == 4
    assert "flip_views" not in ModelCard.from_dict({}).to_dict()  # the default is not written
    for bad in (3, True, "2"):
        with pytest.raises(ValueError, match="flip_views"):
            ModelCard.from_dict({"flip_views": bad})
    with pytest.raises(ValueError, match="mode must be one of"):
        SegmentOptions.from_card(ours, "panoptic")
    # the old functions are thin wrappers over the typed card
    assert auto_mode(foreign.card) == "everything" and auto_mode(ours) == "instance"
    assert card_segment_options(ours.to_dict()) == SegmentOptions.from_card(ours).kwargs()


def test_a_card_whose_typed_view_is_invalid_is_refused_at_load(tmp_path):
    from napari_samsp.errors import WeightsError

    out = save_model(build_model("micro"), tmp_path / "m.safetensors", {"version": "v"})
    sidecar = out.with_suffix(".json")
    bad = {**read_card(out), "training_data": [{"name": "no count"}]}
    from safetensors.torch import load_file, save_file

    save_file(load_file(out), out, metadata={"format": "pt", "samsp_card": json.dumps(bad)})
    sidecar.write_text(json.dumps(bad))
    with pytest.raises(WeightsError, match="model card is invalid: card training_data entries"):
        load_model(str(out), device="cpu")


def test_a_fine_tuned_version_inherits_how_its_parent_runs(tmp_path):
    """Fine-tuning builds its card with ModelCard.child: the parent's refine option, passes and
    licence note carry over (the hand-built card of before dropped refine_instances and extras)."""
    from test_finetune import job_config, write_disc_layout

    from napari_samsp.finetune.job import finetune_model

    base = load_model("micro", device="cpu")
    base = dataclasses.replace(base, card={**base.card, "refine_instances": False, "num_passes": 1,
                                           "license_note": "CC0", "note": "the base's own note"})
    result = finetune_model(base, [write_disc_layout(tmp_path / "data", n=4)], job_config(2))
    child = ModelCard.from_dict(result.card)
    assert child.parent == base.card["version"] and child.refine_instances is False and child.num_passes == 1
    assert child.preprocessing == base.model_card.preprocessing and child.extra["license_note"] == "CC0"
    assert "note" not in child.extra and child.steps == 2 and child.extra["finetune"]["lr"] == 1e-3


def test_model_panel_says_how_prompts_are_decoded():
    from types import SimpleNamespace

    pytest.importorskip("qtpy")
    from napari_samsp._ui.model_panel import card_html

    def html_of(card: dict) -> str:
        return card_html(SimpleNamespace(card=card, source="m.safetensors", model_id="abc", is_random=False))

    assert "image and its left-right mirror, averaged" in html_of({"prompt_flip_views": 2})
    assert "image and its 3 mirror images, averaged" in html_of({"prompt_flip_views": 4})
    assert "decoded on the image alone" in html_of({})
