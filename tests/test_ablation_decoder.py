"""training/ablation.py --stage decoder: a fresh decoder on the default's frozen encoder, at a tiny budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

import ablation  # noqa: E402

from PIL import Image  # noqa: E402

from napari_samsp.models.checkpoints import load_model  # noqa: E402

ENCODER_PARTS = ("image_encoder", "cnn_branch", "encoder_fusion", "decoder_fusion", "vit_reduce")
DECODER_PARTS = ("mask_decoder", "prompt_encoder")


def _params(model, parts) -> dict[str, torch.Tensor]:
    return {f"{p}.{k}": v for p in parts for k, v in getattr(model, p).state_dict().items()}


def _trainable(model, parts) -> dict[str, torch.Tensor]:
    """Parameters only (not buffers such as the prompt encoder's fixed random Fourier matrix)."""
    return {f"{p}.{k}": v.detach() for p in parts for k, v in getattr(model, p).named_parameters()}


def _disc_set(root: Path, n: int, seed: int) -> Path:
    """A data set in the project layout: ``n`` 64 px images with one bright disc each, split 2/3 : 1/3."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:64, :64]
    stems = []
    for i in range(n):
        cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 16)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.uint8)
        img = (rng.normal(60, 10, (64, 64, 3)) + 120 * mask[..., None]).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
        stems.append(f"s{i}")
    cut = 2 * n // 3
    (root / "splits.json").write_text(json.dumps({"name": root.name, "seed": seed, "train": stems[:cut], "val": stems[cut:]}))
    return root


@pytest.fixture
def fresh_globals(monkeypatch):
    """main() sets module globals (stage, results folder, overrides): restore them after each test."""
    monkeypatch.setattr(ablation, "OVERRIDES", {})
    monkeypatch.setattr(ablation, "STAGE", ablation.STAGE)
    monkeypatch.setattr(ablation, "RUNS", ablation.RUNS)


def test_decoder_stage_model_reinitialises_decoder_and_keeps_encoder():
    base = load_model("default", device="cpu").model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    a = ablation.decoder_stage_model(base, 0)
    again = ablation.decoder_stage_model(base, 0)
    other = ablation.decoder_stage_model(base, 1)
    enc_base, enc_a = _params(base, ENCODER_PARTS), _params(a, ENCODER_PARTS)
    assert enc_base and all(torch.equal(enc_base[k], enc_a[k]) for k in enc_base)
    dec_base, dec_a = _trainable(base, DECODER_PARTS), _trainable(a, DECODER_PARTS)
    # fresh weights: every trained decoder / prompt-encoder parameter differs
    assert all(not torch.equal(dec_base[k], dec_a[k]) for k in dec_base)
    dec_a = _params(a, DECODER_PARTS)
    # seeded: the same seed gives the same decoder, another seed another one
    assert all(torch.equal(v, _params(again, DECODER_PARTS)[k]) for k, v in dec_a.items())
    assert any(not torch.equal(v, _params(other, DECODER_PARTS)[k]) for k, v in dec_a.items())
    # the base model itself is untouched
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_decoder_stage_runs_two_variants_and_reports_paired_differences(tmp_path, fresh_globals):
    data = [str(_disc_set(tmp_path / "discs_a", 6, 0)), str(_disc_set(tmp_path / "discs_b", 6, 1))]
    runs = tmp_path / "runs"
    ablation.main(["--stage", "decoder", "--runs", str(runs), "--only", "k2_ref", "k1", "--set", "steps=3",
                   "--set", "train_limit=2", "--set", "val_limit=2", "--set", f"data={json.dumps(data)}"])
    ref = json.loads((runs / "k2_ref" / "results.json").read_text())
    k1 = json.loads((runs / "k1" / "results.json").read_text())
    for res in (ref, k1):
        assert set(res["datasets"]) == {"discs_a", "discs_b"}
        assert all(len(d["per_image_dice"]) == 2 and d["n"] == 2 for d in res["datasets"].values())
        assert res["train"]["steps"] == 3 and res["config"]["stage"] == "decoder"
        assert res["config"]["objective"]["prompt_weight"] == 0.0
        assert res["settings"]["noc_objects"] == 0 and res["settings"]["box_images"] == 0
    assert k1["config"]["objective"]["num_passes"] == 1 and ref["config"]["objective"]["num_passes"] == 2
    # two train images per set, encoded once by the first variant and reused by the second
    assert ref["train"]["images_encoded"] == 4 and k1["train"]["images_encoded"] == 0
    base = load_model("default", device="cpu").model
    trained = load_model(str(runs / "k2_ref" / "model.safetensors"), device="cpu").model
    enc_base, enc_t = _params(base, ENCODER_PARTS), _params(trained, ENCODER_PARTS)
    assert all(torch.equal(enc_base[k], enc_t[k].to(enc_base[k].dtype)) for k in enc_base)
    dec_base, dec_t = _trainable(base, DECODER_PARTS), _trainable(trained, DECODER_PARTS)
    assert all(not torch.equal(dec_base[k], dec_t[k].to(dec_base[k].dtype)) for k in dec_base)
    table = (runs / "table.md").read_text()
    assert "`k1`" in table and "Δ mean (vs `k2_ref`)" in table
    rows = table.splitlines()
    assert len({r.count("|") for r in rows}) == 1  # header, separator and rows have the same columns
    mean, se, n = ablation.paired_difference(k1, ref, "discs_a")
    assert n == 2
    diffs = [k1["datasets"]["discs_a"]["per_image_dice"][s] - ref["datasets"]["discs_a"]["per_image_dice"][s]
             for s in ref["datasets"]["discs_a"]["per_image_dice"]]
    assert mean == pytest.approx(np.mean(diffs))
    # a finished variant is skipped: the second call trains nothing and leaves its results as they were
    stamp = (runs / "k2_ref" / "results.json").stat().st_mtime_ns
    ablation.main(["--stage", "decoder", "--runs", str(runs), "--only", "k2_ref", "--set", f"data={json.dumps(data)}"])
    assert (runs / "k2_ref" / "results.json").stat().st_mtime_ns == stamp


def test_only_rejects_a_variant_of_the_other_stage(fresh_globals, tmp_path):
    with pytest.raises(SystemExit):
        ablation.main(["--stage", "decoder", "--runs", str(tmp_path), "--only", "unet_baseline"])


def test_evaluation_pairs_of_either_split(tmp_path):
    """``common.val_pairs(split=...)``: the validation stems by default, the training stems for
    choosing an inference setting without looking at the validation images."""
    import common

    root = _disc_set(tmp_path / "discs", 9, seed=0)
    splits = json.loads((root / "splits.json").read_text())
    assert [p.stem for p in common.val_pairs(root)] == sorted(splits["val"])
    assert [p.stem for p in common.val_pairs(root, split="train")] == sorted(splits["train"])
    assert len(common.val_pairs(root, 2, split="train")) == 2
