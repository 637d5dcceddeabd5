"""Data augmentation as pure, keyed functions of a batch: ``augment(key, images) -> images``.

Each function here returns an augmentation for NCHW batches (N, C, H, W) of floats. One
call draws every image's parameters from ``key`` at once and transforms the whole batch
with array operations (no loop over images); the input is never changed and the output
is a new array of its dtype. The same key gives the same bits, so a training run whose
batch ``t`` is augmented with ``fold_in(key, t)`` stays a pure function of (seed, step)
and resumes exactly.

* :func:`translate`: shift by whole pixels (pad with zeros, crop);
* :func:`affine`: rotation, scaling and shear about the centre, bilinear sampling;
* :func:`cutout`: a zeroed square at a random place;
* :func:`hflip`: a mirror image, left to right, with a probability (clothing, not digits);
* :func:`chain`: several in order, each with its own key.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import kernels, random
from .._errors import DTypeError, InvalidTypeError, ShapeError, check_int, check_real
from ..random import Key

__all__ = ["Augment", "affine", "chain", "cutout", "hflip", "translate"]

Augment = Callable[[Key, np.ndarray], np.ndarray]
"""``augment(key, images) -> images``: a pure function of a key and an NCHW batch."""


def _images(name: str, images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise ShapeError(f"{name}: images must be an (N, C, H, W) array, got {getattr(images, 'shape', type(images))}")
    if images.dtype.kind != "f":
        raise DTypeError(f"{name}: images must be floats, got {images.dtype}")
    return images


def translate(max_shift: int) -> Augment:
    """Shift each image by ``(dy, dx)``, each drawn uniformly from ``[-max_shift, max_shift]``
    whole pixels; pixels shifted in are zero."""
    s = check_int("translate", "max_shift", max_shift, 0)

    def apply(key: Key, images: np.ndarray) -> np.ndarray:
        x = _images("translate", images)
        n, c, h, w = x.shape
        offsets = random.generator(key).integers(0, 2 * s + 1, (n, 2))
        padded = np.zeros((n, c, h + 2 * s, w + 2 * s), x.dtype)
        padded[:, :, s : s + h, s : s + w] = x
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))  # (n, c, 2s+1, 2s+1, h, w)
        return windows[np.arange(n), :, offsets[:, 0], offsets[:, 1]]  # a gather: a new array

    return apply


def affine(rotate: float = 0.0, scale: float = 0.0, shear: float = 0.0) -> Augment:
    """Rotate by an angle from ``[-rotate, rotate]`` degrees, scale by a factor from
    ``[1 - scale, 1 + scale]`` and shear by an angle from ``[-shear, shear]`` degrees,
    about the image centre; each output pixel is sampled bilinearly from the input
    (zeros outside it)."""
    rotate = check_real("affine", "rotate", rotate, 0.0, 180.0)
    scale = check_real("affine", "scale", scale, 0.0, 0.9)
    shear = check_real("affine", "shear", shear, 0.0, 60.0)

    def apply(key: Key, images: np.ndarray) -> np.ndarray:
        x = _images("affine", images)
        n, c, h, w = x.shape
        u = random.generator(key).uniform(-1.0, 1.0, (n, 3))
        theta, phi = np.deg2rad(rotate * u[:, 0]), np.deg2rad(shear * u[:, 2])
        zoom = 1.0 + scale * u[:, 1]
        # the inverse map, output -> input: rotate back, unshear, unzoom
        cos, sin, tan = np.cos(theta), np.sin(theta), np.tan(phi)
        # the inverse map, output pixel -> input point, about the centre c:
        # src = A (out - c) + c with A = unshear @ rotate(-theta) / zoom
        a00, a01 = (cos + tan * sin) / zoom, (sin - tan * cos) / zoom
        a10, a11 = -sin / zoom, cos / zoom
        cy, cx = (h - 1) / 2, (w - 1) / 2
        m = np.empty((n, 2, 3))
        m[:, 0] = np.stack([a00, a01, cy - a00 * cy - a01 * cx], -1)
        m[:, 1] = np.stack([a10, a11, cx - a10 * cy - a11 * cx], -1)
        return kernels.affine_warp(x, m, np.empty_like(x))

    return apply


def cutout(size: int) -> Augment:
    """Zero a ``size`` x ``size`` square (clipped at the borders) centred at a random
    pixel of each image (DeVries & Taylor 2017)."""
    size = check_int("cutout", "size", size, 1)

    def apply(key: Key, images: np.ndarray) -> np.ndarray:
        x = _images("cutout", images)
        n, c, h, w = x.shape
        rng = random.generator(key)
        cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
        top, left = cy - size // 2, cx - size // 2
        rows = np.arange(h)[None, :] - top[:, None]
        cols = np.arange(w)[None, :] - left[:, None]
        keep = ~(((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :])
        return x * keep[:, None, :, :].astype(x.dtype)

    return apply


def hflip(p: float = 0.5) -> Augment:
    """Mirror each image left to right (its last axis) with probability ``p``: for classes
    that a mirror keeps (a shirt, a shoe), not for digits (a mirrored 2 is no digit)."""
    p = check_real("hflip", "p (the probability of a flip)", p, 0.0, 1.0)

    def apply(key: Key, images: np.ndarray) -> np.ndarray:
        x = _images("hflip", images)
        flip = np.less(random.generator(key).random(x.shape[0]), p)
        return np.where(flip[:, None, None, None], x[..., ::-1], x)  # (a new array)

    return apply


def chain(*augments: Augment) -> Augment:
    """Apply ``augments`` in order; the ``i``-th gets ``split(key, len(augments))[i]``."""
    for i, a in enumerate(augments):
        if not callable(a):
            raise InvalidTypeError(f"augment.chain: argument {i} is a {type(a).__name__}, not an augmentation")

    def apply(key: Key, images: np.ndarray) -> np.ndarray:
        out = _images("augment.chain", images)
        for k, a in zip(random.split(key, len(augments)) if augments else (), augments):
            out = a(k, out)
        return out if augments else out.copy()

    return apply
