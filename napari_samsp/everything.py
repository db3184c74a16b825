"""Everything-mode: automatic instance masks from a grid of point prompts, for weights
that were never trained to self-prompt (official SAM, MedSAM, micro-sam, ...).

This is the procedure of upstream ``SamAutomaticMaskGenerator``, built from
upstream's own utilities (``segment_anything.utils.amg``: the point grid,
``MaskData``, the stability score, mask boxes, the crop-edge test, RLE) and
torchvision's ``batched_nms``, but running on :class:`~napari_samsp.predictor.Predictor`:

1. Every point of a ``points_per_side`` x ``points_per_side`` grid is decoded as
   one positive click against the *cached* image embedding, with three candidate
   masks each (``multimask_output``), ``points_per_batch`` points at a time.
2. Candidates are kept when their predicted IoU exceeds ``pred_iou_thresh`` and
   their stability score (IoU of the masks thresholded at ``+-stability_score_offset``
   around the mask threshold) reaches ``stability_score_thresh``.
3. Duplicates are removed by box NMS (``box_nms_thresh``), scored by predicted IoU.
4. Optionally (``min_mask_region_area``) small holes and islands are removed from
   every mask, and NMS runs again, preferring masks that needed no change.
5. :func:`masks_to_labels` paints the masks into one label image, largest first,
   so smaller objects stay visible on top of larger ones.

Differences from upstream, none of which changes a mask:

* the predicted-IoU filter runs on the low-resolution logits, before they are
  upsampled to the image (upsampling is per mask), which saves most of the
  upsampling when the filter is strict;
* masks are kept as RLE in the frame of their crop, so tiles of a large image
  never hold full-image masks;
* ``min_mask_region_area`` uses scipy instead of OpenCV (not a dependency here),
  with upstream's rules (8-connectivity; all-small islands keep the largest).

Large images (longest side above ``2 * img_size`` by default, see
:func:`~napari_samsp.autoseg.default_tiling`) are processed like upstream's crop
layers: the whole image, plus the tiles of :func:`~napari_samsp.tiling.plan_tiles`,
each with its own grid. In a tile, masks touching an inner tile edge are dropped
(the neighbouring tile or the whole-image pass holds them whole), and duplicates
across crops are removed by box NMS that prefers the smaller crop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from scipy import ndimage
from segment_anything.utils.amg import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from skimage.segmentation import relabel_sequential
from torchvision.ops import batched_nms, box_area

from .embedding import Embedding
from .errors import SamspError
from .predictor import Predictor, as_plane
from .tiling import plan_tiles
from .transforms import to_rgb_uint8

__all__ = [
    "EverythingMasks",
    "EverythingOptionError",
    "EverythingOptions",
    "everything_masks",
    "masks_to_labels",
    "segment_everything",
]

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]
CropBox = tuple[int, int, int, int]  # x0, y0, x1, y1 (upstream's order)


class EverythingOptionError(SamspError, ValueError):
    """An everything-mode option out of range, or an unknown option name."""


@dataclass(frozen=True)
class EverythingOptions:
    """Parameters of everything-mode; the defaults are upstream ``SamAutomaticMaskGenerator``'s.

    Attributes:
        points_per_side: the grid has ``points_per_side ** 2`` points per crop.
        points_per_batch: points decoded together (bounds memory: 3 full-size masks per point).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which the lower-scored of two masks of one crop is dropped.
        crop_nms_thresh: the same between masks of different crops (tiled images only).
        min_mask_region_area: remove holes and islands smaller than this (pixels; 0 disables).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_nms_thresh: float = 0.7
    min_mask_region_area: int = 0

    def __post_init__(self) -> None:
        if int(self.points_per_side) < 1:
            raise EverythingOptionError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if int(self.points_per_batch) < 1:
            raise EverythingOptionError(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise EverythingOptionError(f"{name} must be in [0, 1], got {value}")
        if float(self.stability_score_offset) <= 0:
            raise EverythingOptionError(f"stability_score_offset must be > 0, got {self.stability_score_offset}")
        if int(self.min_mask_region_area) < 0:
            raise EverythingOptionError(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EverythingOptions":
        """Options from keyword arguments; an unknown name raises :class:`EverythingOptionError` naming the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise EverythingOptionError(f"unknown everything-mode option(s) {unknown}; valid: {sorted(names)}")
        return cls(**kwargs)


@dataclass
class EverythingMasks:
    """The masks everything-mode kept, in upstream's record layout (numpy, one row per mask).

    Attributes:
        rles: uncompressed RLE of each mask in the frame of its crop (``rle["size"]`` is the crop's (h, w)).
        boxes: (N, 4) float32 x0, y0, x1, y1 of each mask on the image grid (upstream's inclusive-max boxes).
        iou_preds: (N,) predicted IoU.
        stability: (N,) stability score.
        points: (N, 2) the grid point (x, y) on the image grid that produced each mask.
        crop_boxes: (N, 4) int x0, y0, x1, y1 of the crop each mask was decoded in.
        shape: (H, W) of the image.
        probability: (H, W) float32, per pixel the highest sigmoid of any candidate that passed the
            predicted-IoU, stability and crop-edge filters (before NMS); 0 where none did.
    """

    rles: list[dict]
    boxes: np.ndarray
    iou_preds: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    crop_boxes: np.ndarray
    shape: tuple[int, int]
    probability: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.float32))

    def __len__(self) -> int:
        return len(self.rles)

    def mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as an (H, W) bool array on the image grid."""
        out = np.zeros(self.shape, bool)
        x0, y0, x1, y1 = (int(v) for v in self.crop_boxes[i])
        out[y0:y1, x0:x1] = rle_to_mask(self.rles[i])
        return out

    @property
    def areas(self) -> np.ndarray:
        return np.array([area_from_rle(r) for r in self.rles], np.int64)


def _count(data: MaskData) -> int:
    """Masks held by ``data`` (0 for an empty ``MaskData()``)."""
    return len(dict(data.items()).get("rles", []))


def _cat(parts: list[MaskData]) -> MaskData:
    """Concatenate batches once, without ``MaskData.cat``'s deep copy of every RLE list (it cost a third of the time)."""
    parts = [d for d in parts if _count(d)]
    if not parts:
        return MaskData()
    out = {}
    for key, first in parts[0].items():
        values = [d[key] for d in parts]
        if isinstance(first, torch.Tensor):
            out[key] = torch.cat(values, dim=0)
        elif isinstance(first, np.ndarray):
            out[key] = np.concatenate(values, axis=0)
        else:
            out[key] = [item for v in values for item in v]
    return MaskData(**out)


def _crop_boxes(shape: tuple[int, int], tile_threshold: int, tile: int, overlap: int) -> list[CropBox]:
    """The whole image, plus the tiles of :func:`plan_tiles` when the image is longer than ``tile_threshold``."""
    h, w = shape
    boxes: list[CropBox] = [(0, 0, w, h)]
    if max(h, w) > tile_threshold:
        boxes += [(x0, y0, x1, y1) for y0, y1, x0, x1 in plan_tiles((h, w), tile, overlap)]
    return boxes


def _process_batch(
    predictor: Predictor,
    emb: Embedding,
    points: np.ndarray,
    crop_box: CropBox,
    image_shape: tuple[int, int],
    opts: EverythingOptions,
    prob: torch.Tensor,
) -> MaskData:
    """Decode one batch of grid points (crop frame, (B, 2) x, y) on ``emb``, the crop's embedding."""
    model = predictor.model
    dev = predictor.device
    threshold = float(getattr(model, "mask_threshold", 0.0))
    # Same arithmetic as upstream's ResizeLongestSide.apply_coords: float64 scaling of the crop-frame points.
    h, w = emb.transform.resized_size
    oh, ow = emb.original_size
    coords = np.asarray(points, np.float64).copy()
    coords[:, 0] *= w / ow
    coords[:, 1] *= h / oh
    in_points = torch.as_tensor(coords, device=dev)[:, None, :]
    in_labels = torch.ones((len(points), 1), dtype=torch.int, device=dev)
    low, iou = model.decode(emb.features, in_points, in_labels, multimask_output=True, num_prompts=len(points))
    m = low.shape[1]
    low = low.flatten(0, 1).float()
    data = MaskData(
        iou_preds=iou.flatten(0, 1).float(),
        points=torch.as_tensor(np.repeat(np.asarray(points, np.float64), m, axis=0)),
    )
    keep = torch.arange(len(low), device=low.device)
    if opts.pred_iou_thresh > 0.0:
        keep_mask = data["iou_preds"] > opts.pred_iou_thresh
        data.filter(keep_mask)
        keep = keep[keep_mask]
    # Upsampling is per mask, so filtering first changes nothing but the work done.
    data["masks"] = emb.transform.logits_to_original(low[keep][:, None])[:, 0]
    data["stability_score"] = calculate_stability_score(data["masks"], threshold, opts.stability_score_offset)
    if opts.stability_score_thresh > 0.0:
        data.filter(data["stability_score"] >= opts.stability_score_thresh)
    logits = data["masks"]
    data["masks"] = logits > threshold
    data["boxes"] = batched_mask_to_box(data["masks"])
    ih, iw = image_shape
    keep_mask = ~is_box_near_crop_edge(data["boxes"], list(crop_box), [0, 0, iw, ih])
    if not torch.all(keep_mask):
        data.filter(keep_mask)
        logits = logits[keep_mask]
    if len(logits):
        torch.maximum(prob, torch.sigmoid(logits).amax(0), out=prob)
    data["rles"] = mask_to_rle_pytorch(data["masks"])
    del data["masks"]
    return data


def _process_crop(
    predictor: Predictor,
    emb: Embedding,
    crop_box: CropBox,
    image_shape: tuple[int, int],
    opts: EverythingOptions,
    probability: np.ndarray,
) -> MaskData:
    """All grid points of one crop (``emb``: its embedding); NMS inside the crop; boxes and points moved to the image frame."""
    x0, y0, x1, y1 = crop_box
    ch, cw = emb.original_size
    grid = build_point_grid(int(opts.points_per_side)) * np.array([[cw, ch]], np.float64)
    with torch.inference_mode():
        prob = torch.zeros((ch, cw), dtype=torch.float32, device=predictor.device)
        batches = [
            _process_batch(predictor, emb, points, crop_box, image_shape, opts, prob)
            for (points,) in batch_iterator(int(opts.points_per_batch), grid)
        ]
        data = _cat(batches)
        del batches
        if _count(data):
            keep = batched_nms(
                data["boxes"].float(),
                data["iou_preds"],
                torch.zeros(len(data["boxes"]), device=data["boxes"].device),
                iou_threshold=opts.box_nms_thresh,
            )
            data.filter(keep)
            data["boxes"] = uncrop_boxes_xyxy(data["boxes"], list(crop_box))
            data["points"] = uncrop_points(data["points"], list(crop_box))
        region = probability[y0:y1, x0:x1]
        np.maximum(region, prob.cpu().numpy(), out=region)
    if not _count(data):
        return MaskData()
    data["crop_boxes"] = torch.tensor([list(crop_box)] * len(data["rles"]))
    return data


def _remove_small_regions(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area`` px.

    Upstream's rules (its ``remove_small_regions`` needs OpenCV): 8-connected
    components; islands all below ``area`` keep the largest. Returns (mask, changed).
    """
    holes = mode == "holes"
    work = ~mask if holes else mask
    regions, n = ndimage.label(work, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask, False
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = sizes < area
    if not small.any():
        return mask, False
    if holes:
        return mask | small[regions - 1] & (regions > 0), True
    keep = ~small
    if not keep.any():
        keep[int(np.argmax(sizes))] = True
    return (regions > 0) & keep[np.maximum(regions - 1, 0)], True


def _postprocess_small_regions(data: MaskData, area: int, nms_thresh: float) -> MaskData:
    """Upstream's ``postprocess_small_regions`` on crop-frame RLEs: clean each mask, then NMS preferring unchanged ones."""
    if not _count(data):
        return data
    masks, scores = [], []
    for rle in data["rles"]:
        mask, changed_holes = _remove_small_regions(rle_to_mask(rle), area, "holes")
        mask, changed_islands = _remove_small_regions(mask, area, "islands")
        masks.append(mask)
        scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
    boxes = torch.stack([batched_mask_to_box(torch.as_tensor(m)[None])[0] for m in masks])
    boxes = torch.stack([uncrop_boxes_xyxy(b[None], [int(v) for v in cb])[0] for b, cb in zip(boxes, data["crop_boxes"])])
    keep = batched_nms(boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), iou_threshold=nms_thresh)
    for i in keep.tolist():
        if scores[i] == 0.0:
            data["rles"][i] = mask_to_rle_pytorch(torch.as_tensor(masks[i])[None])[0]
            data["boxes"][i] = boxes[i].to(data["boxes"].device, data["boxes"].dtype)
    data.filter(keep)
    return data


def everything_masks(
    predictor: Predictor,
    image: np.ndarray | Embedding | None = None,
    options: EverythingOptions | None = None,
    tile_threshold: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> EverythingMasks:
    """The masks of everything-mode for one 2D image: an array, its
    :class:`~napari_samsp.embedding.Embedding`, or None for the image of ``predictor.set_image``.

    An image whose longest side is at most ``tile_threshold`` (default ``2 * img_size``)
    is decoded from its embedding (cache first; no encoder run for an Embedding);
    a larger one runs the whole image plus tiles of ``tile_size`` (default ``2 * img_size``)
    overlapping by ``overlap`` (default a quarter tile), each embedded once.
    The predictor is not changed.

    Raises:
        SegmentationCancelled: ``cancel`` returned True (polled before each crop).
    """
    from .autoseg import SegmentationCancelled, default_tiling

    opts = options or EverythingOptions()
    whole = None if image is not None and not isinstance(image, Embedding) else predictor.embedding_of(image)
    rgb = to_rgb_uint8(as_plane(image)) if whole is None else whole.rgb
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    thr_default, tile_default, _ = default_tiling(predictor.model.img_size)
    tile = int(tile_size or tile_default)
    crops = _crop_boxes((h, w), int(tile_threshold or thr_default), tile, int(tile // 4 if overlap is None else overlap))
    if whole is None and len(crops) == 1:
        whole = predictor.embed(rgb, with_mirrors=False)  # the point grid decodes one view
    probability = np.zeros((h, w), np.float32)
    per_crop = []
    for i, crop in enumerate(crops):
        if cancel is not None and cancel():
            raise SegmentationCancelled("segmentation cancelled")
        x0, y0, x1, y1 = crop
        if crop == (0, 0, w, h) and whole is not None:
            emb = whole
        else:
            emb = predictor.embed(np.ascontiguousarray(rgb[y0:y1, x0:x1]), with_mirrors=False)
        per_crop.append(_process_crop(predictor, emb, crop, (h, w), opts, probability))
        if progress is not None:
            progress(i + 1, len(crops))
    data = _cat(per_crop)
    if len(crops) > 1 and _count(data):
        scores = 1.0 / box_area(data["crop_boxes"]).to(data["boxes"].device)
        keep = batched_nms(
            data["boxes"].float(), scores, torch.zeros(len(data["boxes"]), device=data["boxes"].device), opts.crop_nms_thresh
        )
        data.filter(keep)
    if opts.min_mask_region_area > 0:
        data = _postprocess_small_regions(data, int(opts.min_mask_region_area), max(opts.box_nms_thresh, opts.crop_nms_thresh))
    if not _count(data):
        z4 = np.zeros((0, 4), np.float32)
        return EverythingMasks([], z4, np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 2)), z4.astype(np.int64), (h, w), probability)
    data.to_numpy()
    return EverythingMasks(
        rles=list(data["rles"]),
        boxes=np.asarray(data["boxes"], np.float32),
        iou_preds=np.asarray(data["iou_preds"], np.float32),
        stability=np.asarray(data["stability_score"], np.float32),
        points=np.asarray(data["points"], np.float64),
        crop_boxes=np.asarray(data["crop_boxes"], np.int64),
        shape=(h, w),
        probability=probability,
    )


def masks_to_labels(masks: EverythingMasks) -> tuple[np.ndarray, dict[int, float]]:
    """Paint the masks into one (H, W) uint16 label image, largest first (smaller objects on top).

    A mask completely covered by smaller ones disappears. Ids are 1..N in painting
    order; returns the labels and each id's predicted IoU.
    """
    h, w = masks.shape
    out = np.zeros((h, w), np.int64)
    areas = masks.areas
    order = np.argsort(-areas, kind="stable")
    for k, i in enumerate(order, start=1):
        x0, y0, x1, y1 = (int(v) for v in masks.crop_boxes[i])
        region = out[y0:y1, x0:x1]
        region[rle_to_mask(masks.rles[i])] = k
    labels, fw, _ = relabel_sequential(out)
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise SamspError(f"{int(labels.max())} objects do not fit a uint16 label image")
    scores = {int(fw[k]): float(masks.iou_preds[i]) for k, i in enumerate(order, start=1) if fw[k] > 0}
    return labels.astype(np.uint16), scores


def segment_everything(
    predictor: Predictor,
    image: np.ndarray | None = None,
    options: EverythingOptions | None = None,
    tile_threshold: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    **kwargs,
):
    """Everything-mode as an :class:`~napari_samsp.autoseg.AutoSegResult` (labels uint16 (H, W), 1..N).

    ``**kwargs`` are :class:`EverythingOptions` fields (used when ``options`` is None).
    ``probability`` is :attr:`EverythingMasks.probability`; ``pass_probabilities`` holds it alone.
    """
    from .autoseg import AutoSegResult

    opts = options if options is not None else EverythingOptions.from_kwargs(**kwargs)
    masks = everything_masks(predictor, image, opts, tile_threshold, tile_size, overlap, progress, cancel)
    labels, scores = masks_to_labels(masks)
    return AutoSegResult(labels, masks.probability, scores, [masks.probability])
