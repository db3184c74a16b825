"""Checkpoint I/O: official SAM files, SAM-UNet training checkpoints, our safetensors format,
the trust boundary around pickles, atomic writes and the ``load_model`` entry point."""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import pickle

import pytest
import torch

from napari_samsp.errors import SamspError, WeightsError
from napari_samsp.models import SamUNet, build_model
from napari_samsp.models import checkpoints as ckpt
from napari_samsp.models.lora import LoRALinear, apply_lora


def _assert_same_tensors(expected: dict[str, torch.Tensor], model: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    got = model.state_dict()
    assert set(expected) == {k for k in got if not k.startswith(skip)}
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def _run(model, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a fixed image and decode one point: the model's whole forward path."""
    size = size or model.img_size
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, size, size, generator=gen)
    with torch.no_grad():
        feats = model.encode(images)
        return model.decode(feats, torch.tensor([[[size / 3, size / 2]]]), torch.tensor([[1]]))


def _save_official(model: torch.nn.Module, path: pathlib.Path) -> pathlib.Path:
    # Official SAM files are a plain dict of tensors, saved with torch.save.
    torch.save(model.state_dict(), path)
    return path


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- (a) official vit_b


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    """The one vit_b build of this file: random weights saved the way official checkpoints are."""
    torch.manual_seed(0)
    model = build_model("vit_b")
    path = tmp_path_factory.mktemp("official") / "sam_vit_b_random.pth"
    state = model.state_dict()
    torch.save(state, path)
    yield path, state
    path.unlink()


def test_official_vit_b_infers_config_and_loads_exactly(vit_b_file):
    path, state = vit_b_file
    assert "pixel_mean" not in state and all(k.split(".")[0] in {"image_encoder", "prompt_encoder", "mask_decoder"} for k in state)
    model = ckpt.load_official_sam(path)
    assert model.config.name == "vit_b" and model.img_size == 1024
    assert not model.training
    _assert_same_tensors(state, model)


def test_official_vit_b_loads_into_samunet(vit_b_file):
    path, state = vit_b_file
    model = ckpt.load_official_sam(path, "samunet_vit_b")
    assert isinstance(model, SamUNet)
    _assert_same_tensors(state, model, skip=ckpt.UNET_BRANCH_PREFIXES)
    # The branch is kept as built: its zero-initialised fusions make it compute plain SAM.
    assert all(torch.count_nonzero(p) == 0 for p in model.encoder_fusion.parameters())


def test_official_micro_into_samunet_computes_plain_sam(micro_model, tmp_path):
    path = _save_official(micro_model, tmp_path / "micro.pth")
    inferred = ckpt.load_official_sam(path)
    assert inferred.config.name == "micro"
    # Pre-1.6 torch.save (not a zip) is still read with weights_only.
    legacy = tmp_path / "legacy.pth"
    torch.save(micro_model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    _assert_same_tensors(micro_model.state_dict(), ckpt.load_official_sam(legacy))
    unet = ckpt.load_official_sam(path, "samunet_micro")
    for a, b in zip(_run(micro_model), _run(unet)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- (b) wrong architecture


def test_wrong_architecture_lists_misshaped_keys(micro_model, tmp_path):
    path = _save_official(micro_model, tmp_path / "micro.pth")
    with pytest.raises(WeightsError) as excinfo:
        ckpt.load_official_sam(path, "tiny")
    message = _one_line_error(excinfo)
    assert "mis-shaped keys" in message and "missing keys" in message
    assert "'tiny'" in message and "looks like a 'micro' checkpoint" in message
    assert "more" in message  # long lists are truncated with a count


def test_unknown_architecture_asks_for_config_name(micro_model, tmp_path):
    state = micro_model.state_dict()
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(40, 3, 8, 8)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="pass config_name"):
        ckpt.load_official_sam(path)


# --------------------------------------------------------------------------- (c) position-table resizing


def test_resize_to_other_img_size_gives_working_model(micro_model, tmp_path):
    with torch.no_grad():
        # A ramp along H only: catches interpolation over the wrong axis.
        ramp = torch.arange(16, dtype=torch.float32).view(1, 16, 1, 1)
        micro_model.image_encoder.pos_embed.copy_(ramp.expand(1, 16, 16, 64))
        micro_model.image_encoder.blocks[1].attn.rel_pos_h.fill_(0.25)
    path = _save_official(micro_model, tmp_path / "micro.pth")

    same = ckpt.load_official_sam(path, "micro")
    assert torch.equal(same.image_encoder.pos_embed, micro_model.image_encoder.pos_embed)

    model = ckpt.load_official_sam(path, "micro", img_size=256)
    assert model.img_size == 256 and model.config.img_size == 256
    pos = model.image_encoder.pos_embed
    assert pos.shape == (1, 32, 32, 64)
    assert torch.allclose(pos, pos[:, :, :1, :1].expand_as(pos))  # constant across W and channels
    assert bool((pos[0, 1:, 0, 0] >= pos[0, :-1, 0, 0] - 1e-5).all()) and pos[0, -1, 0, 0] > pos[0, 0, 0, 0] + 10
    rel = model.image_encoder.blocks[1].attn.rel_pos_h
    assert rel.shape == (63, 32) and torch.allclose(rel, torch.full_like(rel, 0.25))
    assert model.image_encoder.blocks[0].attn.rel_pos_h.shape == (7, 32)  # windowed: unchanged

    feats = model.encode(torch.zeros(1, 3, 256, 256))
    assert feats.embeddings.shape == (1, 32, 32, 32)
    logits, iou = _run(model)
    assert logits.shape == (1, 1, 128, 128) and torch.isfinite(logits).all() and iou.shape == (1, 1)

    with pytest.raises(WeightsError, match="multiple of the patch size"):
        ckpt.load_official_sam(path, "micro", img_size=100)


# --------------------------------------------------------------------------- (d) malicious pickles


class _Payload:
    """Unpickling this creates ``marker``: stands in for arbitrary code execution."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _write_payload(path: pathlib.Path, marker: pathlib.Path, style: str) -> None:
    obj = {"image_encoder.pos_embed": torch.zeros(1), "x": _Payload(marker)}
    if style == "zip":
        torch.save(obj, path)
    elif style == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("style", ["zip", "legacy", "raw-pickle"])
def test_malicious_pickle_is_never_executed(tmp_path, style):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    _write_payload(path, marker, style)

    with pytest.raises(WeightsError) as excinfo:
        ckpt.load_official_sam(path)
    assert "pickled Python objects" in _one_line_error(excinfo) and "--trust" in str(excinfo.value)
    with pytest.raises(WeightsError, match="pickled Python objects"):
        ckpt.load_model(str(path))
    with pytest.raises(WeightsError, match="trust=True"):
        ckpt.load_samunet_checkpoint(path, "samunet_micro")
    assert not marker.exists()

    # The payload is live: a plain unpickle does run it (so its absence above means something).
    if style == "raw-pickle":
        with open(path, "rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- (e) SAM-UNet training checkpoints


def _samunet_micro() -> SamUNet:
    torch.manual_seed(3)
    model = build_model("samunet_micro").eval()
    with torch.no_grad():
        # Non-zero fusions, so a load that skipped them would be noticed.
        for p in model.encoder_fusion.parameters():
            p.normal_()
    return model


def _repo_checkpoint(model: torch.nn.Module, path: pathlib.Path, with_objects: bool) -> pathlib.Path:
    """What the SAM-UNet repository saves: DataParallel keys, optimizer state, often the argparse args."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    payload = {
        "model": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "epoch": 7,
    }
    if with_objects:
        payload["args"] = argparse.Namespace(lr=1e-4, batch_size=2)
    torch.save(payload, path)
    return path


def test_samunet_checkpoint_needs_trust(tmp_path):
    source = _samunet_micro()
    path = _repo_checkpoint(source, tmp_path / "samunet_epoch7.pth", with_objects=True)

    with pytest.raises(WeightsError) as excinfo:
        ckpt.load_samunet_checkpoint(path, "samunet_micro")
    message = _one_line_error(excinfo)
    assert "argparse.Namespace" in message and "arbitrary code" in message and "trust=True" in message
    with pytest.raises(WeightsError, match="--trust"):
        ckpt.load_model(path)

    model = ckpt.load_samunet_checkpoint(path, "samunet_micro", trust=True)
    _assert_same_tensors(source.state_dict(), model)

    loaded = ckpt.load_model(path, device="cpu", trust=True)
    assert loaded.model.config.name == "samunet_micro" and not loaded.is_random
    assert loaded.model_id == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    _assert_same_tensors(source.state_dict(), loaded.model)


def test_safe_training_checkpoint_loads_without_trust_and_reports_misfits(tmp_path):
    source = _samunet_micro()
    path = _repo_checkpoint(source, tmp_path / "plain.pth", with_objects=False)
    model = ckpt.load_samunet_checkpoint(path, "samunet_micro")  # weights_only suffices
    _assert_same_tensors(source.state_dict(), model)
    # Our SAM-UNet saved as a flat dict: the inferred config keeps the branch.
    flat = _save_official(source, tmp_path / "flat.pth")
    _assert_same_tensors(source.state_dict(), ckpt.load_official_sam(flat))

    # A plain SAM training checkpoint into SAM-UNet: the branch is reported as missing.
    torch.manual_seed(0)
    plain = build_model("micro")
    torch.save({"model": plain.state_dict(), "extra.weight": torch.zeros(1), "epoch": 1}, tmp_path / "sam.pth")
    with pytest.warns(UserWarning, match=r"missing \(left at initialisation: cnn_branch"):
        model = ckpt.load_samunet_checkpoint(tmp_path / "sam.pth", "samunet_micro")
    _assert_same_tensors(plain.state_dict(), model, skip=ckpt.UNET_BRANCH_PREFIXES)


# --------------------------------------------------------------------------- (f) safetensors round trip


def test_safetensors_round_trip_is_exact(micro_model, tmp_path):
    card = {
        "mode": "instance",
        "num_passes": 3,
        "parent": "0" * 32,
        "training_data": [{"name": "dsb2018_nuclei", "count": 12}],
        "steps": 40,
        "metrics": {"dice": 0.81},
    }
    path = ckpt.save_model(micro_model, tmp_path / "m.safetensors", card)
    assert path == tmp_path / "m.safetensors"
    sidecar = tmp_path / "m.json"
    assert sidecar.is_file()

    model, loaded_card = ckpt.load_safetensors_model(path)
    _assert_same_tensors(micro_model.state_dict(), model)
    for a, b in zip(_run(micro_model), _run(model)):
        assert torch.equal(a, b)

    assert loaded_card == ckpt.read_card(path) == json.loads(sidecar.read_text())
    assert {k: loaded_card[k] for k in card} == card
    assert loaded_card["format"] == "samsp-1" and loaded_card["input_size"] == 128
    assert len(loaded_card["version"]) == 32 and int(loaded_card["version"], 16) >= 0
    assert loaded_card["config"] == json.loads(json.dumps(micro_model.config.to_dict()))
    assert model.config == micro_model.config

    sidecar.unlink()  # the metadata alone carries the card
    assert ckpt.read_card(path) == loaded_card

    loaded = ckpt.load_model(path)
    assert loaded.model_id == loaded_card["version"] and not loaded.is_random and loaded.source == str(path)


def test_safetensors_round_trip_samunet(tmp_path):
    source = _samunet_micro()
    path = ckpt.save_model(source, tmp_path / "u.safetensors", {"version": "abc123"})
    model, card = ckpt.load_safetensors_model(path)
    assert isinstance(model, SamUNet) and card["version"] == "abc123"
    _assert_same_tensors(source.state_dict(), model)


def test_lora_model_is_saved_merged_without_touching_caller(micro_model, tmp_path):
    adapters = apply_lora(micro_model.image_encoder, rank=2)
    with torch.no_grad():
        for a in adapters:
            a.lora_b.normal_(std=0.05)  # B starts at zero: make the update real
    keys_before = set(micro_model.state_dict())
    expected = _run(micro_model)

    path = ckpt.save_model(micro_model, tmp_path / "lora.safetensors", {})
    assert set(micro_model.state_dict()) == keys_before
    assert sum(isinstance(m, LoRALinear) for m in micro_model.modules()) == len(adapters)

    model, _ = ckpt.load_safetensors_model(path)
    assert not any("lora" in k for k in model.state_dict())
    for a, b in zip(expected, _run(model)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- (g) atomic writes


def test_failed_save_keeps_previous_file_and_leaves_no_temp(micro_model, tmp_path, monkeypatch):
    path = ckpt.save_model(micro_model, tmp_path / "m.safetensors", {"version": "first"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")  # half-written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    with torch.no_grad():
        micro_model.image_encoder.pos_embed.add_(1.0)
    with pytest.raises(WeightsError, match="No space left on device") as excinfo:
        ckpt.save_model(micro_model, path, {"version": "second"})
    _one_line_error(excinfo)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert ckpt.read_card(path)["version"] == "first"

    with pytest.raises(WeightsError):
        ckpt.save_model(micro_model, tmp_path / "new.safetensors", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


def test_save_rejects_other_suffix_and_bad_card(micro_model, tmp_path):
    with pytest.raises(WeightsError, match=".safetensors"):
        ckpt.save_model(micro_model, tmp_path / "m.pth", {})
    with pytest.raises(ValueError, match="mode"):
        ckpt.save_model(micro_model, tmp_path / "m.safetensors", {"mode": "panoptic"})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- (h) damaged files


def test_missing_empty_and_corrupt_files(micro_model, tmp_path):
    good = _save_official(micro_model, tmp_path / "good.pth")
    data = good.read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(bytes(range(256)) * 4)
    saved = ckpt.save_model(micro_model, tmp_path / "m.safetensors", {})
    st = saved.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[: len(st) - 100])

    cases = {
        "missing.pth": "not found",
        "empty.pth": "empty",
        "truncated.pth": "corrupt or truncated",
        "garbage.pth": "corrupt or truncated",
        "cut.safetensors": "corrupt or truncated",
    }
    for name, expected in cases.items():
        path = tmp_path / name
        loaders = [ckpt.load_model] + ([ckpt.load_official_sam] if name.endswith(".pth") else [ckpt.load_safetensors_model])
        for loader in loaders:
            with pytest.raises(WeightsError) as excinfo:
                loader(path)
            message = _one_line_error(excinfo)
            assert expected in message and name in message, (name, loader.__name__, message)

    with pytest.raises(WeightsError, match="not a weights file"):
        ckpt.load_model(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        ckpt.read_card(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- (i, j) load_model resolution


def test_load_model_default_absent_and_present(micro_model, tmp_path, monkeypatch):
    real = ckpt.load_model(None, device="cpu")
    assert real.is_random == (not ckpt.DEFAULT_WEIGHTS.is_file())
    assert not real.model.training

    monkeypatch.setattr(ckpt, "DEFAULT_WEIGHTS", tmp_path / "default.safetensors")
    absent = ckpt.load_model()
    assert absent.is_random and absent.card["random"] is True
    assert absent.model.config.name == "tiny" and absent.model_id == "random-tiny-seed0"
    assert absent.source == "random:tiny"

    ckpt.save_model(micro_model, tmp_path / "default.safetensors", {"version": "v1"})
    present = ckpt.load_model()
    assert not present.is_random and present.model_id == "v1" and present.model.config.name == "micro"
    by_name = ckpt.load_model("default")  # the name `samsp models` lists
    assert by_name.model_id == "v1" and by_name.source == present.source


def test_random_models_are_deterministic_and_leave_rng_alone():
    state = torch.get_rng_state()
    a = ckpt.load_model("micro")
    b = ckpt.load_model("micro")
    assert torch.equal(torch.get_rng_state(), state)
    assert a.is_random and a.model_id == "random-micro-seed0" and a.model.device.type == "cpu"
    _assert_same_tensors(a.model.state_dict(), b.model)


def test_load_model_names(micro_model, tmp_path):
    with pytest.raises(WeightsError) as excinfo:
        ckpt.load_model("nonesuch")
    message = _one_line_error(excinfo)
    assert "unknown model 'nonesuch'" in message and "micro" in message and "vit_b" in message

    with pytest.raises(WeightsError, match="vit_b needs the official checkpoint file: pass its path"):
        ckpt.load_model("vit_b")

    path = _save_official(micro_model, tmp_path / "sam_micro.pth")
    loaded = ckpt.load_model(str(path))
    assert not loaded.is_random and loaded.model.config.name == "micro"
    assert loaded.model_id == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert loaded.card["version"] == loaded.model_id
    _assert_same_tensors(micro_model.state_dict(), loaded.model)


def test_resolve_device():
    assert ckpt.resolve_device("cpu") == torch.device("cpu")
    assert ckpt.resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(SamspError, match="unknown device"):
        ckpt.resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(SamspError, match="CUDA is not available"):
            ckpt.resolve_device("cuda")
    if not ckpt._mps_available():
        with pytest.raises(SamspError, match="MPS is not available"):
            ckpt.resolve_device("mps")
