"""Random SAM models built with upstream ``segment_anything``'s own constructors (shared by tests)."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from napari_samsp.models.build import MODEL_CONFIGS


def upstream_sam(name: str, seed: int = 1234) -> Sam:
    """A seeded random upstream ``Sam``: ``vit_b`` from ``sam_model_registry``, or one shaped like
    our small configs (``tiny``, ``micro``) from upstream's ``ImageEncoderViT`` / ``PromptEncoder`` /
    ``MaskDecoder``, wired as upstream's ``_build_sam`` wires them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in sam_model_registry and name != "default":
            return sam_model_registry[name]().eval()
        cfg = MODEL_CONFIGS[name]
        grid = cfg.img_size // cfg.patch_size
        return Sam(
            image_encoder=ImageEncoderViT(
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
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=cfg.prompt_embed_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(cfg.img_size, cfg.img_size),
                mask_in_chans=cfg.mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=cfg.decoder_depth,
                    embedding_dim=cfg.prompt_embed_dim,
                    mlp_dim=cfg.decoder_mlp_dim,
                    num_heads=cfg.decoder_num_heads,
                ),
                transformer_dim=cfg.prompt_embed_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=cfg.iou_head_hidden_dim,
            ),
        ).eval()
