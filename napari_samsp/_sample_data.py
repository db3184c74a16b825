"""napari sample-data contributions: synthetic images with ground truth, generated offline at run time.

Each returns an image layer and its ground-truth labels layer (hidden, so the
model's own result is what the user sees first).
"""

from __future__ import annotations

from .sample_data_gen import synthetic_nuclei, synthetic_nuclei_stack, synthetic_ultrasound


def _layers(image, labels, name: str, **image_kwargs) -> list[tuple]:
    return [
        (image, {"name": name, **image_kwargs}, "image"),
        (labels, {"name": f"{name} ground truth", "visible": False, "opacity": 0.5}, "labels"),
    ]


def nuclei_sample() -> list[tuple]:
    """Synthetic fluorescence nuclei, 2D 16-bit, 256 x 256, 40 instances."""
    image, labels = synthetic_nuclei((256, 256), n=40, seed=0)
    return _layers(image, labels, "synthetic nuclei", colormap="gray", contrast_limits=(0, int(image.max())))


def nuclei_3d_sample() -> list[tuple]:
    """Synthetic fluorescence nuclei, 3D stack (12 x 128 x 128), 16-bit."""
    image, labels = synthetic_nuclei_stack((12, 128, 128), n=14, seed=0)
    return _layers(image, labels, "synthetic nuclei 3D", colormap="gray", contrast_limits=(0, int(image.max())))


def ultrasound_sample() -> list[tuple]:
    """Synthetic B-mode ultrasound with one elliptical object, 8-bit, 240 x 320."""
    image, mask = synthetic_ultrasound((240, 320), seed=0)
    return _layers(image, mask, "synthetic ultrasound", colormap="gray")
