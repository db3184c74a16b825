"""Issue 13, weights and cards: the --trust warning, non-finite weights, tampered cards, the cache key."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_samsp.cli import main
from napari_samsp.errors import WeightsError
from napari_samsp.models import build_model
from napari_samsp.models.checkpoints import CARD_KEY, load_model, save_model
from napari_samsp.predictor import EmbeddingCache, Predictor


def _saved(tmp_path, name="m", seed=0, card=None):
    torch.manual_seed(seed)
    return save_model(build_model("micro"), tmp_path / f"{name}.safetensors", card or {"version": "v1"})


def _rewrite(path, tensors=None, card_edit=None):
    """Rewrite a saved model's tensors and/or card, as someone editing the file would."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    state = load_file(path) if tensors is None else tensors
    card = json.loads(meta[CARD_KEY])
    if card_edit:
        card_edit(card)
    meta[CARD_KEY] = json.dumps(card)
    save_file(state, path, metadata=meta)
    path.with_suffix(".json").unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------- --trust says so plainly, first


class _Payload:
    def __reduce__(self):
        return (exec, ("import os; os.environ['SAMSP_TEST_PAYLOAD_RAN'] = '1'",))


def test_trust_warns_plainly_once_before_the_code_runs(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload()}, path)
    seen = []

    class Spy(logging.Handler):
        def emit(self, record):
            seen.append((record.getMessage(), os.environ.get("SAMSP_TEST_PAYLOAD_RAN")))

    spy = Spy(logging.WARNING)
    logging.getLogger("napari_samsp").addHandler(spy)
    os.environ.pop("SAMSP_TEST_PAYLOAD_RAN", None)
    try:
        with pytest.raises(WeightsError):
            load_model(path, device="cpu", trust=True)
    finally:
        logging.getLogger("napari_samsp").removeHandler(spy)
    assert os.environ.pop("SAMSP_TEST_PAYLOAD_RAN", None) == "1"  # --trust did run it
    warnings_about_code = [(m, ran) for m, ran in seen if "code" in m]
    assert len(warnings_about_code) == 1
    message, ran_before = warnings_about_code[0]
    assert ran_before is None  # said before loading
    assert "run ANY code" in message and "trust" in message


# ----------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("how", ["partly", "all"])
def test_nan_weights_are_refused_naming_the_tensors(tmp_path, how):
    path = _saved(tmp_path)
    state = load_file(path)
    names = sorted(state) if how == "all" else ["mask_decoder.iou_token.weight"]
    for k in names:
        if state[k].is_floating_point():
            state[k] = torch.full_like(state[k], float("nan")) if how == "all" else state[k].index_fill(0, torch.tensor([0]), float("inf"))
    _rewrite(path, tensors=state)
    with pytest.raises(WeightsError, match="NaN or infinite") as exc:
        load_model(path, device="cpu")
    message = str(exc.value)
    assert "\n" not in message
    if how == "partly":
        assert "1 weight tensor holds" in message and "mask_decoder.iou_token.weight" in message
    else:
        assert "more)" in message and len(message) < 400


def test_cli_refuses_nan_weights_with_exit_2(tmp_path, capsys):
    path = _saved(tmp_path)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in load_file(path).items()}
    _rewrite(path, tensors=state)
    img = tmp_path / "a.png"
    from napari_samsp.io import write_png_atomic

    write_png_atomic(img, np.full((32, 32), 7, np.uint8))
    assert main(["segment", str(img), "-o", str(tmp_path / "out"), "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN" in err[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- tampered cards


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: c["config"].update(img_size=131072), "img_size"),
        (lambda c: c["config"].update(encoder_depth=20000), "encoder_depth"),
        (lambda c: c["config"].update(encoder_depth=3, encoder_global_attn_indexes=[1]), "missing keys"),
        (lambda c: (c["config"].update(img_size=256), c.update(input_size=256)), "mis-shaped"),
        (lambda c: c.update(mode="panoptic"), "mode"),
        (lambda c: c.update(num_passes=10**9), "num_passes"),
    ],
)
def test_tampered_card_is_refused_cheaply(tmp_path, edit, words):
    path = _rewrite(_saved(tmp_path), card_edit=edit)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match=words) as exc:
        load_model(path, device="cpu")
    assert time.perf_counter() - t0 < 5  # refused from the header, nothing built
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_cli_refuses_unknown_card_mode_with_exit_2(tmp_path, capsys):
    path = _rewrite(_saved(tmp_path), card_edit=lambda c: c.update(mode="panoptic"))
    img = tmp_path / "a.png"
    from napari_samsp.io import write_png_atomic

    write_png_atomic(img, np.full((32, 32), 7, np.uint8))
    assert main(["segment", str(img), "-o", str(tmp_path / "out"), "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mode" in err[0] and "semantic, instance" in err[0]


# ----------------------------------------------------------------------------- the cache key


def test_cache_is_keyed_on_the_weights_not_only_the_card(tmp_path):
    a = load_model(_saved(tmp_path, "a", seed=0, card={"version": "same"}), device="cpu")
    b = load_model(_saved(tmp_path, "b", seed=1, card={"version": "same"}), device="cpu")
    assert a.model_id == b.model_id == "same"  # the card's claim is unchanged
    cache = EmbeddingCache(tmp_path / "cache")
    image = (np.arange(40 * 50) % 251).astype(np.uint8).reshape(40, 50)
    pa, pb = Predictor(a.model, a.model_id, cache), Predictor(b.model, b.model_id, cache)
    pa.set_image(image)
    pb.set_image(image)
    assert not pb.last_embed_was_cached  # b is not served a's embedding
    fresh = Predictor(b.model, b.model_id, EmbeddingCache(None))
    fresh.set_image(image)
    assert torch.equal(pb.features.embeddings, fresh.features.embeddings)
    # the same weights again do hit the cache
    again = Predictor(load_model(tmp_path / "a.safetensors", device="cpu").model, "same", cache)
    again.set_image(image)
    assert again.last_embed_was_cached
