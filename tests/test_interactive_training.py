"""SAM-style interactive training: first prompts, corrective clicks from the model's own errors,
loss at every iteration, the outside-the-box penalty and the propagation prompt."""

from __future__ import annotations

import pytest
import torch

from napari_samsp.finetune.data import collate, prepare_sample
from napari_samsp.finetune.loop import configure_trainable
from napari_samsp.finetune.losses import box_outside_loss, outside_box_mask
from napari_samsp.finetune.objective import ObjectiveConfig, SelfPromptObjective
from napari_samsp.finetune.prompts import PROMPT_KINDS, simulate_interactive_prompts

from test_finetune import disc_examples, micro


def _batch(model, n: int = 3, seed: int = 0):
    return collate([prepare_sample(ex, model.img_size) for ex in disc_examples(n, seed)])


def _objective(model, **kw) -> SelfPromptObjective:
    cfg = dict(num_passes=2, prompts_per_image=2, click_iterations=3, focal_alpha=-1)
    cfg.update(kw)
    obj = SelfPromptObjective(model, ObjectiveConfig(**cfg))
    obj.record_trace = True
    return obj


def test_first_prompts_of_every_kind_fit_their_object():
    model = micro()
    _, labels, _ = _batch(model, 4)
    low = int(model.prompt_encoder.mask_input_size[0])
    seen = set()
    for seed in range(4):
        b = simulate_interactive_prompts(labels, 3, torch.Generator().manual_seed(seed), low)
        n = len(b.image_index)
        assert b.mask_input.shape == (n, 1, low, low) and b.boxes.shape == (n, 4)
        for k in range(n):
            kind = PROMPT_KINDS[int(b.kind[k])]
            seen.add(kind)
            tgt = b.targets[k, 0] > 0.5
            assert bool(b.has_box[k]) == (kind != "point") and bool(b.has_mask[k]) == (kind == "propagate")
            valid = b.point_labels[k] >= 0
            assert bool(valid.any()) == (kind in ("point", "point+box"))
            for x, y in b.point_coords[k][valid].tolist():
                assert tgt[int(y), int(x)]  # the first click is on the object
            if b.has_box[k]:
                x0, y0, x1, y1 = (int(round(v)) for v in b.boxes[k].tolist())
                assert tgt[y0:y1, x0:x1].sum() >= 0.5 * tgt.sum()
            if kind == "propagate":
                # the dense prompt is a nearby copy of the object: it overlaps it, but is not it
                prev = torch.nn.functional.interpolate(b.mask_input[k : k + 1], tgt.shape, mode="bilinear")[0, 0] > 0
                inter = (prev & tgt).sum()
                assert inter > 0.3 * tgt.sum()
    assert seen == set(PROMPT_KINDS)


def test_corrective_clicks_lie_in_the_error_of_the_models_own_prediction():
    model = micro()
    obj = _objective(model)
    obj(*_batch(model))
    assert len(obj.trace) == 4  # first prompt + 3 corrections
    checked = 0
    for it in obj.trace[:-1]:
        pred = it["logits"].detach()[:, 0] > 0
        tgt = it["targets"][:, 0] > 0.5
        coords, labels = it["clicks"]
        for n in range(len(pred)):
            fn, fp = tgt[n] & ~pred[n], pred[n] & ~tgt[n]
            x, y = (int(v) for v in coords[n, 0])
            if labels[n, 0] == 1:
                assert fn[y, x] and fn.sum() >= fp.sum()
                checked += 1
            elif labels[n, 0] == 0:
                assert fp[y, x] and fp.sum() > fn.sum()
                checked += 1
            else:
                assert not fn.any() and not fp.any()
    assert checked > 0


def test_loss_reaches_every_iteration_and_the_last_one_trains_the_decoder():
    model = micro()
    configure_trainable(model, ("prompt_encoder", "mask_decoder"))
    obj = _objective(model)
    losses = obj(*_batch(model))
    grads = torch.autograd.grad(losses["prompted"], [t["logits"] for t in obj.trace], retain_graph=True)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    last = torch.autograd.grad(obj.trace[-1]["loss"], list(model.mask_decoder.parameters()), allow_unused=True,
                               retain_graph=True)
    assert sum(float(g.abs().sum()) for g in last if g is not None) > 0
    # the total is the prompt-free part plus the prompted loss
    free = losses["seg"] + losses["iou"] + losses["distill"]
    assert torch.allclose(losses["total"], free + losses["prompted"])


def test_box_outside_penalty_is_zero_inside_and_positive_outside():
    s = 32
    boxes = torch.tensor([[8.0, 8.0, 20.0, 20.0]] * 4)
    logits = torch.full((4, 1, s, s), -8.0)
    logits[0, 0, 10:18, 10:18] = 8.0  # inside the box
    logits[1, 0, 10:18, 10:30] = 8.0  # spills far to the right
    logits[2, 0, 10:18, 10:21] = 8.0  # one column past the box: within the margin
    logits[3, 0, 10:18, 10:30] = 8.0  # same spill, but the target covers it
    target = torch.zeros(4, 1, s, s)
    target[3, 0, 10:18, 10:30] = 1
    per = [float(box_outside_loss(logits[i : i + 1], boxes[i : i + 1], target[i : i + 1])) for i in range(4)]
    assert per[0] == 0.0 and per[2] == 0.0 and per[3] == 0.0
    assert 0.3 < per[1] < 0.6  # 8 of the 20 columns lie beyond the grown box (x >= 22)
    out = outside_box_mask(boxes[:1], (s, s))[0, 0]
    assert not out[8:20, 8:20].any() and out[0, 0] and out[25, 25]


