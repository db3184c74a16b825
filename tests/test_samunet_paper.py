"""The paper's SAM-UNet against the repository's own code (Hhankyangg/sam-unet).

The repository's modules are imported from a checkout (``SAMUNET_REPO``: a folder
holding ``sam_unet/``) or extracted from the local mirror of its git snapshot
(``SAMUNET_MIRROR``); the tests skip with the reason when neither is there. Its
models get random weights (every tensor, BatchNorm statistics included), are saved
exactly as its training script saves them (``{'model': state_dict, 'optimizer':
Adam}``), loaded by our loader with ``trust=True`` strictly, and our Predictor's
masks are compared with the repository's own inference path (its resize, its
normalise-then-pad ``preprocess``, ``postprocess_masks`` and threshold 0).

Tolerances (float32 on CPU, one thread): low-resolution logits agree to
``LOGIT_ATOL + LOGIT_RTOL * max|logit|``; masks on the original grid to IoU >= 0.99.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_samsp.errors import WeightsError
from napari_samsp.models import build_model
from napari_samsp.models.checkpoints import load_model, load_samunet_checkpoint
from napari_samsp.models.sam_unet_paper import PREPROCESSING, SamUNetPaper
from napari_samsp.predictor import Predictor

LOGIT_ATOL = 1e-3
LOGIT_RTOL = 1e-4
MIN_IOU = 0.99

_MIRROR = Path(os.environ.get("SAMUNET_MIRROR", "/work/.mirror/Hhankyangg+sam-unet/repo"))


def _repo_checkout(tmp_root: Path) -> Path:
    env = os.environ.get("SAMUNET_REPO")
    if env:
        root = Path(env)
        if not (root / "sam_unet" / "models" / "sam_unet_model.py").is_file():
            pytest.skip(f"SAMUNET_REPO={env} does not hold sam_unet/models/sam_unet_model.py")
        return root
    if not _MIRROR.is_dir():
        pytest.skip(f"no SAM-UNet repository: set SAMUNET_REPO to a checkout of Hhankyangg/sam-unet (mirror {_MIRROR} absent)")
    archive = subprocess.run(
        ["git", "-C", str(_MIRROR), "archive", "HEAD", "sam_unet"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"cannot read the SAM-UNet mirror {_MIRROR}: {archive.stderr.decode(errors='replace').strip()}")
    tmp_root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(tmp_root)], input=archive.stdout, check=True)
    return tmp_root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The repository's own classes and functions, imported unchanged."""
    root = _repo_checkout(tmp_path_factory.mktemp("samunet_repo"))
    saved = {k: v for k, v in sys.modules.items() if k == "sam_unet" or k.startswith("sam_unet.")}
    # sam_unet/__init__.py is a setuptools ``setup()`` call, not package code: running it
    # would parse pytest's argv. The package object is made without it; every module
    # below it (model, ResNet, SAM parts, utils) is the repository's own file, unchanged.
    pkg = types.ModuleType("sam_unet")
    pkg.__path__ = [str(root / "sam_unet")]
    sys.modules["sam_unet"] = pkg
    try:
        model_mod = importlib.import_module("sam_unet.models.sam_unet_model")
        build_sam = importlib.import_module("sam_unet.models.segment_anything.build_sam")
        utils = importlib.import_module("sam_unet.utils.utils")
    except ImportError as exc:
        pytest.skip(f"cannot import the SAM-UNet repository's modules: {exc}")
    yield SimpleNamespace(SAM_UNET=model_mod.SAM_UNET, build_sam=build_sam, utils=utils)
    for k in [k for k in sys.modules if k == "sam_unet" or k.startswith("sam_unet.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random values for every tensor: constant-initialised ones (positional tables,
    norms, biases, BatchNorm statistics) get noise, so a mis-wired tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.mul_(0.5 + torch.rand(t.shape, generator=gen))
            elif t.numel() == 1 or float(t.std()) == 0.0:
                t.add_(0.1 * noise)


def _repo_model(repo, resnet: int, small_vit: bool, seed: int):
    """The repository's SAM_UNET with random weights: vit_b at 256 px, or a narrow ViT of the same layout."""
    torch.manual_seed(seed)
    if small_vit:
        sam = repo.build_sam._build_sam(
            encoder_embed_dim=96, encoder_depth=12, encoder_num_heads=2, encoder_global_attn_indexes=[2, 5, 8, 11],
            image_size=256, window_size=8,
        )
    else:
        sam = repo.build_sam.sam_model_registry["vit_b_256"](None)
    model = repo.SAM_UNET(resnet_type=resnet, ori_sam=sam, is_resnet_pretrained_or_not=False)
    _randomise(model, seed)
    return model.eval()


def _save_like_training_script(model: torch.nn.Module, path: Path) -> Path:
    """What train_on_single_gpu.py writes: the float state dict and the Adam object itself."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.save({"model": model.float().state_dict(), "optimizer": optimizer}, path)
    return path


def _repo_infer(repo, model, rgb: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The repository's test path: TestingDataset's resize and box transform, then ``SAM_UNET.infer``.

    Returns the mask (H, W) bool on the original grid and the (L, L) low-resolution logits.
    """
    t = repo.utils.ResizeLongestSide(256)
    image = torch.as_tensor(t.apply_image(rgb)).permute(2, 0, 1).contiguous().float()
    boxes = t.apply_boxes_torch(torch.as_tensor(box, dtype=torch.float)[None], rgb.shape[:2]).float()
    record = {"image": image, "original_size": rgb.shape[:2], "boxes": boxes, "point_coords": None, "point_labels": None}
    out = model.infer([record])[0]
    return out["masks"][0, 0].numpy(), out["low_res_logits"][0, 0].numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    """A non-square (200, 300) RGB image with a bright ellipse, and the ellipse's box."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:200, :300]
    inside = ((yy - 90) / 45.0) ** 2 + ((xx - 170) / 70.0) ** 2 <= 1
    img = 40 + 0.3 * xx[..., None] + rng.normal(0, 12, (200, 300, 3))
    img[inside] += np.array([140, 90, 60])
    ys, xs = np.nonzero(inside)
    return np.clip(img, 0, 255).astype(np.uint8), np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _real(repo, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """HC18 ultrasound 000_HC (384 x 259, gray read as RGB like cv2.imread) and the repository's box of its mask."""
    from PIL import Image

    rgb = np.asarray(Image.open(data_root / "hc18_fetal_head_us" / "images" / "000_HC.png").convert("RGB"))
    mask = np.asarray(Image.open(data_root / "hc18_fetal_head_us" / "masks" / "000_HC.png"))
    mask = (mask > 0).astype(np.int64)
    box = repo.utils.get_boxes_from_mask(mask, max_pixel=0)[0].numpy()
    return rgb, box.astype(np.float32)


def _compare(repo, repo_model, loaded, rgb: np.ndarray, box: np.ndarray) -> tuple[float, float]:
    """(max |logit difference|, mask IoU) of our Predictor vs the repository's infer, same image and box."""
    with torch.inference_mode():
        ref_mask, ref_logits = _repo_infer(repo, repo_model, rgb, box)
    pred = Predictor(loaded.model, loaded.model_id)
    pred.set_image(rgb)
    ours = pred.predict(box=box)
    assert ours.masks.shape == (1, *rgb.shape[:2]) and ours.logits.shape == (1, *ref_logits.shape)
    diff = float(np.abs(ours.logits[0] - ref_logits).max())
    scale = float(np.abs(ref_logits).max())
    assert diff <= LOGIT_ATOL + LOGIT_RTOL * scale, f"logits differ by {diff} (scale {scale})"
    # Random weights must still give a real mask, or IoU would be vacuous.
    assert 0.01 < ref_mask.mean() < 0.99, f"degenerate reference mask (foreground {ref_mask.mean():.3f})"
    iou = _iou(ours.masks[0], ref_mask)
    assert iou >= MIN_IOU, f"mask IoU {iou}"
    return diff, iou


@pytest.fixture(scope="module")
def vit_b_r50(repo, tmp_path_factory):
    """The training script's default (ResNet-50, vit_b, 256 px), saved as it saves it, and our load of it."""
    model = _repo_model(repo, 50, small_vit=False, seed=1)
    path = _save_like_training_script(model, tmp_path_factory.mktemp("r50") / "epoch1_sam_unet.pth")
    loaded = load_model(path, device="cpu", trust=True)
    return model, path, loaded


@pytest.fixture(scope="module")
def small_r34(repo, tmp_path_factory):
    """A narrow-ViT ResNet-34 model of the repository (same code, cheaper), saved like the training script."""
    model = _repo_model(repo, 34, small_vit=True, seed=2)
    path = _save_like_training_script(model, tmp_path_factory.mktemp("r34") / "epoch3_sam_unet.pth")
    return model, path


def test_vit_b_r50_loads_strictly_and_records_preprocessing(vit_b_r50):
    model, _, loaded = vit_b_r50
    assert isinstance(loaded.model, SamUNetPaper)
    assert loaded.model.config.name == "samunet_paper_r50" and loaded.model.config.resnet == 50
    ours = loaded.model.state_dict()
    theirs = model.state_dict()
    # strict: as many tensors as the repository saved, each one used, value for value
    assert len(ours) == len(theirs) == 661
    from napari_samsp.models.sam_unet_paper import repo_key_to_ours

    for key, value in theirs.items():
        assert torch.equal(ours[repo_key_to_ours(key)], value), key
    assert loaded.card["preprocessing"] == PREPROCESSING == "sam" and loaded.model.preprocessing == "sam"
    assert "SAM-UNet repository" in loaded.card["origin"]


def test_vit_b_r50_masks_match_repo_on_real_image(repo, vit_b_r50, data_root):
    model, _, loaded = vit_b_r50
    rgb, box = _real(repo, data_root)
    assert rgb.shape[0] != rgb.shape[1]
    diff, iou = _compare(repo, model, loaded, rgb, box)
    print(f"vit_b/r50 real HC18 000_HC: max|dlogit| {diff:.2e}, IoU {iou:.5f}")


def test_vit_b_r50_masks_match_repo_on_synthetic_image(repo, vit_b_r50):
    model, _, loaded = vit_b_r50
    rgb, box = _synthetic()
    diff, iou = _compare(repo, model, loaded, rgb, box)
    print(f"vit_b/r50 synthetic: max|dlogit| {diff:.2e}, IoU {iou:.5f}")


def test_resnet34_is_told_from_resnet50_and_matches_repo(repo, small_r34, vit_b_r50):
    model, path = small_r34
    loaded = load_model(path, device="cpu", trust=True)
    assert loaded.model.config.resnet == 34 and vit_b_r50[2].model.config.resnet == 50
    assert loaded.model.resnet.channels == (64, 128, 256, 512)
    assert loaded.model.config.encoder_embed_dim == 96 and loaded.model.config.window_size == 8
    assert len(loaded.model.state_dict()) == len(model.state_dict())
    rgb, box = _synthetic()
    _compare(repo, model, loaded, rgb, box)
    # the documented entry point for SAM-UNet checkpoints takes the same strict path
    again = load_samunet_checkpoint(path, trust=True)
    assert isinstance(again, SamUNetPaper) and again.config == loaded.model.config


def test_without_trust_it_is_refused_in_one_line(small_r34):
    _, path = small_r34
    with pytest.raises(WeightsError) as err:
        load_model(path, device="cpu")
    text = str(err.value)
    assert "\n" not in text and "--trust" in text and "Adam" in text
    with pytest.raises(WeightsError, match="trust=True"):
        load_samunet_checkpoint(path)


def test_truncated_and_misfit_checkpoints_give_readable_errors(repo, small_r34, tmp_path):
    model, path = small_r34
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        load_model(cut, device="cpu", trust=True)

    state = dict(model.state_dict())
    del state["adapters_bridge.1.0.weight"]
    state["mask_decoder.med_token.weight"] = torch.zeros(1, 128)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    bad = tmp_path / "bad.pth"
    torch.save({"model": state}, bad)  # tensors only: readable without trust
    with pytest.raises(WeightsError) as err:
        load_model(bad, device="cpu")
    text = str(err.value)
    assert "\n" not in text and "ResNet-34" in text
    assert "mis-shaped keys (mask_decoder.med_token.weight file [1, 128] vs model [1, 256])" in text
    assert "1 missing keys (our names: adapters_bridge.1.0.weight)" in text
    assert "1 unexpected keys (mask_decoder.iou_token.weight)" in text


def test_small_member_runs_through_predictor_autoseg_and_our_format(tmp_path):
    """A small family member (narrow ViT + ResNet-18) works through the same interfaces,
    and round-trips through our safetensors format (its config names the ResNet)."""
    import dataclasses

    from napari_samsp.autoseg import segment_image
    from napari_samsp.models.build import MODEL_CONFIGS

    cfg = dataclasses.replace(
        MODEL_CONFIGS["samunet_paper_r34"], name="paper_micro", resnet=18, encoder_embed_dim=64, encoder_depth=4,
        encoder_num_heads=2, encoder_global_attn_indexes=(0, 1, 2, 3), img_size=128, prompt_embed_dim=64,
        decoder_mlp_dim=128,
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rgb, box = _synthetic()
    pred = Predictor(model, "paper-micro")
    pred.set_image(rgb)
    one = pred.predict(box=box, multimask_output=True)
    assert one.masks.shape == (1, 200, 300) and 0.0 <= float(one.scores[0]) <= 1.0
    res = segment_image(pred, rgb, mode="instance", num_passes=2)
    assert res.labels.shape == (200, 300) and res.labels.dtype == np.uint16

    from napari_samsp.models.checkpoints import save_model

    saved = save_model(model, tmp_path / "paper_micro.safetensors", {"preprocessing": PREPROCESSING})
    again = load_model(saved, device="cpu")
    assert isinstance(again.model, SamUNetPaper) and again.model.config == cfg
    pred2 = Predictor(again.model, again.model_id)
    pred2.set_image(rgb)
    assert np.array_equal(pred2.predict(box=box).logits, one.logits)


def test_from_official_sam_matches_repo_initialisation(repo, tmp_path):
    """Building from official SAM weights resizes the position tables as the repository does."""
    from segment_anything import sam_model_registry

    from napari_samsp.models.sam_unet_paper import from_official_sam

    torch.manual_seed(4)
    official = sam_model_registry["vit_b"]()
    _randomise(official, 4)  # position tables start at zero: give them values to interpolate
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(official.state_dict(), path)
    theirs = repo.build_sam.sam_model_registry["vit_b_256"](str(path)).state_dict()
    ours = from_official_sam(str(path), resnet=34).state_dict()
    assert ours["image_encoder.pos_embed"].shape == (1, 16, 16, 768)
    assert ours["image_encoder.blocks.2.attn.rel_pos_h"].shape == (31, 64)
    for key, value in theirs.items():
        assert torch.allclose(ours[key], value, atol=1e-6), key
    with pytest.raises(WeightsError, match="not official SAM vit_b weights"):
        state = official.state_dict()
        del state["image_encoder.neck.0.weight"]
        torch.save(state, tmp_path / "partial.pth")
        from_official_sam(str(tmp_path / "partial.pth"))


def test_cli_segments_with_trust_and_refuses_without(small_r34, tmp_path, capsys):
    """``samsp segment --model <repo checkpoint>``: exit 2 with one line and nothing written without
    ``--trust``; with it, a label image of the input's size."""
    from PIL import Image

    from napari_samsp.cli import main

    _, path = small_r34
    rgb, _ = _synthetic()
    Image.fromarray(rgb).save(tmp_path / "img.png")
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "img.png"), "-o", str(out), "--model", str(path), "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--trust" in err
    assert not out.exists() or not any(out.iterdir())
    code = main(["segment", str(tmp_path / "img.png"), "-o", str(out), "--model", str(path), "--trust", "--threads", "1"])
    capsys.readouterr()
    assert code == 0
    labels = np.asarray(Image.open(out / "img.png"))
    assert labels.shape == rgb.shape[:2]
