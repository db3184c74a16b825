"""Prompt simulation for training, so the self-prompting model also serves clicks and boxes.

For a few ground-truth objects per image: a jittered box and/or positive points,
then (optionally) corrective clicks placed in the largest error, as an annotator
would, with the previous logits fed back as the mask prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..boxes import box_edges, mask_to_box


@dataclass
class PromptBatch:
    """N simulated prompt sets over B images (input frame).

    Attributes:
        image_index: (N,) image of each prompt set.
        targets: (N, 1, S, S) float object masks.
        boxes: (N, 4) or None.
        point_coords: (N, P, 2) or None; point_labels: (N, P) with -1 for padding.
    """

    image_index: torch.Tensor
    targets: torch.Tensor
    boxes: torch.Tensor | None
    point_coords: torch.Tensor | None
    point_labels: torch.Tensor | None


def _random_pixel(mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(x, y) + 0.5 of a uniformly random True pixel of a (S, S) mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    i = int(torch.randint(len(ys), (1,), generator=gen))
    return torch.stack([xs[i], ys[i]]).float() + 0.5


def _box(mask: torch.Tensor) -> torch.Tensor:
    """(4,) continuous extent (x0, y0, x1 + 1, y1 + 1) of a non-empty (S, S) mask (:func:`napari_samsp.boxes.box_edges`)."""
    return torch.from_numpy(box_edges(mask_to_box(mask.cpu().numpy()))).to(mask.device)


def simulate_prompts(
    labels: torch.Tensor,
    per_image: int,
    gen: torch.Generator,
    box_jitter: float = 0.1,
    max_points: int = 2,
    points_only_prob: float = 0.3,
) -> PromptBatch | None:
    """Sample up to ``per_image`` objects per image and a prompt set for each.

    One draw per call decides whether this batch has boxes: with probability
    ``points_only_prob`` it has none (every prompt set gets at least one point),
    which is how a user's first clicks reach the model at inference. Otherwise
    each prompt set has a jittered box and, sometimes, points.

    Args:
        labels: (B, S, S) int64 instance labels in the input frame.
    Returns:
        None when no image has an object.
    """
    b, s, _ = labels.shape
    points_only = float(torch.rand(1, generator=gen)) < points_only_prob
    idx, targets, boxes, coords, plabels = [], [], [], [], []
    for i in range(b):
        ids = torch.unique(labels[i])
        ids = ids[ids > 0]
        if len(ids) == 0:
            continue
        pick = ids[torch.randperm(len(ids), generator=gen)[:per_image]]
        for obj in pick.tolist():
            m = labels[i] == obj
            box = _box(m)
            size = (box[2:] - box[:2]).repeat(2)
            box = (box + torch.randn(4, generator=gen) * box_jitter * size).clamp(0, s)
            box = torch.stack([torch.minimum(box[0], box[2]), torch.minimum(box[1], box[3]),
                               torch.maximum(box[0], box[2]), torch.maximum(box[1], box[3])])
            with_points = points_only or float(torch.rand(1, generator=gen)) < 0.5
            n_pts = int(torch.randint(1, max_points + 1, (1,), generator=gen)) if with_points else 0
            pts = torch.zeros(max_points, 2)
            lab = torch.full((max_points,), -1, dtype=torch.int64)
            for p in range(n_pts):
                pts[p] = _random_pixel(m, gen)
                lab[p] = 1
            idx.append(i)
            targets.append(m.float())
            boxes.append(box)
            coords.append(pts)
            plabels.append(lab)
    if not idx:
        return None
    return PromptBatch(
        image_index=torch.tensor(idx),
        targets=torch.stack(targets)[:, None],
        boxes=None if points_only else torch.stack(boxes),
        point_coords=torch.stack(coords),
        point_labels=torch.stack(plabels),
    )


def corrective_clicks(
    pred_logits: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, deepest_prob: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per prompt set where the error is: (N, 1, 2) coords and (N, 1) labels.

    The click goes to a random pixel of the larger error type (missed foreground
    -> positive, spurious foreground -> negative), SAM's training clicker; or, with
    probability ``deepest_prob``, to the pixel deepest inside the deepest error region
    (:func:`napari_samsp.metrics.next_click`, the RITM clicker that NoC is measured with,
    which targets thick misses rather than boundary slivers). No error -> padding point.

    Args:
        pred_logits: (N, 1, S, S) logits of the current prediction; targets: (N, 1, S, S) masks.
    """
    from ..metrics import next_click

    pred = pred_logits[:, 0] > 0
    tgt = targets[:, 0] > 0.5
    coords = torch.zeros(len(pred), 1, 2)
    labels = torch.full((len(pred), 1), -1, dtype=torch.int64)
    # drawn only when used, so recipes without it keep their exact random stream
    deepest = torch.rand(len(pred), generator=gen) < deepest_prob if deepest_prob > 0 else torch.zeros(len(pred), dtype=torch.bool)
    for n in range(len(pred)):
        fn = tgt[n] & ~pred[n]
        fp = pred[n] & ~tgt[n]
        if fn.sum() == 0 and fp.sum() == 0:
            continue
        if deepest[n]:
            r, c, positive = next_click(tgt[n].numpy(), pred[n].numpy())  # type: ignore[misc]
            coords[n, 0] = torch.tensor([c + 0.5, r + 0.5])  # pixel centre, as _random_pixel
        else:
            positive = bool(fn.sum() >= fp.sum())
            coords[n, 0] = _random_pixel(fn if positive else fp, gen)
        labels[n, 0] = int(positive)
    return coords, labels


