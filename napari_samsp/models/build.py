"""Named model configurations and the builder.

Official configurations (``vit_b``, ``vit_l``, ``vit_h``) reproduce upstream
``segment_anything.build_sam`` exactly, so official checkpoints load with a
strict key and shape check. Small configurations of our own train on a 2-core
CPU in minutes; their smaller patch keeps the decoder's output grid fine enough
for nuclei (see docs/ARCHITECTURE.md, "Resolution").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

from .sam_model import SamModel


@dataclass(frozen=True)
class UNetBranchConfig:
    """Convolutional branch of SAM-UNet (see ``sam_unet.py``).

    ``widths[i]`` is the channel count of the stage at stride ``2 ** (i + 1)``;
    the branch gets as many stages as it takes to reach the ViT patch stride.
    """

    widths: tuple[int, ...] = (32, 64, 96, 128)
    blocks_per_stage: int = 1


@dataclass(frozen=True)
class SamConfig:
    """Everything needed to rebuild a model; stored in every model card."""

    name: str
    img_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    unet: UNetBranchConfig | None = None
    # ResNet depth of the paper's SAM-UNet (``sam_unet_paper.py``); None for every other model.
    resnet: int | None = None
    official: bool = False
    description: str = ""

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (input size / patch size)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (4x the embedding grid)."""
        return 4 * self.embedding_size

    @property
    def multimask_trained(self) -> bool:
        """SAM's three multimask outputs carry trained weights: official architectures only (official SAM,
        MedSAM, micro-sam and fine-tunes of them); our own configs train the single-mask output alone."""
        return self.official

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = dict(data)
        if values.get("unet") is not None:
            unet = dict(values["unet"])
            unet["widths"] = tuple(unet.get("widths", UNetBranchConfig.widths))
            values["unet"] = UNetBranchConfig(**unet)
        values["encoder_global_attn_indexes"] = tuple(values.get("encoder_global_attn_indexes", ()))
        return cls(**values)

    def with_unet(self, unet: UNetBranchConfig | None = None, name: str | None = None) -> "SamConfig":
        return dataclasses.replace(self, unet=unet or UNetBranchConfig(), name=name or f"samunet_{self.name}")


def _official(name: str, dim: int, depth: int, heads: int, global_idx: tuple[int, ...]) -> SamConfig:
    return SamConfig(
        name=name,
        encoder_embed_dim=dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=global_idx,
        official=True,
        description=f"official SAM {name} architecture (1024 px, patch 16); needs the official checkpoint",
    )


_TINY = SamConfig(
    name="tiny",
    img_size=256,
    patch_size=8,
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    window_size=8,
    prompt_embed_dim=128,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
    description="small CPU config: 256 px, patch 8 (128x128 mask logits), about 2.3M parameters",
)

_MICRO = SamConfig(
    name="micro",
    img_size=128,
    patch_size=8,
    encoder_embed_dim=64,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    window_size=4,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
    mask_in_chans=8,
    description="test-sized config: 128 px, about 0.3M parameters; for tests and smoke runs only",
)


def _paper(name: str, resnet: int, vit: SamConfig, img_size: int = 256) -> SamConfig:
    """The paper's SAM-UNet (arXiv 2408.09886): a ResNet branch beside ``vit`` at ``img_size``."""
    return dataclasses.replace(
        vit,
        name=name,
        img_size=img_size,
        resnet=resnet,
        official=False,
        description=(
            f"SAM-UNet as published (Hhankyangg/sam-unet): {vit.name} at {img_size} px + ResNet-{resnet}; "
            "loads the repository's checkpoints strictly (they need --trust); one mask per prompt, no IoU head"
        ),
    )


_VIT_B = _official("vit_b", 768, 12, 12, (2, 5, 8, 11))

MODEL_CONFIGS: dict[str, SamConfig] = {
    cfg.name: cfg
    for cfg in (
        _official("vit_b", 768, 12, 12, (2, 5, 8, 11)),
        _official("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
        _official("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
        _TINY,
        _TINY.with_unet(UNetBranchConfig(widths=(32, 64, 128)), name="samunet_tiny"),
        _MICRO,
        _MICRO.with_unet(UNetBranchConfig(widths=(8, 16, 32)), name="samunet_micro"),
        _official("vit_b", 768, 12, 12, (2, 5, 8, 11)).with_unet(name="samunet_vit_b"),
        _paper("samunet_paper_r50", 50, _VIT_B),
        _paper("samunet_paper_r34", 34, _VIT_B),
    )
}


def multimask_trained(model) -> bool:
    """Whether ``model``'s three multimask outputs were trained (``SamConfig.multimask_trained``: official
    SAM, MedSAM, micro-sam and their fine-tunes); False for our own configs and a model without a config.
    The one rule for every caller that would use SAM's three candidate masks (reward pools, propagation)."""
    return bool(getattr(getattr(model, "config", None), "multimask_trained", False))


def get_config(name: str) -> SamConfig:
    """Look up a named config, with a readable error for unknown names."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(MODEL_CONFIGS)}") from None


def describe_models() -> list[tuple[str, str]]:
    """(name, one-line description) for every built-in config."""
    rows = []
    for name, cfg in MODEL_CONFIGS.items():
        desc = cfg.description
        if cfg.unet is not None:
            desc = (desc + "; " if desc else "") + "with the SAM-UNet convolutional branch"
        rows.append((name, desc))
    return rows


def build_model(config: SamConfig | str) -> SamModel:
    """Build a randomly initialised model (``SamModel``, ``SamUNet`` or ``SamUNetPaper``) from a config."""
    cfg = get_config(config) if isinstance(config, str) else config
    grid = cfg.embedding_size
    image_encoder = ImageEncoderViT(
        depth=cfg.encoder_depth,
        embed_dim=cfg.encoder_embed_dim,
        img_size=cfg.img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=cfg.encoder_num_heads,
        patch_size=cfg.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg.encoder_global_attn_indexes,
        window_size=cfg.window_size,
        out_chans=cfg.prompt_embed_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=cfg.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.img_size, cfg.img_size),
        mask_in_chans=cfg.mask_in_chans,
    )
    transformer = TwoWayTransformer(
        depth=cfg.decoder_depth,
        embedding_dim=cfg.prompt_embed_dim,
        mlp_dim=cfg.decoder_mlp_dim,
        num_heads=cfg.decoder_num_heads,
    )
    if cfg.resnet is not None:
        from .sam_unet_paper import MedMaskDecoder, SamUNetPaper

        return SamUNetPaper(cfg, image_encoder, prompt_encoder, MedMaskDecoder(transformer, cfg.prompt_embed_dim))
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=transformer,
        transformer_dim=cfg.prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
    )
    if cfg.unet is not None:
        from .sam_unet import SamUNet

        return SamUNet(cfg, image_encoder, prompt_encoder, mask_decoder)
    return SamModel(cfg, image_encoder, prompt_encoder, mask_decoder)
