"""Pythran source of the convolution data-movement kernels (compiled to fnnet.kernels._conv).

The contractions stay in numpy's BLAS; these kernels move data around them. im2col and
col2im: without padding the input is read (or the gradient written) in place; with
padding through one zero-padded copy. ``cols`` is (N, C*kh*kw, Ho, Wo): the output size
is read from it, not recomputed. im2row/row2im go through an NHWC copy ``xt`` (the
caller's scratch array), from which each tap of a patch is one run of C/G floats. Numpy
twins with the same signatures: fnnet/kernels/conv.py.

The common geometry (stride 1, no dilation, one group) runs scalar loops over views
taken with integer indices (``cols[b, r]``), which gcc compiles to plain strided loops:
1.05-1.6x the row-slice loops that every other geometry runs (a slice expression pays
its set-up per row of Wo pixels). Two rules of Pythran's that these loops obey: a view
taken with a slice (``xt[b, y, a:z]``) assigned to a name is a copy, so views here use
integer indices only; and a helper function whose argument is written only through
such a view gets a copy of it (its effects analysis does not follow the alias), so
the loops that write through views live in the exported functions themselves (the
row-slice helpers write by subscript).
"""
import numpy as np


def _fast(sh, sw, dil_h, dil_w, groups):
    return sh == 1 and sw == 1 and dil_h == 1 and dil_w == 1 and groups == 1


def _im2col(xp, kh, kw, sh, sw, dil_h, dil_w, cols):  # any geometry, by row slices
    n, c = xp.shape[0], xp.shape[1]
    ho, wo = cols.shape[2], cols.shape[3]
    span = sw * (wo - 1) + 1
    for b in range(n):
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    r = (ci * kh + i) * kw + j
                    if sw == 1:  # a step-free slice is a contiguous copy (about 20% faster)
                        for oh in range(ho):
                            cols[b, r, oh] = xp[b, ci, i * dil_h + oh * sh, j * dil_w:j * dil_w + wo]
                    else:
                        for oh in range(ho):
                            cols[b, r, oh] = xp[b, ci, i * dil_h + oh * sh, j * dil_w:j * dil_w + span:sw]


def _col2im(cols, kh, kw, sh, sw, dil_h, dil_w, xp):  # any geometry, by row slices
    n, c = xp.shape[0], xp.shape[1]
    ho, wo = cols.shape[2], cols.shape[3]
    span = sw * (wo - 1) + 1
    for b in range(n):
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    r = (ci * kh + i) * kw + j
                    if sw == 1:
                        for oh in range(ho):
                            xp[b, ci, i * dil_h + oh * sh, j * dil_w:j * dil_w + wo] += cols[b, r, oh]
                    else:
                        for oh in range(ho):
                            xp[b, ci, i * dil_h + oh * sh, j * dil_w:j * dil_w + span:sw] += cols[b, r, oh]


# pythran export im2col(float32[:,:,:,:], int, int, int, int, int, int, int, int, int, int, float32[:,:,:,:])
# pythran export im2col(float64[:,:,:,:], int, int, int, int, int, int, int, int, int, int, float64[:,:,:,:])
def im2col(x, kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, cols):
    n, c, h, w = x.shape
    xs = x
    if pt or pb or pl or pr:
        xs = np.zeros((n, c, h + pt + pb, w + pl + pr), x.dtype)
        xs[:, :, pt:pt + h, pl:pl + w] = x
    if not _fast(sh, sw, dil_h, dil_w, 1):
        _im2col(xs, kh, kw, sh, sw, dil_h, dil_w, cols)
        return
    ho, wo = cols.shape[2], cols.shape[3]
    for b in range(n):
        for ci in range(c):
            src = xs[b, ci]
            for i in range(kh):
                for j in range(kw):
                    dst = cols[b, (ci * kh + i) * kw + j]
                    for oh in range(ho):
                        for ow in range(wo):
                            dst[oh, ow] = src[oh + i, ow + j]


