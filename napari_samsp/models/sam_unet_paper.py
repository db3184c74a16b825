"""SAM-UNet as published (arXiv 2408.09886, repository Hhankyangg/sam-unet), written anew.

The layout of parameters follows the paper's repository, so a checkpoint saved by
its training script loads strictly once the repository's wrapper prefixes are
removed (see :func:`repo_key_to_ours`); the code itself is ours, built from
upstream ``segment_anything`` parts and torchvision's ResNets.

Architecture, for a 256 px input and vit_b (token grid g = 16, C = 256):

* a torchvision ResNet (18/34/50/101, ``fc`` removed) runs on the same normalised,
  zero-padded input and gives four feature maps at strides 4, 8, 16, 32;
* before each of the four global-attention blocks of the ViT, a reshaping adapter
  (strided convs down, transposed convs up, then a 1x1 conv) brings one ResNet
  stage to the token grid and width and adds it to the tokens;
* after the first three global blocks, a bridge adapter (two 2x transposed convs)
  turns the tokens into (B, C/8, 4g, 4g) features; the embedding encoder does the
  same for the neck's embeddings; all four are summed into one multi-scale map;
* the mask decoder runs upstream's two-way transformer with a single learnt output
  token (``med_token``); its upscaled features, refined by a small conv stack and
  added to the multi-scale map, are read out by ``hf_mlp``: one mask, no IoU head.

Preprocessing is part of the architecture (:meth:`SamUNetPaper.prepare_image`):
resize the longest side to ``img_size`` with PIL (upstream ``ResizeLongestSide``),
normalise with SAM's mean/std, *then* zero-pad, as the repository does. Masks are
the logits bilinearly upscaled to the input, cropped, upscaled to the image, > 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from segment_anything.modeling import ImageEncoderViT, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.utils.transforms import ResizeLongestSide

from .sam_model import ImageFeatures, SamModel

if TYPE_CHECKING:
    from .build import SamConfig

__all__ = [
    "PREPROCESSING",
    "RESNETS",
    "MedMaskDecoder",
    "ResNetBranch",
    "SamUNetPaper",
    "TokenAdapter",
    "from_official_sam",
    "repo_key_to_ours",
]

# Recorded in model cards (``preprocessing``): the repository prepares images as upstream
# ``SamPredictor`` does (PIL resize of the longest side, normalise, then zero-pad), which the
# card vocabulary names "sam"; ``SamUNetPaper.preprocessing`` says the same on the model.
PREPROCESSING = "sam"

# depth -> (torchvision builder, blocks per stage, bottleneck?)
RESNETS: dict[int, tuple[Callable[..., tvm.ResNet], tuple[int, ...], bool]] = {
    18: (tvm.resnet18, (2, 2, 2, 2), False),
    34: (tvm.resnet34, (3, 4, 6, 3), False),
    50: (tvm.resnet50, (3, 4, 6, 3), True),
    101: (tvm.resnet101, (3, 4, 23, 3), True),
}


class ResNetBranch(nn.Module):
    """torchvision ResNet without its classifier: (B, 3, S, S) -> 4 maps at strides 4, 8, 16, 32.

    Attributes:
        channels: output channels of the four stages, e.g. (256, 512, 1024, 2048) for ResNet-50.
    """

    def __init__(self, depth: int) -> None:
        super().__init__()
        if depth not in RESNETS:
            raise ValueError(f"unsupported ResNet depth {depth}; known: {sorted(RESNETS)}")
        net = RESNETS[depth][0](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if RESNETS[depth][2] else 1
        self.channels = tuple(w * expansion for w in (64, 128, 256, 512))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


class TokenAdapter(nn.Module):
    """(B, c_in, s_in, s_in) -> (B, c_out, s_out, s_out), sides a power of two apart.

    Each halving is a stride-2 3x3 conv doubling the channels, each doubling a 2x2
    transposed conv halving them (both followed by LayerNorm2d and GELU); a 1x1 conv
    sets the output width. The module list is called ``reshaper`` as in the paper's code.
    """

    def __init__(self, size_in: int, c_in: int, size_out: int, c_out: int) -> None:
        super().__init__()
        ratio = max(size_in, size_out) / min(size_in, size_out)
        steps = round(math.log2(ratio))
        if 2**steps != ratio:
            raise ValueError(f"adapter sides must be a power of two apart, got {size_in} and {size_out}")
        layers: list[nn.Module] = []
        ch = c_in
        for _ in range(steps):
            if size_in > size_out:
                layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), LayerNorm2d(ch * 2), nn.GELU()]
                ch *= 2
            else:
                layers += [nn.ConvTranspose2d(ch, ch // 2, 2, stride=2), LayerNorm2d(ch // 2), nn.GELU()]
                ch //= 2
        layers.append(nn.Conv2d(ch, c_out, 1))
        self.reshaper = nn.ModuleList(layers)
        for m in self.reshaper:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.reshaper:
            x = layer(x)
        return x


def _upscale4(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """Two 2x transposed convs with LayerNorm2d + GELU between: (B, c_in, g, g) -> (B, c_out, 4g, 4g)."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_mid, 2, stride=2), LayerNorm2d(c_mid), nn.GELU(), nn.ConvTranspose2d(c_mid, c_out, 2, stride=2)
    )


