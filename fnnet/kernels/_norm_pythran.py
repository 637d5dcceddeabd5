"""Pythran source of the batch-norm kernels (compiled to fnnet.kernels._norm).

Arrays are (N, C, S): a conv input (N, C, H, W) seen with S = H*W, a dense input (N, F)
with S = 1. The statistics are summed in float64, vectorised over S (a float64 vector
of S running sums per channel, added to sample after sample: no reassociation, so the
loops vectorise without -ffast-math); the per-element passes are one loop each where
numpy made a temporary per operation. On NET-BN's first layer (64 x 16 x 26 x 26,
float32) the moments take 330 us (numpy's mean and var: 610 us) and the gradient sums
280 us (numpy's two sums: 330 us). Numpy twins with the same signatures:
fnnet/kernels/norm.py.
"""
import numpy as np


# pythran export bn_moments(float32[:,:,:], float64[:,:])
# pythran export bn_moments(float64[:,:,:], float64[:,:])
def bn_moments(x, out):
    # out[0, c]: the mean of channel c; out[1, c]: its sum of squared deviations (two passes,
    # each element's deviation in double: element loops, which gcc vectorises, 2.5x the slices)
    n, c, s = x.shape
    acc = np.zeros(s)
    for k in range(c):
        acc[:] = 0.0
        for i in range(n):
            for j in range(s):
                acc[j] += x[i, k, j]
        mean = np.sum(acc) / (n * s)
        acc[:] = 0.0
        for i in range(n):
            for j in range(s):
                d = x[i, k, j] - mean
                acc[j] += d * d
        out[0, k] = mean
        out[1, k] = np.sum(acc)


# pythran export bn_normalize(float32[:,:,:], float32[:,:], float32[:,:,:], float32[:,:,:])
# pythran export bn_normalize(float64[:,:,:], float64[:,:], float64[:,:,:], float64[:,:,:])
def bn_normalize(x, coef, xhat, y):
    # coef rows: mean, inv_std, scale, shift (per channel); xhat = (x - mean) * inv_std; y = xhat * scale + shift
    n, c, s = x.shape
    for i in range(n):
        for k in range(c):
            xhat[i, k] = (x[i, k] - coef[0, k]) * coef[1, k]
            y[i, k] = xhat[i, k] * coef[2, k] + coef[3, k]


# pythran export bn_grad_sums(float32[:,:,:], float32[:,:,:], float64[:,:])
# pythran export bn_grad_sums(float64[:,:,:], float64[:,:,:], float64[:,:])
def bn_grad_sums(dy, xhat, out):
    # out[0, c] = sum of dy, out[1, c] = sum of dy * xhat (the product in the arrays' dtype)
    n, c, s = dy.shape
    a = np.zeros(s)
    b = np.zeros(s)
    for k in range(c):
        a[:] = 0.0
        b[:] = 0.0
        for i in range(n):
            for j in range(s):
                g = dy[i, k, j]
                a[j] += g
                b[j] += g * xhat[i, k, j]
        out[0, k] = np.sum(a)
        out[1, k] = np.sum(b)


# pythran export bn_backward(float32[:,:,:], float32[:,:,:], float32[:,:], float32[:,:,:])
# pythran export bn_backward(float64[:,:,:], float64[:,:,:], float64[:,:], float64[:,:,:])
def bn_backward(dy, xhat, k, dx):
    # dx = k[0] * dy - k[1] - k[2] * xhat (per channel)
    n, c, s = dy.shape
    for i in range(n):
        for j in range(c):
            dx[i, j] = k[0, j] * dy[i, j] - k[1, j] - k[2, j] * xhat[i, j]
