"""Numpy twin of the image-warp kernel (fnnet/kernels/_warp_pythran.py)."""

from __future__ import annotations

import numpy as np


def affine_warp(x: np.ndarray, m: np.ndarray, out: np.ndarray) -> None:
    """Bilinear samples of ``x`` (N, C, H, W) at ``(sy, sx) = m[i] @ (r, q, 1)`` for each
    output pixel ``(r, q)`` of image ``i`` into ``out``; zeros outside ``x``. ``m`` is
    float64 (N, 2, 3); arithmetic in float64, neighbours added in the order
    (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1)."""
    n, c, h, w = x.shape
    r = np.arange(h, dtype=np.float64)[None, :, None]
    q = np.arange(w, dtype=np.float64)[None, None, :]
    sy = m[:, 0, 0, None, None] * r + m[:, 0, 1, None, None] * q + m[:, 0, 2, None, None]  # (n, h, w)
    sx = m[:, 1, 0, None, None] * r + m[:, 1, 1, None, None] * q + m[:, 1, 2, None, None]
    fy0, fx0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - fy0, sx - fx0
    y0, x0 = fy0.astype(np.int64), fx0.astype(np.int64)
    flat = x.reshape(n, c, h * w)
    acc = np.zeros((n, c, h * w))
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        inside = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)).reshape(n, 1, h * w)
        idx = (np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)).reshape(n, 1, h * w)
        term = weight.reshape(n, 1, h * w) * np.take_along_axis(flat, idx, axis=2)
        acc += np.where(inside, term, 0.0)
    out[...] = acc.reshape(n, c, h, w)
