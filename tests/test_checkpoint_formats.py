"""Checkpoint formats users bring: MedSAM, micro-sam, wrapped state dicts, wrapper prefixes.

Each file is written with random weights (a small SAM from upstream's own modules) the way
that project writes it:

* MedSAM released weights (``utils/ckpt_convert.py``): a flat SAM state dict, as official SAM.
* MedSAM training checkpoint (``train_one_gpu.py``): ``{'model': medsam.state_dict(),
  'optimizer': optimizer.state_dict(), 'epoch': e}``; multi-GPU runs prefix ``module.``.
* micro-sam ``export_custom_sam_model``: the SAM state dict with the ``sam.`` prefix removed,
  flat, or with ``with_segmentation_decoder=True``: ``{'model_state': ..., 'decoder_state': ...}``.
* micro-sam / torch_em training checkpoint: ``{'model_state': {'sam.*': ...}, 'optimizer_state': ...,
  'init': {... the model's constructor arguments, pickled objects ...}, ...}``: needs trust.
* Lightning-style ``{'state_dict': {'model.*': ...}}`` and ``{'model_state_dict': ...}``.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import pytest
import torch
from _upstream_models import upstream_sam

from napari_samsp.errors import WeightsError
from napari_samsp.models.checkpoints import load_model
from napari_samsp.transforms import SAM_PREPROCESSING


@pytest.fixture(scope="module")
def sam():
    return upstream_sam("micro", seed=3)


def _prefixed(state, prefix: str) -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in state.items())


def _adam_state(model: torch.nn.Module) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.image_encoder.patch_embed.proj.weight.sum().backward()
    opt.step()
    opt.zero_grad()
    return opt.state_dict()


def _fake_unetr_decoder_state() -> OrderedDict:
    """Tensors shaped like micro-sam's UNETR decoder (its keys; random values)."""
    g = torch.Generator().manual_seed(0)
    return OrderedDict(
        (k, torch.randn(*shape, generator=g))
        for k, shape in [
            ("decoder.blocks.0.block.0.block.0.weight", (64, 128, 3, 3)),
            ("decoder.samplers.0.conv.weight", (128, 64, 2, 2)),
            ("base.block.0.block.0.weight", (128, 64, 3, 3)),
            ("out_conv.weight", (3, 64, 1, 1)),
            ("out_conv.bias", (3,)),
        ]
    )


def _assert_same_weights(loaded, sam) -> None:
    ours = loaded.model.state_dict()
    ref = sam.state_dict()
    assert set(ref) <= set(ours)
    assert all(torch.equal(ours[k], v) for k, v in ref.items())
    assert loaded.card["preprocessing"] == SAM_PREPROCESSING
    assert loaded.model.preprocessing == SAM_PREPROCESSING
    assert loaded.card["config"]["name"] == "micro"


