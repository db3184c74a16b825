"""Synthetic sample images with exact ground truth, generated at run time (no downloads, no third-party pixels).

* :func:`synthetic_nuclei`: fluorescence-like nuclei, 16-bit, with instance labels.
* :func:`synthetic_nuclei_stack`: the same in 3D (Z, H, W), objects spanning several slices.
* :func:`synthetic_ultrasound`: a B-mode-like sector with speckle and one bright elliptical
  object (a "fetal head"), 8-bit, with a binary mask.

Pure numpy/scipy and deterministic for a given seed, so tests and screenshots are reproducible.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["synthetic_nuclei", "synthetic_nuclei_stack", "synthetic_ultrasound"]


def _ellipse_mask(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def synthetic_nuclei(
    shape: tuple[int, int] = (256, 256), n: int = 40, seed: int = 0, radius: tuple[float, float] = (6.0, 12.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Fluorescence-like nuclei: returns (image uint16, instance labels uint16).

    Ellipses of random size, orientation and brightness are placed with little
    overlap (some touch, as real nuclei do), blurred like an optical PSF, on a
    smooth uneven background with shot and read noise.
    """
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    labels = np.zeros((h, w), np.uint16)
    signal = np.zeros((h, w), np.float32)
    # Chromatin texture: one smooth noise field shared by all nuclei.
    texture = 1.0 + 0.15 * ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 1.5)
    placed = 0
    for _ in range(n * 20):
        if placed >= n:
            break
        ry = rng.uniform(*radius)
        rx = ry * rng.uniform(0.7, 1.0)
        cy, cx = rng.uniform(ry, h - ry), rng.uniform(ry, w - ry)
        mask = _ellipse_mask((h, w), cy, cx, ry, rx, rng.uniform(0, np.pi))
        if np.count_nonzero(mask & (labels > 0)) > 0.05 * np.count_nonzero(mask):
            continue
        mask &= labels == 0
        placed += 1
        labels[mask] = placed
        signal[mask] = rng.uniform(0.45, 1.0) * texture[mask]
    signal = ndimage.gaussian_filter(signal, 1.2)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    background = 0.06 + 0.04 * np.sin(xx / w * np.pi) * np.cos(yy / h * np.pi / 2)
    photons = (signal + background) * 900.0
    image = rng.poisson(np.clip(photons, 0, None)).astype(np.float32) + rng.normal(100.0, 6.0, (h, w))
    return np.clip(image * 4.0, 0, 65535).astype(np.uint16), labels


def synthetic_nuclei_stack(
    shape: tuple[int, int, int] = (12, 128, 128), n: int = 14, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """3D nuclei (ellipsoids over several slices): returns (image (Z, H, W) uint16, labels (Z, H, W) uint16)."""
    rng = np.random.default_rng(seed)
    d, h, w = (int(s) for s in shape)
    zz, yy, xx = np.mgrid[:d, :h, :w].astype(np.float32)
    labels = np.zeros((d, h, w), np.uint16)
    signal = np.zeros((d, h, w), np.float32)
    placed = 0
    for _ in range(n * 20):
        if placed >= n:
            break
        r = rng.uniform(7.0, 12.0)
        rz = rng.uniform(2.0, max(2.5, d / 4))
        cz, cy, cx = rng.uniform(1, d - 1), rng.uniform(r, h - r), rng.uniform(r, w - r)
        dist = ((zz - cz) / rz) ** 2 + ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.75, 1.0))) ** 2
        mask = dist <= 1.0
        if not mask.any() or np.count_nonzero(mask & (labels > 0)) > 0.05 * np.count_nonzero(mask):
            continue
        mask &= labels == 0
        placed += 1
        labels[mask] = placed
        signal[mask] = rng.uniform(0.5, 1.0)
    signal = ndimage.gaussian_filter(signal, (0.6, 1.2, 1.2))
    photons = (signal + 0.06) * 900.0
    image = rng.poisson(photons).astype(np.float32) + rng.normal(100.0, 6.0, signal.shape)
    return np.clip(image * 4.0, 0, 65535).astype(np.uint16), labels


def synthetic_ultrasound(shape: tuple[int, int] = (240, 320), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A B-mode-like ultrasound frame: returns (image uint8, mask uint8 in {0, 1}).

    A fan-shaped field of view with multiplicative (Rayleigh) speckle, depth
    attenuation, and one elliptical object with a bright echogenic rim and a
    darker, textured interior; the mask is the filled ellipse.
    """
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    # Fan: apex above the top centre, 70 degrees wide.
    apex_y, apex_x = -0.15 * h, w / 2
    radius = np.hypot(yy - apex_y, xx - apex_x)
    theta = np.arctan2(xx - apex_x, yy - apex_y)
    fan = (np.abs(theta) < np.deg2rad(35)) & (radius > 0.2 * h) & (radius < 1.12 * h)
    cy, cx = h * rng.uniform(0.5, 0.6), w * rng.uniform(0.45, 0.55)
    ry, rx = h * rng.uniform(0.22, 0.28), w * rng.uniform(0.2, 0.25)
    angle = rng.uniform(-0.4, 0.4)
    mask = _ellipse_mask((h, w), cy, cx, ry, rx, angle) & fan
    ring = mask & ~ndimage.binary_erosion(mask, iterations=4)
    tissue = 0.35 + 0.1 * ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 8) * 4
    tissue[mask] = 0.22
    tissue[ring] = 0.95
    speckle = rng.rayleigh(0.8, (h, w)).astype(np.float32)
    speckle = ndimage.gaussian_filter(speckle, (1.2, 0.6))
    attenuation = np.exp(-radius / (1.8 * h))
    image = np.clip(tissue, 0, 1) * speckle * attenuation * 255.0
    image = ndimage.gaussian_filter(image, 0.7)
    image[~fan] = 0
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)
