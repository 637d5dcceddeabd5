"""Pythran source of the pooling kernels (compiled to fnnet.kernels._pool).

Tie rule of max pooling: the first maximal element of the window in row-major order
wins; a NaN counts as larger than any number (the first NaN wins), as numpy.argmax.
The test ``best == best and not (v <= best)`` says "v beats best" under that rule.
The ``*_2x2_*`` kernels are the
2x2 windows at stride 2 of inputs without NaN: ``max_pool_2x2_forward`` says whether it
met one (then fnnet/kernels/__init__.py runs ``max_pool_forward``); for
``max_pool_2x2_values`` the wrapper checks first, with one numpy min-reduce (a NaN
check in pythran is a scalar loop, 5-7x slower).
Numpy twins with the same signatures: fnnet/kernels/pool.py. Measured choices
(benchmarks/bench_kernels.py): max pooling as scalar loops, its 2x2 case without branches;
for inference, maxima alone as whole-array expressions; average pooling and its
gradient as strided plane slices.
"""
import numpy as np

# pythran export max_pool_forward(float32[:,:,:,:], int, int, int, int, float32[:,:,:,:], int64[:,:,:,:])
# pythran export max_pool_forward(float64[:,:,:,:], int, int, int, int, float64[:,:,:,:], int64[:,:,:,:])
def max_pool_forward(x, kh, kw, sh, sw, y, idx):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for b in range(n):
        for ci in range(c):
            for oh in range(ho):
                h0 = oh * sh
                for ow in range(wo):
                    w0 = ow * sw
                    best = x[b, ci, h0, w0]
                    bi = h0 * w + w0
                    for i in range(kh):
                        for j in range(kw):
                            v = x[b, ci, h0 + i, w0 + j]
                            if best == best and not (v <= best):
                                best = v
                                bi = (h0 + i) * w + w0 + j
                    y[b, ci, oh, ow] = best
                    idx[b, ci, oh, ow] = bi


# pythran export max_pool_2x2_forward(float32[:,:,:,:], float32[:,:,:,:], int64[:,:,:,:])
# pythran export max_pool_2x2_forward(float64[:,:,:,:], float64[:,:,:,:], int64[:,:,:,:])
def max_pool_2x2_forward(x, y, idx):
    # a window is a tournament (a0 vs a1, a2 vs a3, then the winners; a tie keeps the
    # earlier) in max() and integer arithmetic on the comparisons. Not "a if s else b":
    # gcc compiles that to a branch, which real data mispredicts about once a window
    # (5x slower; a benchmark that repeats one input hides it, as the predictor learns
    # it). Without NaNs "v beats best" is v > best; the NaN flag costs 10-20 %, against a
    # separate scan's 1 us a call
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    nan = 0
    for b in range(n):
        for ci in range(c):
            xp = x[b, ci]
            yp = y[b, ci]
            ip = idx[b, ci]
            for oh in range(ho):
                r = 2 * oh
                for ow in range(wo):
                    q = 2 * ow
                    a0 = xp[r, q]
                    a1 = xp[r, q + 1]
                    a2 = xp[r + 1, q]
                    a3 = xp[r + 1, q + 1]
                    k1 = int(a1 > a0)
                    k2 = int(a3 > a2)
                    m1 = max(a0, a1)
                    m2 = max(a2, a3)
                    s = int(m2 > m1)
                    yp[oh, ow] = max(m1, m2)
                    ip[oh, ow] = r * w + q + k1 + s * (w + k2 - k1)
                    nan |= int(a0 != a0) | int(a1 != a1) | int(a2 != a2) | int(a3 != a3)
    return nan


# pythran export max_pool_values(float32[:,:,:,:], int, int, int, int, float32[:,:,:,:])
# pythran export max_pool_values(float64[:,:,:,:], int, int, int, int, float64[:,:,:,:])
def max_pool_values(x, kh, kw, sh, sw, y):
    # maxima without arg-max, for inference; NaN propagates
    ho, wo = y.shape[2], y.shape[3]
    rs, cs = sh * (ho - 1) + 1, sw * (wo - 1) + 1
    y[:] = x[:, :, 0:rs:sh, 0:cs:sw]
    for i in range(kh):
        for j in range(kw):
            if i > 0 or j > 0:
                v = x[:, :, i:i + rs:sh, j:j + cs:sw]
                y[:] = np.where((v > y) | (v != v), v, y)


# pythran export max_pool_2x2_values(float32[:,:,:,:], float32[:,:,:,:])
# pythran export max_pool_2x2_values(float64[:,:,:,:], float64[:,:,:,:])
def max_pool_2x2_values(x, y):
    # x holds no NaN (np.maximum's tree would drop one): several times max_pool_forward
    ho, wo = y.shape[2], y.shape[3]
    rs, cs = 2 * ho, 2 * wo
    y[:] = np.maximum(np.maximum(x[:, :, 0:rs:2, 0:cs:2], x[:, :, 0:rs:2, 1:cs:2]),
                      np.maximum(x[:, :, 1:rs:2, 0:cs:2], x[:, :, 1:rs:2, 1:cs:2]))


# pythran export max_pool_backward(float32[:,:,:,:], int64[:,:,:,:], float32[:,:,:])
# pythran export max_pool_backward(float64[:,:,:,:], int64[:,:,:,:], float64[:,:,:])
def max_pool_backward(dy, idx, dx):
    # dx is (N, C, H*W): the flat plane index needs no division
    n, c, ho, wo = dy.shape
    dx[:] = 0
    for b in range(n):
        for ci in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    dx[b, ci, idx[b, ci, oh, ow]] += dy[b, ci, oh, ow]


# pythran export avg_pool_forward(float32[:,:,:,:], int, int, int, int, float32[:,:,:,:])
# pythran export avg_pool_forward(float64[:,:,:,:], int, int, int, int, float64[:,:,:,:])
def avg_pool_forward(x, kh, kw, sh, sw, y):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    rs, cs = sh * (ho - 1) + 1, sw * (wo - 1) + 1
    scale = 1.0 / (kh * kw)
    for b in range(n):
        for ci in range(c):
            acc = x[b, ci, 0:rs:sh, 0:cs:sw].copy()
            for i in range(kh):
                for j in range(kw):
                    if i > 0 or j > 0:
                        acc += x[b, ci, i:i + rs:sh, j:j + cs:sw]
            y[b, ci] = acc * scale


# pythran export avg_pool_backward(float32[:,:,:,:], int, int, int, int, float32[:,:,:,:])
# pythran export avg_pool_backward(float64[:,:,:,:], int, int, int, int, float64[:,:,:,:])
def avg_pool_backward(dy, kh, kw, sh, sw, dx):
    n, c, h, w = dx.shape
    ho, wo = dy.shape[2], dy.shape[3]
    rs, cs = sh * (ho - 1) + 1, sw * (wo - 1) + 1
    scale = 1.0 / (kh * kw)
    dx[:] = 0
    for b in range(n):
        for ci in range(c):
            g = dy[b, ci] * scale
            for i in range(kh):
                for j in range(kw):
                    dx[b, ci, i:i + rs:sh, j:j + cs:sw] += g