# name -> (builder of the saved object, substring of the detected format, needs trust)
FORMATS = {
    "medsam_release": (lambda s, m: OrderedDict(s), "plain SAM state dict", False),
    "medsam_training": (lambda s, m: {"model": dict(s), "optimizer": _adam_state(m), "epoch": 3}, "wrapped under 'model'", False),
    "medsam_training_multi_gpu": (
        lambda s, m: {"model": _prefixed(s, "module."), "optimizer": _adam_state(m), "epoch": 3},
        "prefix 'module.' stripped",
        False,
    ),
    "micro_sam_export": (lambda s, m: OrderedDict(s), "plain SAM state dict", False),
    "micro_sam_export_with_decoder": (
        lambda s, m: {"model_state": OrderedDict(s), "decoder_state": _fake_unetr_decoder_state()},
        "micro-sam checkpoint ('model_state' + 'decoder_state')",
        False,
    ),
    "micro_sam_training": (
        lambda s, m: {
            "model_state": _prefixed(s, "sam."),
            "optimizer_state": _adam_state(m),
            "iteration": 100,
            "init": {"model_class": "micro_sam.training.trainable_sam.TrainableSAM",
                     "model_kwargs": {"args": argparse.Namespace(n_iterations=8)}},
        },
        "micro-sam checkpoint ('model_state'), prefix 'sam.' stripped",
        True,
    ),
    "lightning_state_dict": (lambda s, m: {"state_dict": _prefixed(s, "model."), "epoch": 1}, "wrapped under 'state_dict'", False),
    "model_state_dict": (lambda s, m: {"model_state_dict": dict(s), "epoch": 1}, "wrapped under 'model_state_dict'", False),
    "ddp_flat": (lambda s, m: _prefixed(s, "module."), "prefix 'module.' stripped", False),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_loads_strictly(name, sam, tmp_path, recwarn):
    build, detected, needs_trust = FORMATS[name]
    trainable = upstream_sam("micro", seed=3).train()  # the optimizer's model (weights identical to ``sam``)
    path = tmp_path / f"{name}.pt"
    torch.save(build(sam.state_dict(), trainable), path)
    if needs_trust:
        with pytest.raises(WeightsError, match="pickled Python objects.*--trust") as exc:
            load_model(str(path), device="cpu")
        assert "\n" not in str(exc.value)
    loaded = load_model(str(path), device="cpu", trust=needs_trust)
    _assert_same_weights(loaded, sam)
    assert detected in loaded.card["origin"], loaded.card["origin"]


def test_micro_sam_decoder_is_reported(sam, tmp_path):
    path = tmp_path / "vit_b_lm_like.pt"
    torch.save({"model_state": OrderedDict(sam.state_dict()), "decoder_state": _fake_unetr_decoder_state()}, path)
    with pytest.warns(UserWarning, match=r"ignored decoder_state \(micro-sam's instance-segmentation decoder\): 5 tensors"):
        loaded = load_model(str(path), device="cpu")
    assert "decoder_state" in loaded.card["ignored"]


def test_same_masks_as_the_plain_file(sam, tmp_path):
    """A wrapped file gives the model the flat file gives: same weights, same predictions."""
    import numpy as np

    from napari_samsp.predictor import Predictor

    flat, wrapped = tmp_path / "flat.pth", tmp_path / "wrapped.pt"
    torch.save(sam.state_dict(), flat)
    torch.save({"model_state": _prefixed(sam.state_dict(), "sam."), "decoder_state": _fake_unetr_decoder_state()}, wrapped)
    image = (np.random.default_rng(0).random((90, 140)) * 255).astype(np.uint8)
    out = []
    for path in (flat, wrapped):
        with pytest.warns(UserWarning) if path is wrapped else _nullcontext():
            loaded = load_model(str(path), device="cpu")
        p = Predictor(loaded.model, loaded.model_id, None)
        p.set_image(image)
        out.append(p.predict(box=np.array([20, 10, 110, 80])).logits)
    np.testing.assert_array_equal(out[0], out[1])


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize(
    "name,make,expect",
    [
        ("micro_sam_truncated", lambda s: {"model_state": OrderedDict(list(s.items())[:-3]), "decoder_state": _fake_unetr_decoder_state()},
         r"^micro-sam checkpoint \('model_state' \+ 'decoder_state'\): weights in .* do not fit model 'micro'.*3 missing keys"),
        ("medsam_wrong_shape", lambda s: {"model": {**s, "mask_decoder.iou_token.weight": torch.zeros(1, 7)}, "epoch": 1},
         r"^SAM state dict wrapped under 'model': .*mis-shaped keys \(mask_decoder.iou_token.weight"),
        ("plain_not_sam", lambda s: {"encoder.weight": torch.zeros(3, 3)},
         r"^plain SAM state dict .*: not a SAM checkpoint"),
        ("micro_sam_not_sam", lambda s: {"model_state": {"encoder.weight": torch.zeros(3, 3)}},
         r"^micro-sam checkpoint \('model_state'\): not a SAM checkpoint"),
    ],
)
def test_mismatch_is_one_line_naming_the_format(name, make, expect, sam, tmp_path):
    path = tmp_path / f"{name}.pt"
    torch.save(make(sam.state_dict()), path)
    with pytest.raises(WeightsError, match=expect) as exc:
        load_model(str(path), device="cpu")
    assert "\n" not in str(exc.value)


def test_refusal_names_the_objects_on_torch_without_the_scanner(sam, tmp_path, monkeypatch):
    """torch < 2.5 has no ``get_unsafe_globals_in_checkpoint``: the refusal still names the pickled objects."""
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint", raising=False)
    path = tmp_path / "training.pt"
    torch.save({"model_state": OrderedDict(sam.state_dict()), "init": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(WeightsError, match=r"pickled Python objects \(argparse.Namespace\).*--trust"):
        load_model(str(path), device="cpu")