class MedMaskDecoder(nn.Module):
    """SAM's two-way transformer with one learnt output token and a multi-scale read-out.

    Args:
        transformer: upstream ``TwoWayTransformer`` of width C.
        transformer_dim: C.
    """

    def __init__(self, transformer: TwoWayTransformer, transformer_dim: int) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = transformer
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, 2, stride=2), LayerNorm2d(c // 4), nn.GELU(),
            nn.ConvTranspose2d(c // 4, c // 8, 2, stride=2), nn.GELU(),
        )
        self.med_token = nn.Embedding(1, c)
        self.hf_mlp = MLP(c, c, c // 8, 3)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(c // 8, c // 4, 3, padding=1), LayerNorm2d(c // 4), nn.GELU(), nn.Conv2d(c // 4, c // 8, 3, padding=1)
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multi_scale_feature: torch.Tensor,
    ) -> torch.Tensor:
        """Decode N prompt sets against one image.

        Args:
            image_embeddings: (1, C, g, g).
            image_pe: (1, C, g, g) dense positional encoding.
            sparse_prompt_embeddings: (N, T, C) point/box tokens (T may be 0).
            dense_prompt_embeddings: (N, C, g, g) mask-prompt embeddings.
            multi_scale_feature: (1, C/8, 4g, 4g).

        Returns:
            (N, 1, 4g, 4g) mask logits.
        """
        n = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat((self.med_token.weight[None].expand(n, -1, -1), sparse_prompt_embeddings), dim=1)
        src = torch.repeat_interleave(image_embeddings, n, dim=0) + dense_prompt_embeddings
        pos = torch.repeat_interleave(image_pe, n, dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        features = self.embedding_maskfeature(upscaled) + multi_scale_feature
        hyper = self.hf_mlp(hs[:, 0, :])[:, None, :]  # (N, 1, C/8)
        b, c8, h4, w4 = features.shape
        return (hyper @ features.reshape(b, c8, h4 * w4)).reshape(b, 1, h4, w4)


class SamUNetPaper(SamModel):
    """The paper's SAM-UNet behind our :class:`SamModel` interface (``encode`` / ``decode``).

    Its preprocessing is fixed by the architecture: :meth:`prepare_image` (and the
    ``preprocessing`` attribute, ``"sam"``, for code that prepares tensors itself).

    ``encode`` returns the neck embeddings (B, C, g, g) and, as ``hires``, the
    multi-scale map (B, C/8, 4g, 4g). ``decode`` always returns one mask per prompt
    set; the repository has no IoU head, so the "predicted IoU" is a stand-in:
    the mean foreground probability of that mask (0 when it is empty).
    """

    def __init__(
        self,
        config: "SamConfig",
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MedMaskDecoder,
    ) -> None:
        super().__init__(config, image_encoder, prompt_encoder, mask_decoder)  # type: ignore[arg-type]
        self.preprocessing = PREPROCESSING
        assert config.resnet is not None
        self.global_blocks = tuple(config.encoder_global_attn_indexes)
        if len(self.global_blocks) != 4:
            raise ValueError(f"SAM-UNet (paper) needs 4 global-attention blocks, one per ResNet stage; got {self.global_blocks}")
        self.resnet = ResNetBranch(config.resnet)
        size, grid, dim = config.img_size, config.embedding_size, config.encoder_embed_dim
        self.adapters_in = nn.ModuleList(
            TokenAdapter(size // stride, ch, grid, dim) for stride, ch in zip((4, 8, 16, 32), self.resnet.channels)
        )
        c = config.prompt_embed_dim
        # adapters_bridge[2 - i] serves the i-th global block: index 0 is the deepest, as in the paper's code.
        self.adapters_bridge = nn.ModuleList(_upscale4(dim, c, c // 8) for _ in range(3))
        self.embedding_encoder = _upscale4(c, c // 4, c // 8)

    def prepare_image(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, S, S) model input: PIL resize, normalise, then zero-pad."""
        resized = ResizeLongestSide(self.img_size).apply_image(np.ascontiguousarray(rgb))
        x = torch.from_numpy(resized).permute(2, 0, 1)[None].float().to(self.pixel_mean.device)
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """(B, 3, S, S) normalised, padded images -> embeddings (B, C, g, g) + multi-scale map (B, C/8, 4g, 4g)."""
        enc = self.image_encoder
        stages = self.resnet(images)
        x = enc.patch_embed(images)  # (B, g, g, D)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        bridges: list[torch.Tensor] = []
        start = 0
        for i, g in enumerate(self.global_blocks):
            for blk in enc.blocks[start:g]:
                x = blk(x)
            x = x + self.adapters_in[i](stages[i]).permute(0, 2, 3, 1)
            x = enc.blocks[g](x)
            start = g + 1
            if i < len(self.adapters_bridge):
                bridges.append(self.adapters_bridge[len(self.adapters_bridge) - 1 - i](x.permute(0, 3, 1, 2)))
        for blk in enc.blocks[start:]:
            x = blk(x)
        embeddings = enc.neck(x.permute(0, 3, 1, 2))
        hires = self.embedding_encoder(embeddings)
        for b in reversed(bridges):  # deepest first, the paper's summation order
            hires = hires + b
        return ImageFeatures(embeddings, hires)

    def _decode_one_image(
        self,
        features: ImageFeatures,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 4g, 4g) logits and (N, 1) stand-in scores; ``multimask_output`` is ignored (one token)."""
        assert features.hires is not None, "SamUNetPaper features need the multi-scale map"
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        logits = self.mask_decoder(
            image_embeddings=features.embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multi_scale_feature=features.hires,
        )
        fg = (logits > self.mask_threshold).float()
        prob = torch.sigmoid(logits) * fg
        score = prob.sum(dim=(2, 3)) / fg.sum(dim=(2, 3)).clamp_min(1.0)
        return logits, score


def repo_key_to_ours(key: str) -> str:
    """Name of a repository state-dict key in :class:`SamUNetPaper`.

    The repository wraps SAM's parts (``image_encoder.sam_img_encoder.``, ...) and
    names the ResNet's stem ``stage0`` (conv1, bn1, relu, maxpool) and its layers
    ``stage1``..``stage4``; everything else has the same name here.
    """
    for wrapped, ours in (
        ("image_encoder.sam_img_encoder.", "image_encoder."),
        ("prompt_encoder.sam_prompt_encoder.", "prompt_encoder."),
        ("mask_decoder.sam_mask_decoder.", "mask_decoder."),
        ("resnet.stage0.0.", "resnet.conv1."),
        ("resnet.stage0.1.", "resnet.bn1."),
    ):
        if key.startswith(wrapped):
            return ours + key[len(wrapped):]
    if key.startswith("resnet.stage") and key[12:13] in "1234":
        return f"resnet.layer{key[12]}" + key[13:]
    return key


def _resize_table(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Bilinear resize of a position table, as the repository does when it builds from official SAM.

    ``pos_embed`` (1, H, W, D) is resized over its grid; a relative table (L, C) along L.
    """
    if t.ndim == 4:
        return F.interpolate(t.permute(0, 3, 1, 2), tuple(shape[1:3]), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    return F.interpolate(t[None, None], tuple(shape), mode="bilinear", align_corners=False)[0, 0]


def from_official_sam(path: str, resnet: int = 50, img_size: int = 256) -> SamUNetPaper:
    """A new paper SAM-UNet whose SAM parts come from an official SAM vit_b checkpoint.

    What the repository does with ``need_ori_checkpoint=True``: the absolute and
    relative position tables are resized bilinearly to the ``img_size`` token grid,
    SAM's IoU head, mask tokens and hypernetwork MLPs are dropped (this decoder has
    its own ``med_token`` / ``hf_mlp``), and everything else of the encoder, prompt
    encoder and decoder transformer must be present. The ResNet, adapters and
    ``med_token`` stay at initialisation (the repository starts its ResNet from
    ImageNet weights, which are not downloaded here).

    Raises:
        WeightsError: an unreadable or non-SAM file, or SAM weights of another size.
    """
    import dataclasses

    from ..errors import WeightsError
    from .build import MODEL_CONFIGS, build_model
    from .checkpoints import (
        _check_file,
        _official_refusal,
        _official_state,
        _torch_load,
    )

    p = _check_file(path)
    state = _official_state(_torch_load(p, trust=False, refusal=_official_refusal), p)
    base = MODEL_CONFIGS.get(f"samunet_paper_r{resnet}")
    base = base or dataclasses.replace(MODEL_CONFIGS["samunet_paper_r50"], name=f"samunet_paper_r{resnet}", resnet=resnet)
    model = build_model(dataclasses.replace(base, img_size=img_size))
    expected = model.state_dict()
    take, bad = {}, []
    for key, value in state.items():
        if key not in expected:
            continue
        want = expected[key].shape
        if value.shape != want and (key == "image_encoder.pos_embed" or key.endswith(("rel_pos_h", "rel_pos_w"))):
            value = _resize_table(value.float(), want).to(value.dtype)
        if value.shape != want:
            bad.append(f"{key} file {list(value.shape)} vs model {list(want)}")
        take[key] = value
    sam_parts = ("image_encoder.", "prompt_encoder.", "mask_decoder.transformer.", "mask_decoder.output_upscaling.")
    missing = [k for k in expected if k.startswith(sam_parts) and k not in take]
    if bad or missing:
        raise WeightsError(
            f"{p}: not official SAM vit_b weights for {base.name!r}: "
            + "; ".join(
                ([f"{len(bad)} mis-shaped ({', '.join(bad[:3])})"] if bad else [])
                + ([f"{len(missing)} missing ({', '.join(missing[:4])})"] if missing else [])
            )
        )
    model.load_state_dict(take, strict=False)
    return model.eval()
