"""SAM-UNet (after arXiv 2408.09886): a convolutional branch beside the ViT.

* A small residual CNN (plain torch) runs on the same normalised input. Its
  stages sit at strides 2, 4, ... up to the ViT patch stride.
* Before every global-attention block of the (typically frozen) ViT, the CNN's
  multi-scale features, pooled to the token grid, are projected and added to
  the token map.
* The ViT's global-block outputs (intermediate features) and the CNN stage at the
  decoder's upscaled resolution are fused into the mask decoder's upscaled mask
  features, so masks see fine detail that a patch-stride ViT cannot.

Every fusion ends in a zero-initialised projection: a fresh SAM-UNet built on
official SAM weights starts out computing exactly what SAM computes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder

from .sam_model import ImageFeatures, SamModel

if TYPE_CHECKING:
    from .build import SamConfig


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm rather than BatchNorm: fine-tuning batches here are 1-8 images.
    return nn.GroupNorm(min(8, channels), channels)


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = _norm(out_ch)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.skip = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), _norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.gelu(y + self.skip(x))


class ConvBranch(nn.Module):
    """Residual CNN: (B, 3, S, S) -> features at strides 2, 4, ..., ``patch_size``."""

    def __init__(self, widths: tuple[int, ...], num_stages: int, blocks_per_stage: int = 1) -> None:
        super().__init__()
        if len(widths) < num_stages:
            raise ValueError(f"SAM-UNet branch needs {num_stages} stage widths, got {len(widths)}")
        stages = []
        in_ch = 3
        for width in widths[:num_stages]:
            blocks = [ResidualBlock(in_ch, width, stride=2)]
            blocks += [ResidualBlock(width, width, stride=1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.widths = tuple(widths[:num_stages])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class SamUNet(SamModel):
    """SAM with a convolutional branch fused into the encoder and the decoder."""

    def __init__(
        self,
        config: "SamConfig",
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
    ) -> None:
        super().__init__(config, image_encoder, prompt_encoder, mask_decoder)
        assert config.unet is not None
        patch = config.patch_size
        num_stages = patch.bit_length() - 1  # strides 2..patch
        if 2**num_stages != patch:
            raise ValueError(f"SAM-UNet needs a power-of-two patch size, got {patch}")
        self.cnn_branch = ConvBranch(config.unet.widths, num_stages, config.unet.blocks_per_stage)
        dim = config.encoder_embed_dim
        pyramid = sum(self.cnn_branch.widths)
        self.global_blocks = tuple(config.encoder_global_attn_indexes)
        self.encoder_fusion = nn.ModuleList(nn.Conv2d(pyramid, dim, 1) for _ in self.global_blocks)
        for proj in self.encoder_fusion:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

        up_ch = config.prompt_embed_dim // 8  # channels of upstream's upscaled mask features
        # The decoder upscales to 4x the token grid, i.e. stride patch/4 of the input.
        self.decoder_stage = max(0, (patch // 4).bit_length() - 2)
        cnn_ch = self.cnn_branch.widths[self.decoder_stage]
        vit_ch = dim * len(self.global_blocks)
        hidden = max(16, up_ch * 2)
        self.decoder_fusion = nn.Sequential(
            nn.Conv2d(cnn_ch + hidden, hidden, 3, padding=1),
            _norm(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, up_ch, 1),
        )
        self.vit_reduce = nn.Conv2d(vit_ch, hidden, 1)
        nn.init.zeros_(self.decoder_fusion[-1].weight)
        nn.init.zeros_(self.decoder_fusion[-1].bias)
        self._pending_hires: torch.Tensor | None = None
        self.mask_decoder.output_upscaling.register_forward_hook(self._add_hires)

    def _add_hires(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self._pending_hires is None:
            return output
        return output + self._pending_hires.to(output.dtype)

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """(B, 3, S, S) -> embeddings (B, C, h, w) and hires decoder features (B, C/8, 4h, 4w)."""
        enc = self.image_encoder
        cnn_feats = self.cnn_branch(images)
        x = enc.patch_embed(images)  # (B, h, w, D)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        grid = x.shape[1:3]
        pyramid = torch.cat([F.adaptive_avg_pool2d(f, grid) for f in cnn_feats], dim=1)
        intermediates = []
        fusion_iter = iter(self.encoder_fusion)
        for i, blk in enumerate(enc.blocks):
            if i in self.global_blocks:
                x = x + next(fusion_iter)(pyramid).permute(0, 2, 3, 1)
            x = blk(x)
            if i in self.global_blocks:
                intermediates.append(x.permute(0, 3, 1, 2))
        embeddings = enc.neck(x.permute(0, 3, 1, 2))

        target = 4 * grid[0]
        skip = cnn_feats[self.decoder_stage]
        if skip.shape[-1] != target:
            skip = F.interpolate(skip, (target, target), mode="bilinear", align_corners=False)
        vit = F.interpolate(self.vit_reduce(torch.cat(intermediates, 1)), (target, target), mode="bilinear", align_corners=False)
        hires = self.decoder_fusion(torch.cat([skip, vit], dim=1))
        return ImageFeatures(embeddings, hires)

    def _decode_one_image(self, features, points, boxes, mask_input, multimask_output):
        # The hook adds these features to upstream's upscaled mask features; one
        # image per call, so a (1, C, H, W) tensor broadcasts over its prompt sets.
        self._pending_hires = features.hires
        try:
            return super()._decode_one_image(features, points, boxes, mask_input, multimask_output)
        finally:
            self._pending_hires = None
