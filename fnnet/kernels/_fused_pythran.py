"""Pythran source of the fused kernels (compiled to fnnet.kernels._fused).

What a chain ``conv2d|dense|batch_norm -> relu [-> max_pool2d]`` runs after its head
(the matrix product; batch norm's statistics), as one pass where the layers make three
(fnnet/layers/_fuse.py). The last per-channel step of the head is ``v = x * scale +
shift``: the bias add with scale 1 (``z * 1`` is ``z`` exactly, so ``z * 1 + b`` has the
bits of ``z + b``), batch norm's ``xhat * scale + shift`` after ``standardize`` wrote
``xhat``. Each kernel repeats the unfused kernels' operations element for element, in
the input's dtype (no reassociation, no FMA: the same rounding): ReLU as ``max(v, 0) +
0`` (pythran's ``max(a, b)`` is ``b if a < b else a``: NaN stays NaN, negatives and -inf
become 0, and the ``+ 0`` turns -0.0 into 0.0, as ``np.maximum(v, 0)``), pooling's tie
rule (the first maximal element of a window in row-major order; a NaN beats any number),
and ReLU's gradient ``(0 + dy) * (y > 0)`` at a window's winner, where the unfused passes
zero the gradient, add ``dy`` and multiply by the mask. Arrays are C-contiguous; ``x``
and ``y`` are (N, C, S) for ``scale_shift_relu`` and ``standardize`` (a dense output (N,
F) is (N, F, 1)) and (N, C, H, W) for pooling. Numpy twins: fnnet/kernels/fused.py.

The zero is ``np.zeros_like(scale[:1])[0]``, of the input's dtype: a literal ``0.`` is a
double, which turned the float32 loops into double ones, 10x slower (measured on
LeNet's first pooling input). The loops are branch-free where the data decide (a
mispredicted branch a window costs 4-5x, see _pool_pythran.py); the 2x2 kernels say when
they met a NaN, and the dispatch then runs the general loop.
"""
import numpy as np


# pythran export standardize(float32[:,:,:], float32[:,:], float32[:,:,:])
# pythran export standardize(float64[:,:,:], float64[:,:], float64[:,:,:])
def standardize(x, coef, xhat):
    # xhat = (x - mean) * inv_std (coef rows 0 and 1), as _norm_pythran.bn_normalize
    n, c, s = x.shape
    for i in range(n):
        for k in range(c):
            xhat[i, k] = (x[i, k] - coef[0, k]) * coef[1, k]


# pythran export scale_shift_relu(float32[:,:,:], float32[:], float32[:], float32[:,:,:])
# pythran export scale_shift_relu(float64[:,:,:], float64[:], float64[:], float64[:,:,:])
def scale_shift_relu(x, scale, shift, y):
    # y may be x (in place)
    n, c, s = x.shape
    zero = np.zeros_like(scale[:1])[0]
    if s == 1:  # a dense layer's output: the features innermost
        for i in range(n):
            for k in range(c):
                y[i, k, 0] = max(x[i, k, 0] * scale[k] + shift[k], zero) + zero
        return
    for i in range(n):
        for k in range(c):
            sc = scale[k]
            sf = shift[k]
            xp = x[i, k]
            yp = y[i, k]
            for j in range(s):
                yp[j] = max(xp[j] * sc + sf, zero) + zero


# pythran export scale_shift_relu_max_pool(float32[:,:,:,:], float32[:], float32[:], int, int, int, int, float32[:,:,:,:], int64[:,:,:,:])
# pythran export scale_shift_relu_max_pool(float64[:,:,:,:], float64[:], float64[:], int, int, int, int, float64[:,:,:,:], int64[:,:,:,:])
def scale_shift_relu_max_pool(x, scale, shift, kh, kw, sh, sw, y, idx):
    # any window, the NaN rule as in _pool_pythran.max_pool_forward
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(scale[:1])[0]
    for i in range(n):
        for k in range(c):
            sc = scale[k]
            sf = shift[k]
            xp = x[i, k]
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


# pythran export scale_shift_relu_max_pool_2x2(float32[:,:,:,:], float32[:], float32[:], float32[:,:,:,:], int64[:,:,:,:])
# pythran export scale_shift_relu_max_pool_2x2(float64[:,:,:,:], float64[:], float64[:], float64[:,:,:,:], int64[:,:,:,:])
def scale_shift_relu_max_pool_2x2(x, scale, shift, y, idx):
    # 2x2 windows at stride 2, branch-free as _pool_pythran.max_pool_2x2_forward; returns 1
    # if a window met a NaN (the caller then runs scale_shift_relu_max_pool), else 0
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(scale[:1])[0]
    nan = 0
    for i in range(n):
        for k in range(c):
            sc = scale[k]
            sf = shift[k]
            xp = x[i, k]
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


# pythran export scale_shift_relu_max_pool_values(float32[:,:,:,:], float32[:], float32[:], int, int, int, int, float32[:,:,:,:])
# pythran export scale_shift_relu_max_pool_values(float64[:,:,:,:], float64[:], float64[:], int, int, int, int, float64[:,:,:,:])
def scale_shift_relu_max_pool_values(x, scale, shift, kh, kw, sh, sw, y):
    # maxima without positions (inference); returns 1 if a window met a NaN (max() need
    # not keep it: the caller then runs scale_shift_relu_max_pool), else 0
    n, c = x.shape[0], x.shape[1]
    ho, wo = y.shape[2], y.shape[3]
    zero = np.zeros_like(scale[:1])[0]
    nan = 0
    if kh == 2 and kw == 2 and sh == 2 and sw == 2:  # unrolled, a loop nest of its own: 2x the one below
        for i in range(n):
            for k in range(c):
                sc = scale[k]
                sf = shift[k]
                xp = x[i, k]
                yp = y[i, k]
                for oh in range(ho):
                    r = 2 * oh
                    for ow in range(wo):
                        q = 2 * ow
                        a0 = max(xp[r, q] * sc + sf, zero) + zero
                        a1 = max(xp[r, q + 1] * sc + sf, zero) + zero
                        a2 = max(xp[r + 1, q] * sc + sf, zero) + zero
                        a3 = max(xp[r + 1, q + 1] * sc + sf, zero) + zero
                        nan |= int(a0 != a0) | int(a1 != a1) | int(a2 != a2) | int(a3 != a3)
                        yp[oh, ow] = max(max(a0, a1), max(a2, a3))
        return nan
    for i in range(n):
        for k in range(c):
            sc = scale[k]
            sf = shift[k]
            xp = x[i, k]
            yp = y[i, k]
            for oh in range(ho):
                h0 = oh * sh
                for ow in range(wo):
                    w0 = ow * sw
                    m = max(xp[h0, w0] * sc + sf, zero) + zero
                    for a in range(kh):
                        for q in range(kw):
                            v = max(xp[h0 + a, w0 + q] * sc + sf, zero) + zero
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
