"""napari_samsp.finetune: losses, prompt simulation, the objective, the loop, model versions and the job API.

Everything runs on the test-sized ``micro`` / ``samunet_micro`` configs and small
synthetic images (bright discs on a dark background) so each test takes seconds.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_samsp.errors import DataLayoutError, InputImageError, SamspError, WeightsError
from napari_samsp.finetune import job as job_module
from napari_samsp.finetune import objective as objective_module
from napari_samsp.finetune.data import Example
from napari_samsp.finetune.job import default_finetune_config, load_training_data, run_finetune
from napari_samsp.finetune.losses import (
    dice_loss,
    distillation_loss,
    focal_loss,
    iou_head_loss,
    mask_iou,
    segmentation_loss,
)
from napari_samsp.finetune.loop import (
    Callbacks,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    configure_trainable,
    encoder_is_frozen,
    train,
)
from napari_samsp.finetune.objective import ObjectiveConfig, SelfPromptObjective
from napari_samsp.finetune.prompts import corrective_clicks, simulate_prompts
from napari_samsp.finetune.versions import ModelVersions
from napari_samsp.models import build_model
from napari_samsp.models.checkpoints import load_model, read_card
from napari_samsp.models.lora import LoRALinear
from napari_samsp.store import AnnotationStore

# ----------------------------------------------------------------------------- synthetic data


def disc_image(rng: np.random.Generator, h: int, w: int, max_discs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A (H, W) uint8 image of bright noisy discs on a dark background and its instance labels."""
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.uint16)
    for k in range(int(rng.integers(1, max_discs + 1))):
        r = rng.uniform(6, 14)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k + 1
    image = np.where(labels > 0, 200.0, 30.0) + rng.normal(0, 10, (h, w))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def disc_examples(n: int, seed: int = 0, domain: str = "discs") -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, lab = disc_image(rng, int(rng.integers(64, 97)), int(rng.integers(64, 97)))
        out.append(Example(np.repeat(img[..., None], 3, -1), lab.astype(np.int32), domain, f"{domain}{i}"))
    return out


