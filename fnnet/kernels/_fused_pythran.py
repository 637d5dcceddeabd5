"""Pythran source of the fused kernels (compiled to fnnet.kernels._fused).

What a chain ``conv2d -> relu [-> max_pool2d]`` or ``dense -> relu`` runs after its
matrix product, as one pass where the layers make three (fnnet/layers/_fuse.py): the bias
add, ReLU and max pooling forward, and the gradient of pooling and ReLU backward. Each
kernel gives the bits of the unfused layers' kernels, whose operations it repeats
element for element: ``v = z + b`` in the input's dtype (no reassociation, so the same
rounding), ReLU as ``max(v, 0) + 0`` (pythran's ``max(a, b)`` is ``b if a < b else a``:
NaN stays NaN, negatives and -inf become 0, and the ``+ 0`` turns -0.0 into 0.0, as
``np.maximum(v, 0)``), pooling's
tie rule (the first maximal element of a window in row-major order; a NaN beats any
number), and ReLU's gradient ``(0 + dy) * (y > 0)`` at a window's winner, where the
unfused passes zero the gradient, add ``dy`` and multiply by the mask. Arrays are
C-contiguous; ``z`` and ``y`` are (N, C, S) for ``bias_relu`` (a dense output (N, F) is
(N, F, 1)) and (N, C, H, W) for pooling. Numpy twins: fnnet/kernels/fused.py.

The zero is ``np.zeros_like(b[:1])[0]``, of the input's dtype: a literal ``0.`` is a
double, which turned the float32 loops into double ones, 10x slower (measured on
LeNet's first pooling input). The loops are branch-free where the data decide (a
mispredicted branch a window costs 4-5x, see _pool_pythran.py).
"""
import numpy as np


# pythran export bias_relu(float32[:,:,:], float32[:], float32[:,:,:])
# pythran export bias_relu(float64[:,:,:], float64[:], float64[:,:,:])
def bias_relu(z, b, y):
    # y may be z (in place)
    n, c, s = z.shape
    zero = np.zeros_like(b[:1])[0]
    if s == 1:  # a dense layer's output: the features innermost
        for i in range(n):
            for k in range(c):
                y[i, k, 0] = max(z[i, k, 0] + b[k], zero) + zero
        return
    for i in range(n):
        for k in range(c):
            bk = b[k]
            zp = z[i, k]
            yp = y[i, k]
            for j in range(s):
                yp[j] = max(zp[j] + bk, zero) + zero


# pythran export bias_relu_max_pool(float32[:,:,:,:], float32[:], int, int, int, int, float32[:,:,:,:], int64[:,:,:,:])
# pythran export bias_relu_max_pool(float64[:,:,:,:], float64[:], int, int, int, int, float64[:,:,:,:], int64[:,:,:,:])
def bias_relu_max_pool(z, b, kh, kw, sh, sw, y, idx):
    # any window, the NaN rule as in _pool_pythran.max_pool_forward
    n, c, h, w = z.shape
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(b[:1])[0]
    for i in range(n):
        for k in range(c):
            bk = b[k]
            zp = z[i, k]
            for oh in range(ho):
                h0 = oh * sh
                for ow in range(wo):
                    w0 = ow * sw
                    best = max(zp[h0, w0] + bk, zero) + zero
                    bi = h0 * w + w0
                    for a in range(kh):
                        for q in range(kw):
                            v = max(zp[h0 + a, w0 + q] + bk, zero) + zero
                            if best == best and not (v <= best):
                                best = v
                                bi = (h0 + a) * w + w0 + q
                    y[i, k, oh, ow] = best
                    idx[i, k, oh, ow] = bi


