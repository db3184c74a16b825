"""Prompt simulation for training, so the self-prompting model also serves clicks and boxes.

For a few ground-truth objects per image: a jittered box and/or positive points,
then (optionally) corrective clicks placed in the largest error, as an annotator
would, with the previous logits fed back as the mask prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


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


def corrective_clicks(pred_logits: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per prompt set where the error is: (N, 1, 2) coords and (N, 1) labels.

    The click goes to a random pixel of the larger error type (missed foreground
    -> positive, spurious foreground -> negative); no error -> padding point.
    """
    pred = pred_logits[:, 0] > 0
    tgt = targets[:, 0] > 0.5
    coords = torch.zeros(len(pred), 1, 2)
    labels = torch.full((len(pred), 1), -1, dtype=torch.int64)
    for n in range(len(pred)):
        fn = tgt[n] & ~pred[n]
        fp = pred[n] & ~tgt[n]
        if fn.sum() == 0 and fp.sum() == 0:
            continue
        positive = bool(fn.sum() >= fp.sum())
        coords[n, 0] = _random_pixel(fn if positive else fp, gen)
        labels[n, 0] = int(positive)
    return coords, labels