def write_disc_layout(root: Path, n: int = 6, seed: int = 0) -> Path:
    """A folder in the fixed data layout: images/<stem>.png and masks/<stem>.png (uint16 labels)."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, lab = disc_image(rng, int(rng.integers(64, 97)), int(rng.integers(64, 97)))
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        Image.fromarray(lab).save(root / "masks" / f"img{i}.png")
    return root


def small_config(**overrides) -> TrainConfig:
    """A TrainConfig that runs a step of ``micro`` in well under a second."""
    base = TrainConfig(
        steps=4,
        batch_size=2,
        lr=1e-3,
        warmup_steps=1,
        trainable=("encoder", "prompt_encoder", "mask_decoder"),
        objective=ObjectiveConfig(num_passes=2, prompts_per_image=1, click_iterations=1),
        val_every=10**6,
        checkpoint_every=10**6,
        seed=0,
    )
    return dataclasses.replace(base, **overrides)


def micro(seed: int = 0, name: str = "micro"):
    torch.manual_seed(seed)
    return build_model(name)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- losses


def _perfect_logits(target: torch.Tensor) -> torch.Tensor:
    return torch.where(target > 0.5, 50.0, -50.0)


def test_segmentation_losses_vanish_for_perfect_logits_and_not_otherwise():
    target = torch.zeros(3, 1, 16, 16)
    target[0, 0, 2:8, 3:9] = 1
    target[1, 0, 10:15, 0:4] = 1  # the third target is empty: perfect means all background
    perfect = _perfect_logits(target)
    for fn in (dice_loss, focal_loss, segmentation_loss):
        assert float(fn(perfect, target)) < 1e-6, fn.__name__
        assert float(fn(-perfect, target)) > 0.1, fn.__name__  # everything wrong
        assert float(fn(torch.zeros_like(target), target)) > 0.01, fn.__name__  # undecided
    # A weight that hides the wrong pixels makes a wrong prediction perfect.
    wrong = perfect.clone()
    wrong[..., :, 12:] = -wrong[..., :, 12:]
    weight = torch.ones_like(target)
    weight[..., :, 12:] = 0
    assert float(segmentation_loss(wrong, target)) > 0.01
    assert float(segmentation_loss(wrong, target, weight)) < 1e-6


def test_distillation_is_zero_for_equal_maps_and_never_trains_the_teacher():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 12, 12) * 3
    assert abs(float(distillation_loss(logits, logits.clone(), "kl"))) < 1e-6
    assert abs(float(distillation_loss(logits, logits.clone(), "kl", temperature=2.0))) < 1e-6

    for kind in ("kl", "dice"):
        student = torch.randn(2, 1, 12, 12, requires_grad=True)
        teacher = torch.randn(2, 1, 12, 12, requires_grad=True)
        loss = distillation_loss(student, teacher, kind)
        assert float(loss.detach()) > 0
        loss.backward()
        assert student.grad is not None and student.grad.abs().sum() > 0, kind
        assert teacher.grad is None, f"{kind}: the teacher received a gradient"
    with pytest.raises(ValueError, match="distillation kind"):
        distillation_loss(logits, logits, "l2")


def test_iou_head_targets_the_actual_mask_iou():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, :4] = 1
    logits = torch.full((2, 1, 8, 8), -5.0)
    logits[0, :, :4] = 5  # perfect
    logits[1, :, :2] = 5  # half of the object
    iou = mask_iou(logits, target)
    assert torch.allclose(iou, torch.tensor([1.0, 0.5]))
    assert float(iou_head_loss(torch.tensor([[1.0], [0.5]]), logits, target)) < 1e-12
    assert float(iou_head_loss(torch.tensor([[0.0], [1.0]]), logits, target)) > 0.1


# ----------------------------------------------------------------------------- prompts


def _object_labels(s: int = 64) -> torch.Tensor:
    labels = torch.zeros(3, s, s, dtype=torch.int64)
    labels[0, 5:20, 8:30] = 1
    labels[0, 40:60, 40:50] = 2
    labels[0, 25:30, 50:62] = 7
    labels[2, 10:12, 10:40] = 3  # image 1 has no object
    return labels


def test_simulate_prompts_shapes_and_boxes_contain_their_object():
    labels = _object_labels()
    s = labels.shape[-1]
    gen = torch.Generator().manual_seed(0)
    batch = simulate_prompts(labels, per_image=2, gen=gen, box_jitter=0.0, points_only_prob=0.0)
    n = 2 + 1  # two of image 0's three objects, the only one of image 2, none of image 1
    assert batch.image_index.tolist() == [0, 0, 2]
    assert batch.targets.shape == (n, 1, s, s)
    assert batch.boxes.shape == (n, 4)
    assert batch.point_coords.shape == (n, 2, 2) and batch.point_labels.shape == (n, 2)
    assert set(batch.point_labels.unique().tolist()) <= {-1, 1}
    for k in range(n):
        target = batch.targets[k, 0] > 0.5
        img = int(batch.image_index[k])
        # the target is exactly one object of its image
        ids = labels[img][target].unique()
        assert len(ids) == 1 and ids.item() > 0 and torch.equal(target, labels[img] == ids.item())
        ys, xs = torch.nonzero(target, as_tuple=True)
        x0, y0, x1, y1 = batch.boxes[k].tolist()
        assert x0 <= xs.min() and y0 <= ys.min() and x1 >= xs.max() + 1 and y1 >= ys.max() + 1
        for (x, y), lab in zip(batch.point_coords[k].tolist(), batch.point_labels[k].tolist()):
            if lab == 1:  # positive points lie on their object
                assert target[int(y), int(x)]

    # With the default jitter boxes stay in the frame and still cover most of their object.
    jittered = simulate_prompts(labels, per_image=3, gen=torch.Generator().manual_seed(1), points_only_prob=0.0)
    assert len(jittered.image_index) == 4
    assert (jittered.boxes >= 0).all() and (jittered.boxes <= s).all()
    assert (jittered.boxes[:, 2:] >= jittered.boxes[:, :2]).all()
    for k in range(len(jittered.image_index)):
        target = jittered.targets[k, 0] > 0.5
        x0, y0, x1, y1 = (int(round(v)) for v in jittered.boxes[k].tolist())
        inside = target[y0:y1, x0:x1].sum()
        assert inside >= 0.5 * target.sum()

    assert simulate_prompts(torch.zeros(2, s, s, dtype=torch.int64), 2, gen) is None

    # Points-only batches (a user's first clicks): no boxes, and every prompt set has a positive point.
    clicks = simulate_prompts(labels, per_image=3, gen=torch.Generator().manual_seed(2), points_only_prob=1.0)
    assert clicks.boxes is None
    assert ((clicks.point_labels == 1).sum(dim=1) >= 1).all()


def test_corrective_clicks_go_to_the_larger_error():
    s = 32
    targets = torch.zeros(3, 1, s, s)
    targets[:, 0, 4:20, 4:20] = 1
    pred = _perfect_logits(targets)
    pred[0, 0, 4:20, 12:20] = -50  # missed half of the object: positive click there
    pred[1, 0, 24:32, 0:32] = 50  # large spurious region: negative click there
    coords, labels = corrective_clicks(pred, targets, torch.Generator().manual_seed(0))
    assert coords.shape == (3, 1, 2) and labels.shape == (3, 1)
    x, y = (int(v) for v in coords[0, 0])
    assert labels[0, 0] == 1 and 4 <= y < 20 and 12 <= x < 20
    x, y = (int(v) for v in coords[1, 0])
    assert labels[1, 0] == 0 and 24 <= y < 32
    assert labels[2, 0] == -1  # perfect prediction: a padding point only


def test_deepest_corrective_clicks_are_the_noc_clicker():
    """With deepest_prob=1 the click is the NoC clicker's: the centre of the thick miss, not the thin sliver."""
    s = 40
    targets = torch.zeros(2, 1, s, s)
    targets[:, 0, 4:36, 4:36] = 1
    pred = _perfect_logits(targets)
    pred[:, 0, 10:20, 10:20] = -50  # a thick 10 x 10 hole (depth 5) ...
    pred[:, 0, 4:36, 30:36] = -50  # ... and a larger but thin 32 x 6 sliver (depth 3)
    coords, labels = corrective_clicks(pred, targets, torch.Generator().manual_seed(0), deepest_prob=1.0)
    for n in range(2):
        x, y = (float(v) for v in coords[n, 0])
        assert labels[n, 0] == 1
        assert 14 <= x <= 16 and 14 <= y <= 16, (x, y)  # the hole's centre (pixel centres + 0.5)
    random_coords, _ = corrective_clicks(pred, targets, torch.Generator().manual_seed(0), deepest_prob=0.0)
    # SAM's clicker is uniform over the error pixels: drawn over many sets it reaches the sliver
    many = corrective_clicks(pred.repeat(25, 1, 1, 1), targets.repeat(25, 1, 1, 1), torch.Generator().manual_seed(1))[0]
    assert (many[:, 0, 0] >= 30).any() and random_coords.shape == coords.shape