# pythran export bias_relu_max_pool_2x2(float32[:,:,:,:], float32[:], float32[:,:,:,:], int64[:,:,:,:])
# pythran export bias_relu_max_pool_2x2(float64[:,:,:,:], float64[:], float64[:,:,:,:], int64[:,:,:,:])
def bias_relu_max_pool_2x2(z, b, y, idx):
    # 2x2 windows at stride 2, branch-free as _pool_pythran.max_pool_2x2_forward; returns 1
    # if a window met a NaN (the caller then runs bias_relu_max_pool), else 0
    n, c, h, w = z.shape
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(b[:1])[0]
    nan = 0
    for i in range(n):
        for k in range(c):
            bk = b[k]
            zp = z[i, k]
            yp = y[i, k]
            ip = idx[i, k]
            for oh in range(ho):
                r = 2 * oh
                for ow in range(wo):
                    q = 2 * ow
                    a0 = max(zp[r, q] + bk, zero) + zero
                    a1 = max(zp[r, q + 1] + bk, zero) + zero
                    a2 = max(zp[r + 1, q] + bk, zero) + zero
                    a3 = max(zp[r + 1, q + 1] + bk, zero) + zero
                    k1 = int(a1 > a0)
                    k2 = int(a3 > a2)
                    m1 = max(a0, a1)
                    m2 = max(a2, a3)
                    s = int(m2 > m1)
                    yp[oh, ow] = max(m1, m2)
                    ip[oh, ow] = r * w + q + k1 + s * (w + k2 - k1)
                    nan |= int(a0 != a0) | int(a1 != a1) | int(a2 != a2) | int(a3 != a3)
    return nan


# pythran export bias_relu_max_pool_values(float32[:,:,:,:], float32[:], int, int, int, int, float32[:,:,:,:])
# pythran export bias_relu_max_pool_values(float64[:,:,:,:], float64[:], int, int, int, int, float64[:,:,:,:])
def bias_relu_max_pool_values(z, b, kh, kw, sh, sw, y):
    # maxima without positions (inference); returns 1 if a window met a NaN (max() need
    # not keep it: the caller then runs bias_relu_max_pool), else 0
    n, c = z.shape[0], z.shape[1]
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(b[:1])[0]
    nan = 0
    if kh == 2 and kw == 2 and sh == 2 and sw == 2:  # unrolled, a loop nest of its own: 2x the one below
        for i in range(n):
            for k in range(c):
                bk = b[k]
                zp = z[i, k]
                yp = y[i, k]
                for oh in range(ho):
                    r = 2 * oh
                    for ow in range(wo):
                        q = 2 * ow
                        a0 = max(zp[r, q] + bk, zero) + zero
                        a1 = max(zp[r, q + 1] + bk, zero) + zero
                        a2 = max(zp[r + 1, q] + bk, zero) + zero
                        a3 = max(zp[r + 1, q + 1] + bk, zero) + zero
                        nan |= int(a0 != a0) | int(a1 != a1) | int(a2 != a2) | int(a3 != a3)
                        yp[oh, ow] = max(max(a0, a1), max(a2, a3))
        return nan
    for i in range(n):
        for k in range(c):
            bk = b[k]
            zp = z[i, k]
            yp = y[i, k]
            for oh in range(ho):
                h0 = oh * sh
                for ow in range(wo):
                    w0 = ow * sw
                    m = max(zp[h0, w0] + bk, zero) + zero
                    for a in range(kh):
                        for q in range(kw):
                            v = max(zp[h0 + a, w0 + q] + bk, zero) + zero
                            m = max(m, v)
                            nan |= int(v != v)
                    yp[oh, ow] = m
    return nan


