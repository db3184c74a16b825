"""Pure-torch models: SAM built from upstream ``segment_anything.modeling`` parts,
the SAM-UNet variant, the SAM-SP self-prompting wrapper, LoRA and checkpoint I/O.

Nothing in this package imports Qt or napari.
"""

from .build import MODEL_CONFIGS, SamConfig, UNetBranchConfig, build_model, describe_models
from .sam_model import ImageFeatures, SamModel
from .sam_sp import PassOutput, SamSP
from .sam_unet import SamUNet

__all__ = [
    "MODEL_CONFIGS",
    "ImageFeatures",
    "PassOutput",
    "SamConfig",
    "SamModel",
    "SamSP",
    "SamUNet",
    "UNetBranchConfig",
    "build_model",
    "describe_models",
]
