"""Image normalisation and the mapping between the original pixel grid and the model input.

Training and inference both go through :class:`InputTransform` (and
:func:`resize_and_pad`), so the model always sees images prepared the same way:
resized so the longest side is ``img_size`` and padded at the bottom/right to a square.

Two preprocessings exist, named on every model card (``preprocessing``):

* ``"sam"`` (:data:`SAM_PREPROCESSING`): upstream ``SamPredictor``'s. The uint8
  image is resized with upstream ``ResizeLongestSide.apply_image``, normalised
  with the pixel mean/std, then zero-padded. Here the padding is filled with the
  pixel mean in [0, 255] space, so after ``SamModel.normalize_pixels`` it is
  exactly 0, as upstream's. Official SAM, MedSAM and micro-sam weights use it.
* ``"samsp-v1"`` (:data:`LEGACY_PREPROCESSING`): what napari-samsp's own models
  were trained with: an antialiased bilinear ``torch`` resize of the float image,
  zero-padded in pixel space *before* normalisation (the padding reaches the
  encoder as ``-mean / std``). A card without the field means this one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from .contrast import apply_stretch, stretch_limits
from .errors import InputImageError

SAM_PREPROCESSING = "sam"
LEGACY_PREPROCESSING = "samsp-v1"
PREPROCESSINGS: dict[str, str] = {
    SAM_PREPROCESSING: "upstream SAM: ResizeLongestSide on uint8, normalise, then zero-pad",
    LEGACY_PREPROCESSING: "napari-samsp v1: torch antialiased resize, zero-pad, then normalise",
}

# Upstream Sam's default pixel mean (what every SAM checkpoint was trained with), read from its signature.
SAM_PIXEL_MEAN: tuple[float, ...] = tuple(inspect.signature(Sam.__init__).parameters["pixel_mean"].default)


def check_preprocessing(name: Any) -> str:
    """``name`` if it is a known preprocessing, else ``ValueError`` listing the known ones."""
    if name not in PREPROCESSINGS:
        raise ValueError(f"unknown preprocessing {name!r}; known: {', '.join(PREPROCESSINGS)}")
    return str(name)


def model_preprocessing(model: Any) -> str:
    """The preprocessing a model was trained with (its ``preprocessing`` attribute; legacy when unset)."""
    return check_preprocessing(getattr(model, "preprocessing", LEGACY_PREPROCESSING))


def set_model_preprocessing(model: Any, name: str) -> Any:
    """Record on ``model`` which preprocessing it expects (loaders call this from the model card)."""
    model.preprocessing = check_preprocessing(name)
    return model


def _pad_square(img: torch.Tensor, img_size: int, fill: tuple[float, ...] | None) -> torch.Tensor:
    """(C, h, w) -> (C, S, S), padded at the bottom/right with zeros or a per-channel ``fill``."""
    h, w = img.shape[-2:]
    if fill is None:
        return F.pad(img, (0, img_size - w, 0, img_size - h))
    out = torch.tensor(fill, dtype=img.dtype).view(-1, 1, 1).repeat(1, img_size, img_size)
    out[:, :h, :w] = img
    return out


def resize_and_pad(image: torch.Tensor | np.ndarray, img_size: int, preprocessing: str, size: tuple[int, int]) -> torch.Tensor:
    """One image -> (3, S, S) float32 in [0, 255] space, ready for ``SamModel.normalize_pixels``.

    Args:
        image: (3, H, W) float tensor in [0, 255], or (H, W, 3) uint8 array.
        img_size: the model's input side S.
        preprocessing: ``"sam"`` or ``"samsp-v1"`` (see the module docstring).
        size: (h, w) inside the square; for ``"sam"`` it must be upstream's
            ``ResizeLongestSide.get_preprocess_shape`` of the image.
    """
    check_preprocessing(preprocessing)
    if preprocessing == SAM_PREPROCESSING:
        if isinstance(image, torch.Tensor):  # training: augmented floats back to the uint8 upstream resizes
            image = image.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        resized = ResizeLongestSide(img_size).apply_image(np.ascontiguousarray(image))
        if resized.shape[:2] != tuple(size):
            raise ValueError(f"upstream resize gave {resized.shape[:2]}, expected {tuple(size)}")
        t = torch.from_numpy(resized).permute(2, 0, 1).float()
        return _pad_square(t, img_size, SAM_PIXEL_MEAN)
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    t = F.interpolate(image[None], size, mode="bilinear", align_corners=False, antialias=True)[0]
    return _pad_square(t, img_size, None)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """One 2D image (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA of any numeric dtype -> (H, W, 3) uint8.

    uint8 is kept as is. Other integer and float images are stretched between
    their 0.5th and 99.5th percentiles (:mod:`napari_samsp.contrast`, the one stretch every
    path uses), so 16-bit microscopy and float data use the full range without single hot
    pixels dominating.

    Raises:
        InputImageError: empty, non-finite, or of a shape that is not one 2D image.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputImageError(f"unsupported image dtype {arr.dtype}; expected integers or floats")
    if arr.size == 0 or 0 in arr.shape:
        raise InputImageError(f"image has zero size (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise InputImageError(
            f"expected one 2D image (H, W), (H, W, 3) or (H, W, 4), got shape {tuple(np.asarray(image).shape)}"
        )
    u8 = apply_stretch(arr, stretch_limits(arr, rgb=arr.ndim == 3))
    if u8.ndim == 2:
        u8 = np.repeat(u8[..., None], 3, axis=-1)
    return np.ascontiguousarray(u8)


def split_planes(image: np.ndarray, rgb: bool | None = None) -> tuple[list[np.ndarray], bool]:
    """Split an image into 2D planes: returns (planes, is_stack).

    (H, W), (H, W, 3|4) are single images; (Z, H, W) and (Z, H, W, 3|4) are stacks.
    ``rgb`` overrides the guess from a trailing axis of 3 or 4 (napari's layer.rgb).

    Raises:
        InputImageError: 1D, 5D or more, or zero-sized arrays.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise InputImageError(f"image has zero size (shape {arr.shape})")
    is_rgb = rgb if rgb is not None else (arr.ndim >= 3 and arr.shape[-1] in (3, 4))
    spatial = arr.ndim - (1 if is_rgb else 0)
    if spatial == 2:
        return [arr], False
    if spatial == 3:
        return [arr[z] for z in range(arr.shape[0])], True
    raise InputImageError(
        f"expected a 2D image or a 3D stack, got {arr.ndim} dimensions (shape {arr.shape})"
    )


def mirror(a: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    """``a`` (H, W, ...) mirrored top-bottom (``rows``) and / or left-right (``cols``), contiguous;
    its own inverse."""
    if rows:
        a = a[::-1]
    if cols:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


@dataclass(frozen=True)
class InputTransform:
    """Resize-longest-side + pad to ``img_size`` and the inverse mapping, for one image size.

    Attributes:
        img_size: the model's square input side S.
        original_size: (H, W) of the original image.
        preprocessing: ``"sam"`` or ``"samsp-v1"``: how :meth:`image_to_tensor` resizes and pads.
    """

    img_size: int
    original_size: tuple[int, int]
    preprocessing: str = LEGACY_PREPROCESSING

    @property
    def resized_size(self) -> tuple[int, int]:
        """(h, w) of the image inside the padded square."""
        return ResizeLongestSide.get_preprocess_shape(*self.original_size, self.img_size)

    def image_to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, S, S) float32 in [0, 255], resized and padded (see :func:`resize_and_pad`)."""
        if rgb.shape[:2] != self.original_size:
            raise InputImageError(f"image is {rgb.shape[:2]}, transform expects {self.original_size}")
        return resize_and_pad(rgb, self.img_size, self.preprocessing, self.resized_size)

    def mask_to_tensor(self, mask: np.ndarray) -> torch.Tensor:
        """(H, W) labels -> (S, S) labels (nearest), zero-padded; for training targets."""
        if mask.shape[:2] != self.original_size:
            raise InputImageError(f"mask is {mask.shape[:2]}, image is {self.original_size}")
        t = torch.from_numpy(mask.astype(np.int64))[None, None].float()
        h, w = self.resized_size
        t = F.interpolate(t, (h, w), mode="nearest")
        return F.pad(t, (0, self.img_size - w, 0, self.img_size - h))[0, 0].long()

    def coords_to_input(self, coords: np.ndarray) -> np.ndarray:
        """(..., 2) original-grid (x, y) -> input frame."""
        h, w = self.resized_size
        out = np.asarray(coords, dtype=np.float32).copy()
        out[..., 0] *= w / self.original_size[1]
        out[..., 1] *= h / self.original_size[0]
        return out

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """(..., 4) original-grid x0, y0, x1, y1 -> input frame."""
        b = np.asarray(boxes, dtype=np.float32)
        return self.coords_to_input(b.reshape(*b.shape[:-1], 2, 2)).reshape(b.shape)

    def logits_to_original(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(N, M, L, L) low-res logits -> (N, M, H, W) logits on the original pixel grid."""
        s = self.img_size
        x = F.interpolate(low_res_logits, (s, s), mode="bilinear", align_corners=False)
        h, w = self.resized_size
        x = x[..., :h, :w]
        return F.interpolate(x, self.original_size, mode="bilinear", align_corners=False)

    def mirror_input_coords(self, coords: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
        """(..., 2) input-frame (x, y) of original pixels -> the same pixels in the input frame of the
        image mirrored top-bottom (``rows``) and / or left-right (``cols``): exactly
        ``coords_to_input`` of the mirrored original coordinates (x -> W - 1 - x)."""
        h, w = self.resized_size
        out = np.asarray(coords, dtype=np.float32).copy()
        if cols:
            out[..., 0] = (self.original_size[1] - 1) * (w / self.original_size[1]) - out[..., 0]
        if rows:
            out[..., 1] = (self.original_size[0] - 1) * (h / self.original_size[0]) - out[..., 1]
        return out

    def mirror_input_boxes(self, boxes: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
        """(..., 4) input-frame x0, y0, x1, y1 -> the mirrored image's input frame (corners re-sorted)."""
        b = self.mirror_input_coords(np.asarray(boxes, np.float32).reshape(*np.shape(boxes)[:-1], 2, 2), rows, cols)
        lo, hi = np.minimum(b[..., 0, :], b[..., 1, :]), np.maximum(b[..., 0, :], b[..., 1, :])
        return np.concatenate([lo, hi], axis=-1)

    def mirror_low_res(self, low_res_logits: torch.Tensor, rows: bool, cols: bool) -> torch.Tensor:
        """(N, M, L, L) low-res logits in the input frame -> those of the mirrored image (its own inverse).

        Only the image part (``resized_size``, top left) is mirrored; the padding stays where it
        is. When that part is a whole number of low-res pixels the mirror is exact; otherwise
        it is taken at the input resolution S (bilinear up, mirror, area down), a slight blur.
        """
        if not (rows or cols):
            return low_res_logits
        side = low_res_logits.shape[-1]
        h, w = self.resized_size
        dims = [d for d, on in ((-2, rows), (-1, cols)) if on]
        exact = (h * side) % self.img_size == 0 and (w * side) % self.img_size == 0
        x = low_res_logits if exact else F.interpolate(low_res_logits, (self.img_size,) * 2, mode="bilinear", align_corners=False)
        hh, ww = (h * side // self.img_size, w * side // self.img_size) if exact else (h, w)
        out = x.clone()
        out[..., :hh, :ww] = torch.flip(x[..., :hh, :ww], dims)
        if exact:
            return out
        return F.interpolate(out, (side, side), mode="area")

    def mask_to_low_res(self, mask: np.ndarray | torch.Tensor, low_res: int) -> torch.Tensor:
        """(H, W) binary mask on the original grid -> (1, 1, L, L) float in {0, 1} in the low-res input frame."""
        m = torch.as_tensor(np.asarray(mask) > 0, dtype=torch.float32)[None, None]
        h, w = self.resized_size
        m = F.interpolate(m, (h, w), mode="bilinear", align_corners=False)
        m = F.pad(m, (0, self.img_size - w, 0, self.img_size - h))
        return (F.interpolate(m, (low_res, low_res), mode="bilinear", align_corners=False) > 0.5).float()