# pythran export col2im(float32[:,:,:,:], int, int, int, int, int, int, int, int, int, int, float32[:,:,:,:])
# pythran export col2im(float64[:,:,:,:], int, int, int, int, int, int, int, int, int, int, float64[:,:,:,:])
def col2im(cols, kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, x):
    # each pixel sums its taps in (i, j) order, from 0
    n, c, h, w = x.shape
    padded = pt or pb or pl or pr
    xs = np.zeros((n, c, h + pt + pb, w + pl + pr), x.dtype) if padded else x
    if not padded:
        x[:] = 0
    if _fast(sh, sw, dil_h, dil_w, 1):
        ho, wo = cols.shape[2], cols.shape[3]
        for b in range(n):
            for ci in range(c):
                dst = xs[b, ci]
                for i in range(kh):
                    for j in range(kw):
                        src = cols[b, (ci * kh + i) * kw + j]
                        for oh in range(ho):
                            for ow in range(wo):
                                dst[oh + i, ow + j] += src[oh, ow]
    else:
        _col2im(cols, kh, kw, sh, sw, dil_h, dil_w, xs)
    if padded:
        x[:] = xs[:, :, pt:pt + h, pl:pl + w]


# pythran export im2row(float32[:,:,:,:], int, int, int, int, int, int, int, int, int, int, int, float32[:,:,:,:], float32[:,:,:,:])
# pythran export im2row(float64[:,:,:,:], int, int, int, int, int, int, int, int, int, int, int, float64[:,:,:,:], float64[:,:,:,:])
def im2row(x, kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, groups, xt, rows):
    n, c, h, w = x.shape
    ho, wo = rows.shape[1], rows.shape[2]
    cg = c // groups
    if pt or pb or pl or pr:
        xt[:] = 0
    for b in range(n):  # the NHWC copy
        for y in range(h):
            dst = xt[b, y + pt]
            for xx in range(w):
                for ci in range(c):
                    dst[pl + xx, ci] = x[b, ci, y, xx]
    if _fast(sh, sw, dil_h, dil_w, groups):
        for b in range(n):
            for oh in range(ho):
                for ow in range(wo):
                    row = rows[b, oh, ow]
                    for i in range(kh):
                        src = xt[b, oh + i]
                        for j in range(kw):
                            o = (i * kw + j) * c
                            for ci in range(c):
                                row[o + ci] = src[ow + j, ci]
        return
    for b in range(n):
        for oh in range(ho):
            for ow in range(wo):
                for g in range(groups):
                    for i in range(kh):
                        for j in range(kw):
                            o = ((g * kh + i) * kw + j) * cg
                            rows[b, oh, ow, o:o + cg] = xt[b, oh * sh + i * dil_h, ow * sw + j * dil_w, g * cg:(g + 1) * cg]


# pythran export row2im(float32[:,:,:,:], int, int, int, int, int, int, int, int, int, int, int, float32[:,:,:,:], float32[:,:,:,:])
# pythran export row2im(float64[:,:,:,:], int, int, int, int, int, int, int, int, int, int, int, float64[:,:,:,:], float64[:,:,:,:])
def row2im(rows, kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, groups, xt, x):
    # taps outermost: each pixel sums its taps in col2im's order, (i, j) ascending, from 0
    n, c, h, w = x.shape
    ho, wo = rows.shape[1], rows.shape[2]
    cg = c // groups
    xt[:] = 0
    if _fast(sh, sw, dil_h, dil_w, groups):
        for b in range(n):
            for i in range(kh):
                for j in range(kw):
                    o = (i * kw + j) * c
                    for oh in range(ho):
                        dst = xt[b, oh + i]
                        for ow in range(wo):
                            src = rows[b, oh, ow]
                            for ci in range(c):
                                dst[ow + j, ci] += src[o + ci]
    else:
        for b in range(n):
            for g in range(groups):
                for i in range(kh):
                    for j in range(kw):
                        o = ((g * kh + i) * kw + j) * cg
                        for oh in range(ho):
                            for ow in range(wo):
                                xt[b, oh * sh + i * dil_h, ow * sw + j * dil_w, g * cg:(g + 1) * cg] += rows[b, oh, ow, o:o + cg]
    for b in range(n):  # back to NCHW
        for y in range(h):
            src = xt[b, y + pt]
            for ci in range(c):
                for xx in range(w):
                    x[b, ci, y, xx] = src[pl + xx, ci]