# pythran export relu_max_pool_backward(float32[:,:,:,:], int64[:,:,:,:], float32[:,:,:,:], int, float32[:,:,:])
# pythran export relu_max_pool_backward(float64[:,:,:,:], int64[:,:,:,:], float64[:,:,:,:], int, float64[:,:,:])
def relu_max_pool_backward(dy, idx, y, overlap, dz):
    # dz (N, C, H*W) is overwritten: (0 + dy) * (y > 0) at each window's winner, 0 elsewhere.
    # Overlapping windows (a winner shared) sum their dy first, then the mask
    n, c, ho, wo = dy.shape
    dz[:] = 0
    for i in range(n):
        for k in range(c):
            dp = dz[i, k]
            for oh in range(ho):
                for ow in range(wo):
                    j = idx[i, k, oh, ow]
                    if overlap:
                        dp[j] += dy[i, k, oh, ow]
                    else:
                        dp[j] = (dp[j] + dy[i, k, oh, ow]) * (y[i, k, oh, ow] > 0)
            if overlap:
                for oh in range(ho):
                    for ow in range(wo):
                        j = idx[i, k, oh, ow]
                        dp[j] = dp[j] * (y[i, k, oh, ow] > 0)


# Batch norm's normalisation as the head of the run (fnnet/kernels/_norm_pythran.py's
# bn_normalize, coef rows mean, inv_std, scale, shift): xhat = (x - mean) * inv_std is
# written whole (batch norm's backward reads it), a plane at a time, and the windows read
# it back from cache for y = xhat * scale + shift, the same operations as bn_normalize.

# pythran export bn_relu(float32[:,:,:], float32[:,:], float32[:,:,:], float32[:,:,:])
# pythran export bn_relu(float64[:,:,:], float64[:,:], float64[:,:,:], float64[:,:,:])
def bn_relu(x, coef, xhat, y):
    n, c, s = x.shape
    zero = np.zeros_like(coef[0, :1])[0]
    for i in range(n):
        for k in range(c):
            mu = coef[0, k]
            inv = coef[1, k]
            sc = coef[2, k]
            sh = coef[3, k]
            xp = xhat[i, k]
            xq = x[i, k]
            yp = y[i, k]
            for j in range(s):
                v = (xq[j] - mu) * inv
                xp[j] = v
                yp[j] = max(v * sc + sh, zero) + zero


# pythran export bn_relu_max_pool(float32[:,:,:,:], float32[:,:], float32[:,:,:,:], int, int, int, int, float32[:,:,:,:], int64[:,:,:,:])
# pythran export bn_relu_max_pool(float64[:,:,:,:], float64[:,:], float64[:,:,:,:], int, int, int, int, float64[:,:,:,:], int64[:,:,:,:])
def bn_relu_max_pool(x, coef, xhat, kh, kw, sh, sw, y, idx):
    # any window, the NaN rule as in _pool_pythran.max_pool_forward
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(coef[0, :1])[0]
    for i in range(n):
        for k in range(c):
            mu = coef[0, k]
            inv = coef[1, k]
            sc = coef[2, k]
            sf = coef[3, k]
            xp = xhat[i, k]
            xq = x[i, k]
            for r in range(h):  # element loops: the 2-D slice expression was up to 2x slower here
                for q in range(w):
                    xp[r, q] = (xq[r, q] - mu) * inv
            for oh in range(ho):
                h0 = oh * sh
                for ow in range(wo):
                    w0 = ow * sw
                    best = max(xp[h0, w0] * sc + sf, zero) + zero
                    bi = h0 * w + w0
                    for a in range(kh):
                        for q in range(kw):
                            v = max(xp[h0 + a, w0 + q] * sc + sf, zero) + zero
                            if best == best and not (v <= best):
                                best = v
                                bi = (h0 + a) * w + w0 + q
                    y[i, k, oh, ow] = best
                    idx[i, k, oh, ow] = bi