# ----------------------------------------------------------------------------- the objective


def _batch(model, n: int = 2, seed: int = 0):
    from napari_samsp.finetune.data import collate, prepare_sample

    return collate([prepare_sample(ex, model.img_size) for ex in disc_examples(n, seed)])


def _grad_norm(params) -> float:
    return float(sum(p.grad.abs().sum() for p in params if p.grad is not None))


def test_objective_losses_finite_and_gradients_reach_decoder_prompt_encoder_and_lora():
    model = micro()
    params = configure_trainable(model, ("lora", "prompt_encoder", "mask_decoder"), lora_rank=2)
    cfg = ObjectiveConfig(num_passes=3, use_points=True, prompts_per_image=2, click_iterations=2)
    losses = SelfPromptObjective(model, cfg)(*_batch(model))
    # "box_out" (the logged outside-the-box fraction) appears when a prompt set had a box
    assert {"seg", "iou", "distill", "prompted", "total"} <= set(losses) <= {"seg", "iou", "distill", "prompted", "total", "box_out"}
    for key, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), key
    assert float(losses["seg"].detach()) > 0 and float(losses["prompted"].detach()) > 0
    losses["total"].backward()
    adapters = [m for m in model.image_encoder.modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == len(model.image_encoder.blocks)
    assert _grad_norm(model.mask_decoder.parameters()) > 0
    assert _grad_norm(model.prompt_encoder.parameters()) > 0
    # B starts at zero, so only B gets a gradient on the first step; A is in the graph too.
    assert all(a.lora_b.grad is not None and a.lora_b.grad.abs().sum() > 0 for a in adapters)
    assert all(a.lora_a.grad is not None for a in adapters)
    # the frozen base weights get nothing
    assert all(a.base.weight.grad is None for a in adapters)
    assert model.image_encoder.patch_embed.proj.weight.grad is None
    trainable = {id(p) for p in params}
    assert all(p.requires_grad == (id(p) in trainable) for p in model.parameters())


def test_objective_trains_the_samunet_branch():
    model = micro(name="samunet_micro")
    params = configure_trainable(model, ("unet", "mask_decoder"))
    assert not encoder_is_frozen(model)  # the branch feeds the encoder output: no embedding cache
    objective = SelfPromptObjective(model, ObjectiveConfig(num_passes=2, prompts_per_image=1))
    batch = _batch(model)
    objective(*batch)["total"].backward()
    # The fusions end in zero-initialised projections: those learn first ...
    assert model.decoder_fusion[-1].weight.grad.abs().sum() > 0
    assert all(f.weight.grad.abs().sum() > 0 for f in model.encoder_fusion)
    assert all(p.grad is not None for p in model.cnn_branch.parameters())
    # ... and after one update the gradient reaches the convolutional branch itself.
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= 0.05 * p.grad.sign()
                p.grad = None
    losses = objective(*batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert _grad_norm(model.cnn_branch.parameters()) > 0
    assert _grad_norm(model.vit_reduce.parameters()) > 0
    assert model.image_encoder.patch_embed.proj.weight.grad is None


def test_unet_decoder_trains_the_decoder_fusion_alone():
    model = micro(name="samunet_micro")
    params = configure_trainable(model, ("unet_decoder", "mask_decoder"))
    fusion = {id(p) for m in (model.decoder_fusion, model.vit_reduce) for p in m.parameters()}
    assert {id(p) for p in params} == fusion | {id(p) for p in model.mask_decoder.parameters()}
    assert not encoder_is_frozen(model)  # the fusion is part of encode(): no feature cache
    objective = SelfPromptObjective(model, ObjectiveConfig(num_passes=2, prompts_per_image=1))
    objective(*_batch(model))["total"].backward()
    assert model.decoder_fusion[-1].weight.grad.abs().sum() > 0
    # the embeddings' side stays frozen: no gradient reaches the branch or the ViT
    assert all(p.grad is None for p in model.cnn_branch.parameters())
    assert all(p.grad is None for m in model.encoder_fusion for p in m.parameters())
    assert model.image_encoder.patch_embed.proj.weight.grad is None


def test_configure_trainable_freezes_the_rest():
    model = micro()
    params = configure_trainable(model, ("mask_decoder",))
    assert {id(p) for p in params} == {id(p) for p in model.mask_decoder.parameters()}
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())
    assert all(p.requires_grad for p in model.mask_decoder.parameters())
    assert encoder_is_frozen(model)

    params = configure_trainable(model, ("lora",), lora_rank=2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(("lora_a", "lora_b")) for n in names)
    assert len(params) == len(names)
    assert not encoder_is_frozen(model)

    with pytest.raises(SamspError, match="unknown trainable parts"):
        configure_trainable(model, ("decoder",))
    with pytest.raises(SamspError, match="nothing to train"):
        configure_trainable(micro(), ("unet",))  # a plain SAM has no SAM-UNet branch


# ----------------------------------------------------------------------------- the loop


def test_train_learns_an_easy_task():
    """Bright discs on a dark background: validation Dice must rise well above the start."""
    # Seeds 0-3 all end near Dice 0.85-0.93 from about 0.2: the margin below is wide.
    model = micro(seed=0)
    cfg = small_config(
        steps=50,
        lr=2e-3,
        warmup_steps=5,
        val_every=25,
        augment=None,
        validate_at_start=True,
        objective=ObjectiveConfig(num_passes=2, prompts_per_image=0),
    )
    seen = []
    result = train(model, disc_examples(8, seed=0), disc_examples(4, seed=10, domain="val"), cfg,
                   Callbacks(on_val=lambda step, m: seen.append((step, m["dice"]))))
    steps = [h["step"] for h in result.state.history]
    assert steps == [0, 25, 50] and [s for s, _ in seen] == steps
    start = result.state.history[0]["dice"]
    best = max(h["dice"] for h in result.state.history[1:])
    assert best > start + 0.3, result.state.history
    assert result.state.best_val == best and result.state.best_step in (25, 50)
    assert result.state.step == 50 and not result.stopped_early
    assert not result.model.training


def test_frozen_encoder_encodes_each_image_variant_once(monkeypatch):
    model = micro()
    calls: list[bytes] = []
    real_encode = model.encode

    def counting_encode(images):
        calls.append(images.detach().numpy().tobytes())
        return real_encode(images)

    monkeypatch.setattr(model, "encode", counting_encode)
    examples = disc_examples(2)
    cfg = small_config(steps=8, batch_size=4, trainable=("mask_decoder", "prompt_encoder"),
                       objective=ObjectiveConfig(num_passes=2, prompts_per_image=0))  # dihedral augmentation on
    result = train(model, examples, (), cfg)
    assert result.state.step == 8
    draws = 8 * 4
    assert 0 < len(calls) <= 2 * 8 < draws  # at most 8 dihedral variants of 2 images
    assert len(set(calls)) == len(calls)  # no (image, variant) was encoded twice


def test_should_cancel_stops_training():
    polls = []

    def should_cancel() -> bool:
        polls.append(1)
        return len(polls) > 2

    steps = []
    with pytest.raises(TrainingCancelled, match="step 2"):
        train(micro(), disc_examples(2), (), small_config(steps=50),
              Callbacks(should_cancel=should_cancel, progress=lambda s, t: steps.append(s)))
    assert steps == [1, 2]


def test_nan_losses_raise_diverged_and_leave_the_weights_untouched(monkeypatch):
    model = micro()
    before = snapshot(model)
    forwards = []
    real_loss = objective_module.segmentation_loss

    def nan_loss(*args, **kwargs):
        forwards.append(1)
        return real_loss(*args, **kwargs) * float("nan")

    monkeypatch.setattr(objective_module, "segmentation_loss", nan_loss)
    cfg = small_config(steps=50, max_bad_steps=3, objective=ObjectiveConfig(num_passes=2, prompts_per_image=0))
    with pytest.raises(TrainingDiverged, match="3 steps"):
        train(model, disc_examples(2), (), cfg)
    assert len(forwards) == 3 * 2  # three steps, one loss per pass
    assert same_weights(before, snapshot(model))  # no update reached the weights (AdamW decay included)


def test_transient_nan_steps_are_skipped_and_training_goes_on(monkeypatch):
    model = micro()
    calls = []
    real_loss = objective_module.segmentation_loss

    def flaky_loss(*args, **kwargs):
        calls.append(1)
        out = real_loss(*args, **kwargs)
        return out * float("nan") if len(calls) <= 4 else out  # the first two steps (2 passes each)

    monkeypatch.setattr(objective_module, "segmentation_loss", flaky_loss)
    losses = []
    cfg = small_config(steps=5, max_bad_steps=3, objective=ObjectiveConfig(num_passes=2, prompts_per_image=0))
    before = snapshot(model)
    result = train(model, disc_examples(2), (), cfg, Callbacks(on_loss=lambda s, d: losses.append(s)))
    assert result.state.step == 5
    assert losses == [3, 4, 5]  # steps 1 and 2 were skipped, the rest trained
    assert not same_weights(before, snapshot(result.model))


def test_resume_continues_from_the_checkpoint(tmp_path, caplog):
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    train_ex, val_ex = disc_examples(3), disc_examples(2, seed=1, domain="val")
    first = train(micro(), train_ex, val_ex, small_config(steps=3), checkpoint_path=ckpt)
    assert first.state.step == 3 and ckpt.is_file()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["state"]["step"] == 3

    steps = []
    with caplog.at_level(logging.INFO, logger="napari_samsp.finetune.loop"):
        second = train(micro(seed=123), train_ex, val_ex, small_config(steps=5), checkpoint_path=ckpt,
                       callbacks=Callbacks(progress=lambda s, t: steps.append(s)))
    assert "resumed" in caplog.text and "at step 3" in caplog.text
    assert steps == [4, 5]  # only the missing steps ran
    assert second.state.step == 5
    assert [h["step"] for h in second.state.history] == [3, 5]  # the first run's validation is kept
    assert torch.load(ckpt, weights_only=True)["state"]["step"] == 5

    # Resuming a finished run trains nothing and returns its best weights.
    steps.clear()
    third = train(micro(seed=7), train_ex, val_ex, small_config(steps=5), checkpoint_path=ckpt,
                  callbacks=Callbacks(progress=lambda s, t: steps.append(s)))
    assert steps == [] and third.state.step == 5
    assert same_weights(snapshot(second.model), snapshot(third.model))


def test_train_refuses_empty_data():
    with pytest.raises(DataLayoutError, match="no training examples"):
        train(micro(), [], (), small_config())
    empty = [Example(ex.image, np.zeros_like(ex.labels), ex.domain, ex.stem) for ex in disc_examples(3)]
    with pytest.raises(InputImageError, match="empty"):
        train(micro(), empty, (), small_config())


# ----------------------------------------------------------------------------- versions and the job API


def job_config(steps: int = 4) -> TrainConfig:
    """The plugin's default recipe, shrunk to run in seconds."""
    return dataclasses.replace(
        default_finetune_config(steps),
        batch_size=2,
        lr=1e-3,
        objective=ObjectiveConfig(num_passes=2, prompts_per_image=1, click_iterations=1),
    )


@pytest.fixture
def store_dir(tmp_path) -> Path:
    store = AnnotationStore(tmp_path / "store")
    rng = np.random.default_rng(3)
    for i in range(5):
        img, lab = disc_image(rng, 72, 88)
        store.add(img, lab, source=f"/data/cells{i}.tif", model_version="base")
    return store.root


def _version_files(versions: ModelVersions) -> list[str]:
    return sorted(p.name for p in versions.dir.iterdir())


def test_run_finetune_adds_activates_and_rolls_back(tmp_path, store_dir):
    base = load_model("micro", device="cpu")
    base_weights = snapshot(base.model)
    versions = ModelVersions(tmp_path / "project")
    assert versions.active() is None and versions.list() == []

    outcome = run_finetune(base, [store_dir], versions, job_config(4))

    info = outcome.version
    assert info.path.is_file() and info.path.parent == versions.dir
    assert [v.version for v in versions.list()] == [info.version]
    assert versions.active().version == info.version
    # the base model is untouched: same weights, no adapters left behind
    assert same_weights(base_weights, snapshot(base.model))
    assert not any(isinstance(m, LoRALinear) for m in base.model.modules())
    card = read_card(info.path)
    assert card["parent"] == base.card["version"]
    assert card["metrics"]["before"]["dice"] == outcome.before["dice"]
    assert card["metrics"]["after"]["dice"] == outcome.after["dice"]
    assert card["steps"] == 4 and card["training_data"][0]["name"] == "store"
    # validation at the start keeps the base weights unless training beat them
    assert outcome.after["dice"] >= outcome.before["dice"]
    loaded = versions.load_active(device="cpu")
    assert loaded is not None and loaded.card["version"] == info.version
    assert loaded.model.config.name == "micro"

    assert versions.rollback() is None  # back to the base model
    assert versions.active() is None
    with pytest.raises(SamspError, match="nothing to roll back"):
        versions.rollback()


def test_rollback_returns_to_the_previous_version(tmp_path):
    versions = ModelVersions(tmp_path / "project")
    model = micro()
    first = versions.add(model, {"parent": None})
    second = versions.add(model, {"parent": first.version})
    assert first.path != second.path and len(versions.list()) == 2
    assert versions.active() is None  # adding does not activate
    versions.activate(first.version)
    versions.activate(second.version)
    assert versions.active().version == second.version
    assert versions.rollback().version == first.version
    assert versions.active().version == first.version
    assert versions.rollback() is None
    with pytest.raises(SamspError, match="no model version"):
        versions.activate("nope")


def test_a_failed_finetune_adds_no_version(tmp_path, store_dir):
    base = load_model("micro", device="cpu")
    versions = ModelVersions(tmp_path / "project")
    kept = versions.add(base.model, {"parent": None})
    versions.activate(kept.version)
    files = _version_files(versions)
    base_weights = snapshot(base.model)

    def boom(step, losses):
        if step == 2:
            raise RuntimeError("boom in the middle of training")

    with pytest.raises(RuntimeError, match="boom"):
        run_finetune(base, [store_dir], versions, job_config(6), Callbacks(on_loss=boom))
    with pytest.raises(TrainingCancelled):
        run_finetune(base, [store_dir], versions, job_config(6), Callbacks(should_cancel=lambda: True))

    real_train = job_module.train
    called = []

    def train_then_fail(*args, **kwargs):
        called.append(1)
        real_train(*args, **kwargs)
        raise RuntimeError("failed after training")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job_module, "train", train_then_fail)
        with pytest.raises(RuntimeError, match="after training"):
            run_finetune(base, [store_dir], versions, job_config(2))
    assert called == [1]
    assert _version_files(versions) == files
    assert versions.active().version == kept.version
    assert same_weights(base_weights, snapshot(base.model))


