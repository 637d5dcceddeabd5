"""Numpy twins of the convolution kernels (reference; fallback when nothing is compiled).

Same signatures as fnnet/kernels/_conv_pythran.py. Layout: ``x`` is (N, C, H, W);
``cols`` is (N, C*kh*kw, Ho, Wo) with row ``(c*kh + i)*kw + j`` holding the input
pixels under filter tap (i, j) of channel c, so that ``w.reshape(K, -1) @ cols``
(with cols seen as (N, C*kh*kw, Ho*Wo)) is the convolution. ``rows`` is (N, Ho, Wo,
C*kh*kw), one row per output pixel, with column ``((g*kh + i)*kw + j)*C/G + c`` holding
channel c of group g under tap (i, j): a shard's patches as one matrix, whose product
with the weights in that order is the whole shard's convolution. Padding (top, bottom,
left, right) is zero padding. The output size (Ho, Wo) is read from ``cols`` or ``rows``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _pad(x: np.ndarray, pt: int, pb: int, pl: int, pr: int) -> np.ndarray:
    if pt == pb == pl == pr == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))


def _windows(
    xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int, ho: int, wo: int,
) -> np.ndarray:
    """(N, C, kh, kw, Ho, Wo) strided view of the receptive fields of a padded input."""
    win = sliding_window_view(xp, (dil_h * (kh - 1) + 1, dil_w * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw, ::dil_h, ::dil_w]
    return win.transpose(0, 1, 4, 5, 2, 3)


def im2col(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int,
    pt: int, pb: int, pl: int, pr: int, cols: np.ndarray,
) -> None:
    """Write the (N, C*kh*kw, Ho, Wo) patch matrix of ``x`` into ``cols``."""
    n, c = x.shape[:2]
    ho, wo = cols.shape[2:]
    win = _windows(_pad(x, pt, pb, pl, pr), kh, kw, sh, sw, dil_h, dil_w, ho, wo)
    cols[...] = win.reshape(n, c * kh * kw, ho, wo)


def col2im(
    cols: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int,
    pt: int, pb: int, pl: int, pr: int, x: np.ndarray,
) -> None:
    """Adjoint of :func:`im2col`: scatter-add ``cols`` back into ``x`` (N, C, H, W)."""
    n, c, h, w = x.shape
    ho, wo = cols.shape[2:]
    xp = np.zeros((n, c, h + pt + pb, w + pl + pr), x.dtype)
    c6 = cols.reshape(n, c, kh, kw, ho, wo)
    rows, cols_ = sh * (ho - 1) + 1, sw * (wo - 1) + 1
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dil_h : i * dil_h + rows : sh, j * dil_w : j * dil_w + cols_ : sw] += c6[:, :, i, j]
    x[...] = xp[:, :, pt : pt + h, pl : pl + w]


def _rows_as_cols(rows: np.ndarray, groups: int, kh: int, kw: int) -> np.ndarray:
    """(N, Ho, Wo, G*kh*kw*C/G) in rows' order as (N, C*kh*kw, Ho, Wo) in cols' order."""
    n, ho, wo, depth = rows.shape
    cg = depth // (groups * kh * kw)
    r7 = rows.reshape(n, ho, wo, groups, kh, kw, cg)
    return r7.transpose(0, 3, 6, 4, 5, 1, 2).reshape(n, groups * cg * kh * kw, ho, wo)


def im2row(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int,
    pt: int, pb: int, pl: int, pr: int, groups: int, xt: np.ndarray, rows: np.ndarray,
) -> None:
    """Write the (N, Ho, Wo, C*kh*kw) patch rows of ``x`` into ``rows`` (``xt``, an
    (N, H+pt+pb, W+pl+pr, C) scratch array, is the compiled kernel's; unused here)."""
    n, c = x.shape[:2]
    ho, wo = rows.shape[1:3]
    cg = c // groups
    win = _windows(_pad(x, pt, pb, pl, pr), kh, kw, sh, sw, dil_h, dil_w, ho, wo)  # (N, C, kh, kw, Ho, Wo)
    r7 = win.reshape(n, groups, cg, kh, kw, ho, wo).transpose(0, 5, 6, 1, 3, 4, 2)
    rows[...] = r7.reshape(rows.shape)


def row2im(
    rows: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int,
    pt: int, pb: int, pl: int, pr: int, groups: int, xt: np.ndarray, x: np.ndarray,
) -> None:
    """Adjoint of :func:`im2row`: scatter-add ``rows`` back into ``x`` (N, C, H, W)."""
    col2im(np.ascontiguousarray(_rows_as_cols(rows, groups, kh, kw)), kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, x)