# pythran export bn_relu_max_pool_2x2(float32[:,:,:,:], float32[:,:], float32[:,:,:,:], float32[:,:,:,:], int64[:,:,:,:])
# pythran export bn_relu_max_pool_2x2(float64[:,:,:,:], float64[:,:], float64[:,:,:,:], float64[:,:,:,:], int64[:,:,:,:])
def bn_relu_max_pool_2x2(x, coef, xhat, y, idx):
    # 2x2 windows at stride 2, branch-free; returns 1 if a window met a NaN (the caller then
    # runs bn_relu_max_pool), else 0
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(coef[0, :1])[0]
    nan = 0
    for i in range(n):
        for k in range(c):
            mu = coef[0, k]
            inv = coef[1, k]
            sc = coef[2, k]
            sf = coef[3, k]
            xp = xhat[i, k]
            xq = x[i, k]
            for r in range(h):  # element loops: the 2-D slice expression was up to 2x slower here
                for q in range(w):
                    xp[r, q] = (xq[r, q] - mu) * inv
            yp = y[i, k]
            ip = idx[i, k]
            for oh in range(ho):
                r = 2 * oh
                for ow in range(wo):
                    q = 2 * ow
                    a0 = max(xp[r, q] * sc + sf, zero) + zero
                    a1 = max(xp[r, q + 1] * sc + sf, zero) + zero
                    a2 = max(xp[r + 1, q] * sc + sf, zero) + zero
                    a3 = max(xp[r + 1, q + 1] * sc + sf, zero) + zero
                    k1 = int(a1 > a0)
                    k2 = int(a3 > a2)
                    m1 = max(a0, a1)
                    m2 = max(a2, a3)
                    s = int(m2 > m1)
                    yp[oh, ow] = max(m1, m2)
                    ip[oh, ow] = r * w + q + k1 + s * (w + k2 - k1)
                    nan |= int(a0 != a0) | int(a1 != a1) | int(a2 != a2) | int(a3 != a3)
    return nan


# pythran export bn_relu_max_pool_values(float32[:,:,:,:], float32[:,:], int, int, int, int, float32[:,:,:,:])
# pythran export bn_relu_max_pool_values(float64[:,:,:,:], float64[:,:], int, int, int, int, float64[:,:,:,:])
def bn_relu_max_pool_values(x, coef, kh, kw, sh, sw, y):
    # maxima alone (inference: no xhat kept, each tap's xhat rounded to the dtype as
    # bn_normalize stores it); returns 1 if a window met a NaN (the caller then runs
    # bn_relu_max_pool), else 0
    n, c = x.shape[0], x.shape[1]
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(coef[0, :1])[0]
    nan = 0
    if kh == 2 and kw == 2 and sh == 2 and sw == 2:  # unrolled, as in bias_relu_max_pool_values
        for i in range(n):
            for k in range(c):
                mu = coef[0, k]
                inv = coef[1, k]
                sc = coef[2, k]
                sf = coef[3, k]
                xp = x[i, k]
                yp = y[i, k]
                for oh in range(ho):
                    r = 2 * oh
                    for ow in range(wo):
                        q = 2 * ow
                        a0 = max(((xp[r, q] - mu) * inv) * sc + sf, zero) + zero
                        a1 = max(((xp[r, q + 1] - mu) * inv) * sc + sf, zero) + zero
                        a2 = max(((xp[r + 1, q] - mu) * inv) * sc + sf, zero) + zero
                        a3 = max(((xp[r + 1, q + 1] - mu) * inv) * sc + sf, zero) + zero
                        nan |= int(a0 != a0) | int(a1 != a1) | int(a2 != a2) | int(a3 != a3)
                        yp[oh, ow] = max(max(a0, a1), max(a2, a3))
        return nan
    for i in range(n):
        for k in range(c):
            mu = coef[0, k]
            inv = coef[1, k]
            sc = coef[2, k]
            sf = coef[3, k]
            xp = x[i, k]
            yp = y[i, k]
            for oh in range(ho):
                h0 = oh * sh
                for ow in range(wo):
                    w0 = ow * sw
                    m = max(((xp[h0, w0] - mu) * inv) * sc + sf, zero) + zero
                    for a in range(kh):
                        for q in range(kw):
                            v = max(((xp[h0 + a, w0 + q] - mu) * inv) * sc + sf, zero) + zero
                            m = max(m, v)
                            nan |= int(v != v)
                    yp[oh, ow] = m
    return nan