def test_disk_full_while_saving_adds_no_version(tmp_path, store_dir, monkeypatch):
    from napari_samsp.models import checkpoints

    base = load_model("micro", device="cpu")
    versions = ModelVersions(tmp_path / "project")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", full_disk)
    with pytest.raises(WeightsError, match="No space left"):
        run_finetune(base, [store_dir], versions, job_config(2))
    assert _version_files(versions) == []  # no version, no temporary file
    assert versions.active() is None
    assert not (versions.root / "active.json").exists()


def test_empty_store_is_a_clear_data_error(tmp_path):
    store = AnnotationStore(tmp_path / "empty")
    versions = ModelVersions(tmp_path / "project")
    with pytest.raises(DataLayoutError, match="no images"):
        run_finetune(load_model("micro", device="cpu"), [store.root], versions, job_config(2))
    assert versions.list() == []


def test_store_entry_with_vanished_files_is_skipped(tmp_path, store_dir):
    store = AnnotationStore(store_dir)
    entries = store.entries()
    gone = entries[1]
    gone.image_path.unlink()
    with pytest.warns(UserWarning):
        assert len(store.entries()) == len(entries) - 1
    train_ex, val_ex, _ = load_training_data([store_dir])
    stems = {ex.stem for ex in train_ex + val_ex}
    assert stems == {e.stem for e in entries} - {gone.stem}

    versions = ModelVersions(tmp_path / "project")
    outcome = run_finetune(load_model("micro", device="cpu"), [store_dir], versions, job_config(2))
    assert outcome.version.card["steps"] == 2
    assert sum(d["count"] for d in outcome.version.card["training_data"]) == len(train_ex)


