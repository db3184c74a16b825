"""Small parts of the recipes in training/: checkpoint export and the new-modality split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from test_finetune import disc_examples, small_config  # noqa: E402

from napari_samsp.finetune.loop import train  # noqa: E402
from napari_samsp.finetune.objective import ObjectiveConfig  # noqa: E402
from napari_samsp.models import build_model  # noqa: E402
from napari_samsp.models.checkpoints import load_model, read_card, save_model  # noqa: E402


def test_export_checkpoint_writes_the_final_weights_with_the_parents_card(tmp_path):
    import export_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"model": "micro", "mode": "instance",
                                                            "objective": {"num_passes": 1}}}))
    torch.manual_seed(0)
    model = build_model("micro")
    cfg = small_config(steps=2, objective=ObjectiveConfig(num_passes=1, prompts_per_image=0))
    train(model, disc_examples(2), (), cfg, checkpoint_path=run / "checkpoint.pt")
    parent = tmp_path / "parent.safetensors"
    save_model(build_model("micro"), parent, {"version": "p1", "steps": 5, "license_note": "CC0 test data",
                                              "training_data": [{"name": "discs", "count": 2}], "train_seconds": 9})
    out = tmp_path / "exported.safetensors"
    assert export_checkpoint.main([str(run / "checkpoint.pt"), "--card-from", str(parent), "--set",
                                   "refine_instances=false", "--note", "stage two", "-o", str(out)]) == 0
    card = read_card(out)
    assert card["parent"] == "p1" and card["version"] != "p1"
    assert card["steps"] == 7 and card["mode"] == "instance" and card["num_passes"] == 1
    assert card["refine_instances"] is False and card["note"] == "stage two"
    assert card["license_note"] == "CC0 test data" and card["training_data"] == [{"name": "discs", "count": 2}]
    assert "train_seconds" not in card  # the parent's, not this stage's
    final = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    loaded = load_model(str(out), device="cpu")
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, final[k]), k


def test_card_metrics_come_from_the_evaluation_files(tmp_path):
    """The shipped card's metrics are copied from evaluate_model.py outputs, not typed in."""
    from export_checkpoint import card_metrics

    full = tmp_path / "full.json"
    full.write_text(json.dumps({"mean_dice": 0.61234, "settings": {"limit": None}, "datasets": {
        "nuc": {"dice": 0.87456, "instance_f1@0.5": 0.79123, "mode": "instance", "per_image_dice": {"a": 1.0}},
        "head": {"dice": 0.5, "mode": "semantic"}}}))
    inter = tmp_path / "l20.json"
    inter.write_text(json.dumps({"settings": {"limit": 20}, "datasets": {
        "nuc": {"dice": 0.8, "noc": {"iou@1": 0.6049, "iou@5": 0.74, "noc@85": 11.05, "other": 3},
                "box": {"box_iou": 0.63, "confined_box_outside": 0.0, "n": 50}},
        "head": {"dice": 0.9}}}))
    m = card_metrics(full, inter)
    assert m["full_val"]["nuc"] == {"dice": 0.875, "instance_f1@0.5": 0.791, "mode": "instance"}
    assert m["full_val"]["mean_dice"] == 0.612 and "limit" in m["full_val"]["source"]
    assert m["interactive"]["nuc"] == {"iou@1": 0.605, "iou@5": 0.74, "noc@85": 11.05, "box_iou": 0.63,
                                       "confined_box_outside": 0.0}
    assert m["interactive"]["head"] == {} and m["first_click_iou"] == {"nuc": 0.605}
    assert set(card_metrics(full, None)) == {"full_val"}


def test_kinds_split_groups_stems_by_kind_and_split(tmp_path):
    from loop_curve import kinds_split

    (tmp_path / "index.json").write_text(json.dumps([
        {"stem": "a", "kind": "fluo"}, {"stem": "c", "kind": "fluo"}, {"stem": "b", "kind": "fluo"},
        {"stem": "d", "kind": "stained"}, {"stem": "e", "kind": "stained"}, {"stem": "f"}]))
    (tmp_path / "splits.json").write_text(json.dumps({"name": "x", "seed": 0, "train": ["c", "a", "d", "f"],
                                                      "val": ["b", "e"]}))
    groups = kinds_split(tmp_path, "kind")
    assert groups == {("fluo", "train"): ["a", "c"], ("fluo", "val"): ["b"],
                      ("stained", "train"): ["d"], ("stained", "val"): ["e"]}