# --------------------------------------------------------------------------- interactive training

#: First-prompt kinds of :func:`simulate_interactive_prompts`, in the order of ``kind_probs``.
PROMPT_KINDS = ("point", "box", "point+box", "propagate")


@dataclass
class InteractiveBatch:
    """N first prompts over B images for interactive (SAM-style) training, in the input frame.

    Attributes:
        image_index: (N,) image of each prompt set.
        targets: (N, 1, S, S) float object masks.
        kind: (N,) index into :data:`PROMPT_KINDS`.
        boxes: (N, 4) x0, y0, x1, y1; rows without a box hold zeros.
        has_box: (N,) bool.
        point_coords: (N, P, 2) (x, y); point_labels: (N, P), 1 / 0 / -1 padding.
        mask_input: (N, 1, L, L) low-res logits of the propagation prompt (zeros elsewhere).
        has_mask: (N,) bool, True for propagation prompts.
    """

    image_index: torch.Tensor
    targets: torch.Tensor
    kind: torch.Tensor
    boxes: torch.Tensor
    has_box: torch.Tensor
    point_coords: torch.Tensor
    point_labels: torch.Tensor
    mask_input: torch.Tensor
    has_mask: torch.Tensor


def _human_point(mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(x, y) + 0.5 of an object pixel drawn with probability proportional to its depth.

    People click inside, away from the boundary, but not exactly at the centre: the
    weight is the pixel's distance to the object's edge (scipy's Euclidean transform).
    """
    from scipy import ndimage

    dt = torch.from_numpy(ndimage.distance_transform_edt(mask.numpy()).astype("float32")).flatten()
    i = int(torch.multinomial(dt / dt.sum(), 1, generator=gen))
    s = mask.shape[-1]
    return torch.tensor([i % s, i // s], dtype=torch.float32) + 0.5


def _jitter_box(box: torch.Tensor, s: int, gen: torch.Generator, jitter: float) -> torch.Tensor:
    """A box moved as a person draws it: each side by N(0, jitter * side length), at most 2 sigma."""
    size = (box[2:] - box[:2]).repeat(2)
    noise = (torch.randn(4, generator=gen).clamp(-2, 2) * jitter * size)
    box = (box + noise).clamp(0, s)
    return torch.stack([torch.minimum(box[0], box[2]), torch.minimum(box[1], box[3]),
                        torch.maximum(box[0], box[2]), torch.maximum(box[1], box[3])])


def perturbed_mask(mask: torch.Tensor, gen: torch.Generator, shift: float = 0.1, max_radius: int = 3) -> torch.Tensor:
    """The object as a neighbouring slice / frame might show it: shifted, dilated or eroded.

    Args:
        mask: (S, S) bool object.
        shift: largest shift as a fraction of the object's box side.
        max_radius: largest dilation / erosion radius in pixels.
    Returns:
        (S, S) bool; never empty (an erosion that would erase the object is skipped).
    """
    from scipy import ndimage

    ys, xs = torch.nonzero(mask, as_tuple=True)
    side = torch.stack([xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]).float()
    d = ((torch.rand(2, generator=gen) * 2 - 1) * shift * side).round().long().tolist()
    m = torch.roll(mask, shifts=(d[1], d[0]), dims=(0, 1)).numpy()
    r = int(torch.randint(-max_radius, max_radius + 1, (1,), generator=gen))
    if r > 0:
        m = ndimage.binary_dilation(m, iterations=r)
    elif r < 0:
        eroded = ndimage.binary_erosion(m, iterations=-r)
        m = eroded if eroded.any() else m
    out = torch.from_numpy(m)
    return out if out.any() else mask.clone()


def _absent_placement(prev: torch.Tensor, foreground: torch.Tensor, gen: torch.Generator,
                      tries: int = 20) -> torch.Tensor | None:
    """``prev`` (S, S) bool moved to a random place whose grown box holds no ``foreground`` pixel.

    The slice after an object's end as propagation sees it: the previous mask's prompts over
    background. Returns None when none of ``tries`` random placements is clear (crowded images).
    """
    ys, xs = torch.nonzero(prev, as_tuple=True)
    s = prev.shape[-1]
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    grow = max(3, int(0.2 * float(prev.sum()) ** 0.5) + 1)
    h, w = y1 - y0 + 2 * grow, x1 - x0 + 2 * grow
    if h >= s or w >= s:
        return None
    for _ in range(tries):
        ty = int(torch.randint(0, s - h + 1, (1,), generator=gen))
        tx = int(torch.randint(0, s - w + 1, (1,), generator=gen))
        if not foreground[ty : ty + h, tx : tx + w].any():
            return torch.roll(prev, shifts=(ty + grow - y0, tx + grow - x0), dims=(0, 1))
    return None


def mask_logits_low_res(mask: torch.Tensor, low_res: int, magnitude: float = 8.0) -> torch.Tensor:
    """(S, S) bool -> (1, L, L) dense-prompt logits: area fraction mapped to [-magnitude, magnitude]."""
    import torch.nn.functional as F

    frac = F.interpolate(mask[None, None].float(), (low_res, low_res), mode="area")[0]
    return (frac * 2 - 1) * magnitude


def _propagation_prompt(
    m: torch.Tensor,
    foreground: torch.Tensor,
    gen: torch.Generator,
    low_res: int,
    mask_logit: float,
    absent_prob: float,
    point_prob: float,
    mask_drop: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, torch.Tensor | None]:
    """One ``propagate`` first prompt for the (S, S) bool object ``m`` (see :func:`simulate_interactive_prompts`).

    With ``absent_prob`` it is *absent*: the previous slice's object is moved onto background
    (:func:`_absent_placement`) and the target is empty, as on the slice after an object's last
    one -- without such prompts a model learns that the propagation prompt always holds an object
    and carries it on past its end. ``point_prob`` adds a positive point at the previous mask's
    innermost pixel and ``mask_drop`` drops the logits, so the prompt sets
    :func:`~napari_samsp.interactive.propagate_object` sends (box; box + point) are trained too.

    Returns:
        (target (S, S) bool -- empty when absent, box (4,), logits (1, L, L), whether the logits
        are sent, the positive point (2,) (x, y) or None).
    """
    from ..interactive import innermost_pixel, mask_box

    target = m
    prev = perturbed_mask(m, gen)
    if absent_prob > 0 and float(torch.rand(1, generator=gen)) < absent_prob:
        moved = _absent_placement(prev, foreground, gen)
        if moved is not None:
            prev, target = moved, torch.zeros_like(m)
    area = float(prev.sum())
    box = torch.from_numpy(box_edges(mask_box(prev.numpy(), margin=max(2.0, 0.1 * area**0.5))))
    low = mask_logits_low_res(prev, low_res, mask_logit)
    point = None
    if point_prob > 0 and float(torch.rand(1, generator=gen)) < point_prob:
        r, c = innermost_pixel(prev.numpy())  # type: ignore[misc]
        point = torch.tensor([c + 0.5, r + 0.5])
    has_mask = True
    if mask_drop > 0 and float(torch.rand(1, generator=gen)) < mask_drop:
        low, has_mask = torch.zeros(1, low_res, low_res), False
    return target, box, low, has_mask, point


def simulate_interactive_prompts(
    labels: torch.Tensor,
    per_image: int,
    gen: torch.Generator,
    low_res: int,
    kind_probs: tuple[float, ...] = (0.35, 0.25, 0.2, 0.2),
    box_jitter: float = 0.1,
    mask_logit: float = 8.0,
    absent_prob: float = 0.0,
    propagate_point_prob: float = 0.0,
    propagate_mask_drop: float = 0.0,
) -> InteractiveBatch | None:
    """First prompts of up to ``per_image`` objects per image, one kind drawn per object.

    ``point``: one click, drawn ∝ depth inside the object (:func:`_human_point`); ``box``: the
    object's box jittered by ``box_jitter`` of its sides (SAM's 10 %); ``point+box``: both;
    ``propagate``: what :func:`napari_samsp.interactive.propagate_object` sends from the
    previous slice -- the box (grown by 10 % of sqrt(area), at least 2 px) and low-res logits
    of a shifted / dilated / eroded copy of the object.

    ``absent_prob``, ``propagate_point_prob``, ``propagate_mask_drop``: see :func:`_propagation_prompt`
    (the defaults, 0, keep the earlier draws).

    Args:
        labels: (B, S, S) int64 instance labels in the input frame.
        low_res: side L of the decoder's low-res logits (the mask-prompt size).
    Returns:
        None when no image has an object.
    """
    b, s, _ = labels.shape
    probs = torch.tensor(kind_probs, dtype=torch.float64)
    if len(probs) != len(PROMPT_KINDS) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"kind_probs needs {len(PROMPT_KINDS)} non-negative weights for {PROMPT_KINDS}")
    rows: dict[str, list] = {k: [] for k in ("idx", "tgt", "kind", "box", "hasbox", "pts", "lab", "mask", "hasmask")}
    for i in range(b):
        ids = torch.unique(labels[i])
        ids = ids[ids > 0]
        if len(ids) == 0:
            continue
        for obj in ids[torch.randperm(len(ids), generator=gen)[:per_image]].tolist():
            m = labels[i] == obj
            kind = int(torch.multinomial(probs, 1, generator=gen))
            name = PROMPT_KINDS[kind]
            box = torch.zeros(4)
            pts = torch.zeros(1, 2)
            lab = torch.full((1,), -1, dtype=torch.int64)
            low = torch.zeros(1, low_res, low_res)
            if name in ("point", "point+box"):
                pts[0] = _human_point(m, gen)
                lab[0] = 1
            if name in ("box", "point+box"):
                box = _jitter_box(_box(m), s, gen, box_jitter)
            target, has_mask = m, False
            if name == "propagate":
                target, box, low, has_mask, point = _propagation_prompt(
                    m, labels[i] > 0, gen, low_res, mask_logit, absent_prob, propagate_point_prob, propagate_mask_drop)
                if point is not None:
                    pts[0], lab[0] = point, 1
            for key, value in zip(rows, (i, target.float(), kind, box, name != "point", pts, lab, low, has_mask)):
                rows[key].append(value)
    if not rows["idx"]:
        return None
    return InteractiveBatch(
        image_index=torch.tensor(rows["idx"]),
        targets=torch.stack(rows["tgt"])[:, None],
        kind=torch.tensor(rows["kind"]),
        boxes=torch.stack(rows["box"]),
        has_box=torch.tensor(rows["hasbox"]),
        point_coords=torch.stack(rows["pts"]),
        point_labels=torch.stack(rows["lab"]),
        mask_input=torch.stack(rows["mask"]),
        has_mask=torch.tensor(rows["hasmask"]),
    )