def test_finetune_model_on_samunet_base_keeps_the_base(tmp_path):
    """A deep copy of SAM-UNet keeps its decoder hook bound to the copy, and the base is untouched."""
    from napari_samsp.finetune.job import finetune_model

    data = write_disc_layout(tmp_path / "data", n=4)
    base = load_model("samunet_micro", device="cpu")
    before = snapshot(base.model)
    result = finetune_model(base, [data], job_config(3))
    assert same_weights(before, snapshot(base.model))
    assert result.card["finetune"]["trainable"] == ["lora", "prompt_encoder", "mask_decoder", "unet"]
    hooks = list(result.model.mask_decoder.output_upscaling._forward_hooks.values())
    assert hooks and all(h.__self__ is result.model for h in hooks)
    assert not any(isinstance(m, LoRALinear) for m in result.model.modules())  # merged
    assert result.after["dice"] >= result.before["dice"]


def test_validate_does_not_reward_predicting_nothing_on_empty_truth(monkeypatch):
    """Empty-truth images are reported as a false-positive rate, not averaged into Dice as 1s."""
    import numpy as np
    import torch

    from napari_samsp.finetune import loop
    from napari_samsp.finetune.data import Example
    from napari_samsp.models import build_model
    from napari_samsp.models.sam_sp import PassOutput

    model = build_model("micro").eval()
    s = model.img_size
    low = model.config.low_res_size
    full = np.ones((s, s), np.int32)
    empty = np.zeros((s, s), np.int32)
    image = np.zeros((s, s, 3), np.uint8)
    examples = [Example(image, full, "d", "a"), Example(image, empty, "d", "b"), Example(image, empty, "d", "c")]

    def predict_nothing(self, features, num_passes=None):
        n = len(features)
        return [PassOutput(torch.full((n, 1, low, low), -10.0), torch.zeros(n, 1))]

    monkeypatch.setattr(loop.SamSP, "run_passes", predict_nothing)
    metrics = loop.validate(model, examples, num_passes=1)
    assert metrics["dice/d"] == 0.0  # the one image with foreground was missed entirely
    assert metrics["empty_fp/d"] == 0.0
    assert metrics["dice"] == 0.0


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def test_balanced_sampler_domain_weights_tilt_the_draws():
    from napari_samsp.finetune.data import BalancedSampler

    examples = disc_examples(2, domain="small") + disc_examples(30, seed=1, domain="large")
    balanced = BalancedSampler(examples, seed=0)
    counts = {"small": 0, "large": 0}
    for _ in range(2000):
        counts[balanced.draw().domain] += 1
    # equal per domain whatever the domain's size
    assert abs(counts["small"] - 1000) < 120
    tilted = BalancedSampler(examples, seed=0, domain_weights={"small": 3.0})
    counts = {"small": 0, "large": 0}
    for _ in range(2000):
        counts[tilted.draw().domain] += 1
    assert abs(counts["small"] - 1500) < 120


