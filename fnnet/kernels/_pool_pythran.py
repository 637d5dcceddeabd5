"""Pythran source of the pooling kernels (compiled to fnnet.kernels._pool).

Plain loops: here they are already 4-20x faster than numpy (docs/pythran-notes.md).
Tie rule of max pooling: the first maximal element of the window in row-major order
wins; a NaN counts as larger than any number (the first NaN wins), as numpy.argmax.
Numpy twins with the same signatures: fnnet/kernels/pool.py.
"""

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
                            if v > best or (v != v and best == best):
                                best = v
                                bi = (h0 + i) * w + w0 + j
                    y[b, ci, oh, ow] = best
                    idx[b, ci, oh, ow] = bi


# pythran export max_pool_backward(float32[:,:,:,:], int64[:,:,:,:], float32[:,:,:,:])
# pythran export max_pool_backward(float64[:,:,:,:], int64[:,:,:,:], float64[:,:,:,:])
def max_pool_backward(dy, idx, dx):
    n, c, h, w = dx.shape
    ho, wo = dy.shape[2], dy.shape[3]
    dx[:] = 0
    for b in range(n):
        for ci in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    k = idx[b, ci, oh, ow]
                    dx[b, ci, k // w, k % w] += dy[b, ci, oh, ow]


# pythran export avg_pool_forward(float32[:,:,:,:], int, int, int, int, float32[:,:,:,:])
# pythran export avg_pool_forward(float64[:,:,:,:], int, int, int, int, float64[:,:,:,:])
def avg_pool_forward(x, kh, kw, sh, sw, y):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    scale = 1.0 / (kh * kw)
    for b in range(n):
        for ci in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    s = x[b, ci, oh * sh, ow * sw] * 0
                    for i in range(kh):
                        for j in range(kw):
                            s += x[b, ci, oh * sh + i, ow * sw + j]
                    y[b, ci, oh, ow] = s * scale


# pythran export avg_pool_backward(float32[:,:,:,:], int, int, int, int, float32[:,:,:,:])
# pythran export avg_pool_backward(float64[:,:,:,:], int, int, int, int, float64[:,:,:,:])
def avg_pool_backward(dy, kh, kw, sh, sw, dx):
    n, c, h, w = dx.shape
    ho, wo = dy.shape[2], dy.shape[3]
    scale = 1.0 / (kh * kw)
    dx[:] = 0
    for b in range(n):
        for ci in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    g = dy[b, ci, oh, ow] * scale
                    for i in range(kh):
                        for j in range(kw):
                            dx[b, ci, oh * sh + i, ow * sw + j] += g
