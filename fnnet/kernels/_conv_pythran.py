"""Pythran source of the convolution data-movement kernels (compiled to fnnet.kernels._conv).

Written with row slices, not scalar 4-D indexing: pythran vectorises slice
expressions (3-8x faster, see docs/build.md). The contractions themselves stay
in numpy's BLAS. im2col/col2im: without padding the input is read (or the gradient
written) in place; with padding through one zero-padded copy. ``cols`` is (N, C*kh*kw,
Ho, Wo): the output size is read from it, not recomputed. im2row/row2im go through an
NHWC copy ``xt`` (the caller's scratch array), from which each tap of a patch is one run
of C/G floats. Numpy twins with the same signatures: fnnet/kernels/conv.py.
"""
import numpy as np


def _im2col(xp, kh, kw, sh, sw, dil_h, dil_w, cols):
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
                            row = i * dil_h + oh * sh
                            cols[b, r, oh] = xp[b, ci, row, j * dil_w:j * dil_w + wo]
                    else:
                        for oh in range(ho):
                            row = i * dil_h + oh * sh
                            cols[b, r, oh] = xp[b, ci, row, j * dil_w:j * dil_w + span:sw]


def _col2im(cols, kh, kw, sh, sw, dil_h, dil_w, xp):
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
                            row = i * dil_h + oh * sh
                            xp[b, ci, row, j * dil_w:j * dil_w + wo] += cols[b, r, oh]
                    else:
                        for oh in range(ho):
                            row = i * dil_h + oh * sh
                            xp[b, ci, row, j * dil_w:j * dil_w + span:sw] += cols[b, r, oh]


# pythran export im2col(float32[:,:,:,:], int, int, int, int, int, int, int, int, int, int, float32[:,:,:,:])
# pythran export im2col(float64[:,:,:,:], int, int, int, int, int, int, int, int, int, int, float64[:,:,:,:])
def im2col(x, kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, cols):
    n, c, h, w = x.shape
    if pt == 0 and pb == 0 and pl == 0 and pr == 0:
        _im2col(x, kh, kw, sh, sw, dil_h, dil_w, cols)
    else:
        xp = np.zeros((n, c, h + pt + pb, w + pl + pr), x.dtype)
        xp[:, :, pt:pt + h, pl:pl + w] = x
        _im2col(xp, kh, kw, sh, sw, dil_h, dil_w, cols)


# pythran export col2im(float32[:,:,:,:], int, int, int, int, int, int, int, int, int, int, float32[:,:,:,:])
# pythran export col2im(float64[:,:,:,:], int, int, int, int, int, int, int, int, int, int, float64[:,:,:,:])
def col2im(cols, kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, x):
    n, c, h, w = x.shape
    if pt == 0 and pb == 0 and pl == 0 and pr == 0:
        x[:] = 0
        _col2im(cols, kh, kw, sh, sw, dil_h, dil_w, x)
    else:
        xp = np.zeros((n, c, h + pt + pb, w + pl + pr), x.dtype)
        _col2im(cols, kh, kw, sh, sw, dil_h, dil_w, xp)
        x[:] = xp[:, :, pt:pt + h, pl:pl + w]


def _nhwc(x, pt, pl, xt):
    n, c, h, w = x.shape
    for b in range(n):
        for y in range(h):
            for ci in range(c):
                xt[b, y + pt, pl:pl + w, ci] = x[b, ci, y]


# pythran export im2row(float32[:,:,:,:], int, int, int, int, int, int, int, int, int, int, int, float32[:,:,:,:], float32[:,:,:,:])
# pythran export im2row(float64[:,:,:,:], int, int, int, int, int, int, int, int, int, int, int, float64[:,:,:,:], float64[:,:,:,:])
def im2row(x, kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, groups, xt, rows):
    n, c = x.shape[0], x.shape[1]
    ho, wo = rows.shape[1], rows.shape[2]
    cg = c // groups
    if pt or pb or pl or pr:
        xt[:] = 0
    _nhwc(x, pt, pl, xt)
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
    n, c, h, w = x.shape
    ho, wo = rows.shape[1], rows.shape[2]
    cg = c // groups
    xt[:] = 0
    for b in range(n):  # taps outermost: each pixel sums its taps in col2im's order, (i, j) ascending
        for g in range(groups):
            for i in range(kh):
                for j in range(kw):
                    o = ((g * kh + i) * kw + j) * cg
                    for oh in range(ho):
                        for ow in range(wo):
                            xt[b, oh * sh + i * dil_h, ow * sw + j * dil_w, g * cg:(g + 1) * cg] += rows[b, oh, ow, o:o + cg]
    for b in range(n):
        for y in range(h):
            for ci in range(c):
                x[b, ci, y] = xt[b, y + pt, pl:pl + w, ci]