def test_balanced_sampler_rejects_unknown_or_bad_weights():
    from napari_samsp.finetune.data import BalancedSampler

    examples = disc_examples(3)
    with pytest.raises(ValueError, match="unknown domains"):
        BalancedSampler(examples, domain_weights={"polyps_typo": 2.0})
    with pytest.raises(ValueError, match="not all zero"):
        BalancedSampler(examples, domain_weights={"discs": 0.0})


def test_default_finetune_config_does_not_down_weight_foreground():
    # alpha 0.25 drove fine-tuning on small objects to empty masks (docs/BENCHMARKS.md, the loop)
    assert default_finetune_config(10).objective.focal_alpha < 0


@pytest.mark.parametrize("gain,kept", [(0.004, True), (0.02, False)])
def test_min_gain_keeps_the_starting_weights_unless_clearly_beaten(monkeypatch, gain, kept):
    from napari_samsp.finetune import loop as loop_module

    scores = iter([0.5, 0.5 + gain / 2, 0.5 + gain])  # start, step 2, step 4
    monkeypatch.setattr(loop_module, "validate", lambda *a, **k: {"dice": next(scores)})
    model = micro()
    start = snapshot(model)
    cfg = small_config(steps=4, val_every=2, validate_at_start=True, min_gain=0.01,
                       objective=ObjectiveConfig(num_passes=1, prompts_per_image=0))
    result = loop_module.train(model, disc_examples(2), disc_examples(1, seed=5), cfg)
    assert [h["step"] for h in result.state.history] == [0, 2, 4]
    if kept:
        assert result.state.best_step == 0 and same_weights(start, snapshot(result.model))
    else:
        assert result.state.best_step == 4 and not same_weights(start, snapshot(result.model))
    assert default_finetune_config(10).min_gain > 0


@pytest.mark.parametrize("gain,kept", [(0.0, True), (0.3, False)])
def test_finetune_model_reports_when_it_kept_the_base(tmp_path, monkeypatch, gain, kept):
    from napari_samsp.finetune import loop as loop_module
    from napari_samsp.finetune.job import finetune_model

    calls = {"n": 0}

    def scripted(*args, **kwargs):  # the base's validation first, then every trained step's
        calls["n"] += 1
        return {"dice": 0.5 if calls["n"] <= 2 else 0.5 + gain}

    monkeypatch.setattr(loop_module, "validate", scripted)
    monkeypatch.setattr(job_module, "validate", scripted)
    data = write_disc_layout(tmp_path / "data", n=4)
    base = load_model("micro", device="cpu")
    cfg = dataclasses.replace(job_config(4), val_every=2)
    result = finetune_model(base, [data], cfg)
    assert result.kept_base is kept and result.card["metrics"]["kept_base"] is kept
    assert same_weights(snapshot(base.model), snapshot(result.model)) is kept