@pytest.mark.parametrize("kind", ["box", "propagate"])
def test_a_few_steps_on_a_toy_task_reduce_the_prompted_loss_and_the_spill(kind):
    """Box prompts and the propagation prompt (box + logits of a shifted copy) learn to return the object."""
    model = micro()
    params = configure_trainable(model, ("prompt_encoder", "mask_decoder"))
    probs = tuple(float(k == kind) for k in PROMPT_KINDS)
    obj = _objective(model, click_iterations=1, prompt_kind_probs=probs, box_weight=5.0, prompt_free_weight=0.0)
    batch = _batch(model, 4, seed=3)

    def measure() -> tuple[float, float]:
        obj.gen.manual_seed(123)
        with torch.no_grad():
            losses = obj(*batch)
        return float(losses["prompted"]), float(losses["box_out"])

    before = measure()
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(15):
        loss = obj(*batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = measure()
    assert after[0] < 0.8 * before[0]
    assert after[1] < before[1]


def test_absent_propagation_prompts_lie_on_background_with_empty_targets():
    """With ``absent_prob`` 1 every propagation prompt is moved onto background: empty target, its
    box free of any object, its dense prompt and point (when drawn) inside that box."""
    model = micro()
    _, labels, _ = _batch(model, 4)
    low = int(model.prompt_encoder.mask_input_size[0])
    s = labels.shape[-1]
    absent = with_point = without_mask = 0
    for seed in range(6):
        b = simulate_interactive_prompts(labels, 3, torch.Generator().manual_seed(seed), low, kind_probs=(0, 0, 0, 1),
                                         absent_prob=1.0, propagate_point_prob=0.5, propagate_mask_drop=0.5)
        for k in range(len(b.image_index)):
            fg = labels[int(b.image_index[k])] > 0
            x0, y0, x1, y1 = (int(round(v)) for v in b.boxes[k].tolist())
            if b.targets[k].sum() == 0:
                absent += 1
                assert not fg[y0 : y1 + 1, x0 : x1 + 1].any()
            valid = b.point_labels[k] >= 0
            for x, y in b.point_coords[k][valid].tolist():
                with_point += 1
                assert x0 <= x <= x1 + 1 and y0 <= y <= y1 + 1
            if b.has_mask[k]:
                prev = torch.nn.functional.interpolate(b.mask_input[k : k + 1], (s, s), mode="bilinear")[0, 0] > 0
                ys, xs = torch.nonzero(prev, as_tuple=True)
                assert x0 - 2 <= int(xs.min()) and int(xs.max()) <= x1 + 2
            else:
                without_mask += 1
                assert not b.mask_input[k].any()
    # 6 draws x 4 images with >= 1 object each; a crowded image may find no clear place (then not absent)
    assert absent >= 12 and with_point > 0 and without_mask > 0


def test_absent_option_off_keeps_the_earlier_draws():
    """The new options default to 0 and then draw nothing: the same seed gives the same prompts."""
    model = micro()
    _, labels, _ = _batch(model, 3)
    low = int(model.prompt_encoder.mask_input_size[0])
    a = simulate_interactive_prompts(labels, 3, torch.Generator().manual_seed(3), low)
    b = simulate_interactive_prompts(labels, 3, torch.Generator().manual_seed(3), low, absent_prob=0.0)
    for name in ("targets", "boxes", "point_coords", "mask_input", "has_mask", "kind"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = simulate_interactive_prompts(labels, 3, torch.Generator().manual_seed(3), low, kind_probs=(0, 0, 0, 1),
                                     absent_prob=1.0)
    assert (c.targets.flatten(1).sum(1) == 0).any()  # and the option does change them


def test_absent_prompts_train_toward_empty_masks():
    """A few steps on absent propagation prompts alone lower the predicted foreground there."""
    torch.manual_seed(0)
    model = micro()
    configure_trainable(model, ("prompt_encoder", "mask_decoder"))
    obj = _objective(model, prompt_weight=1.0, prompt_free_weight=0.0, distill_weight=0.0, click_iterations=0,
                     prompt_kind_probs=(0, 0, 0, 1), absent_prob=1.0)
    images, labels, valid = _batch(model, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)

    def foreground() -> float:
        obj.gen.manual_seed(5)
        with torch.no_grad():
            obj(images, labels, valid)
        fg = [float((t["logits"][t["targets"].flatten(1).sum(1) == 0] > 0).float().mean()) for t in obj.trace]
        return fg[0]

    before = foreground()
    for _ in range(15):
        opt.zero_grad()
        obj(images, labels, valid)["total"].backward()
        opt.step()
    assert foreground() < before * 0.5
