"""A differentiable, batched SAM built on upstream ``segment_anything.modeling.Sam``.

Upstream ``Sam.forward`` runs under ``torch.no_grad`` and loops per image, which
suits inference but not training. ``SamModel`` keeps upstream's modules and
state-dict layout (so official checkpoints load unchanged, and upstream's
``SamPredictor`` / ``SamAutomaticMaskGenerator`` accept it) and adds two
differentiable entry points: :meth:`encode` and :meth:`decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam

if TYPE_CHECKING:
    from .build import SamConfig


@dataclass
class ImageFeatures:
    """What the encoder produces for a batch of images.

    Attributes:
        embeddings: (B, C, h, w) image embeddings, ``h = w = img_size / patch_size``.
        hires: optional (B, C', 4h, 4w) high-resolution features that SAM-UNet
            fuses into the decoder's upscaled mask features; None for plain SAM.
    """

    embeddings: torch.Tensor
    hires: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def select(self, index: torch.Tensor | slice | int) -> "ImageFeatures":
        """Features of a subset of the batch (keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return ImageFeatures(
            self.embeddings[index], None if self.hires is None else self.hires[index]
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "ImageFeatures":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype or t.dtype)

        return ImageFeatures(move(self.embeddings), move(self.hires))  # type: ignore[arg-type]


class SamModel(Sam):
    """SAM with batched, differentiable ``encode`` / ``decode``.

    Coordinates of points and boxes are in the model's input frame: pixels of the
    resized-and-padded ``img_size`` x ``img_size`` image, (x, y) order.
    """

    def __init__(
        self,
        config: "SamConfig",
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
    ) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder)
        self.config = config

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def normalize_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 255] -> normalised model input (padding is done by the caller)."""
        return (images - self.pixel_mean) / self.pixel_std

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """Encode (B, 3, S, S) normalised images into :class:`ImageFeatures`."""
        return ImageFeatures(self.image_encoder(images))

    def _decode_one_image(
        self,
        features: ImageFeatures,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode N prompt sets against one image (``features`` has batch 1)."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.mask_decoder(
            image_embeddings=features.embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def decode(
        self,
        features: ImageFeatures,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        image_index: torch.Tensor | None = None,
        num_prompts: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode N prompt sets, each against one image of ``features``.

        Args:
            features: encoder output for B images.
            point_coords: (N, P, 2) input-frame (x, y); label -1 marks padding.
            point_labels: (N, P) 1 positive, 0 negative, -1 padding.
            boxes: (N, 4) input-frame x0, y0, x1, y1.
            mask_input: (N, 1, 4h, 4w) previous low-resolution logits.
            multimask_output: 3 masks per prompt set instead of 1.
            image_index: (N,) which image each prompt set belongs to. Defaults to
                ``arange(B)`` when N == B, and to all zeros when B == 1.
            num_prompts: N when no prompt tensor is given (prompt-free decoding).

        Returns:
            (N, M, 4h, 4w) low-resolution mask logits and (N, M) predicted IoU,
            M = 3 with ``multimask_output`` else 1.
        """
        n = _count_prompts(point_coords, boxes, mask_input, num_prompts, len(features))
        if image_index is None:
            if len(features) == n:
                image_index = torch.arange(n, device=features.embeddings.device)
            elif len(features) == 1:
                image_index = torch.zeros(n, dtype=torch.long, device=features.embeddings.device)
            else:
                raise ValueError(
                    f"{n} prompt sets for {len(features)} images: pass image_index to pair them"
                )
        logits_out: list[torch.Tensor] = []
        iou_out: list[torch.Tensor] = []
        order: list[torch.Tensor] = []
        # Upstream MaskDecoder repeats one image's embedding per prompt set, so
        # prompt sets are grouped per image and decoded image by image.
        for img in torch.unique(image_index).tolist():
            rows = torch.nonzero(image_index == img).flatten()
            pts = None
            if point_coords is not None:
                assert point_labels is not None, "point_labels are required with point_coords"
                pts = (point_coords[rows], point_labels[rows])
            bx = boxes[rows] if boxes is not None else None
            mk = mask_input[rows] if mask_input is not None else None
            if pts is None and bx is None and mk is None:
                # Prompt-free: upstream infers N = 1 from no prompts; expand after.
                logits, iou = self._decode_one_image(features.select(img), None, None, None, multimask_output)
                logits = logits.expand(len(rows), -1, -1, -1)
                iou = iou.expand(len(rows), -1)
            else:
                logits, iou = self._decode_one_image(features.select(img), pts, bx, mk, multimask_output)
            logits_out.append(logits)
            iou_out.append(iou)
            order.append(rows)
        perm = torch.cat(order)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm), device=perm.device)
        return torch.cat(logits_out)[inverse], torch.cat(iou_out)[inverse]

    def upscale_logits(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(N, M, 4h, 4w) -> (N, M, S, S) logits in the model's input frame."""
        return F.interpolate(low_res_logits, (self.img_size, self.img_size), mode="bilinear", align_corners=False)


def _count_prompts(
    point_coords: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    num_prompts: int | None,
    num_images: int,
) -> int:
    for t in (point_coords, boxes, mask_input):
        if t is not None:
            return t.shape[0]
    return num_prompts if num_prompts is not None else num_images
