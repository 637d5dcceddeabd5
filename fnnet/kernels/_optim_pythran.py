"""Pythran source of the optimizer kernels (compiled to fnnet.kernels._optim).

Adam's rule in numpy is eleven passes over the params, each writing a new array (4.4 ms
a step of 422k float32 params, 14 % of the Fashion-MNIST ``best`` step); here it is one
pass in blocks that stay in cache. Each operation's result is stored in an array of the
dtype before the next one reads it: pythran computes a float32 ``/`` in float64, and a
chain of such operations would round once where numpy rounds at each step. The scratch
rows are the caller's because Pythran 0.19 typed scratch rows allocated in this blocked
loop (``np.empty_like(g[:block])``) as float64 for a float32 ``g``: they then kept the
unrounded quotients. Numpy twins with the same signatures:
fnnet/kernels/optim.py.
"""
import numpy as np


# pythran export adam_update(float32[:], float32[:], float32[:], float32, float32, float32, float32, float32, float32, float32, float32[:], float32[:], float32[:], float32[:,:])
# pythran export adam_update(float64[:], float64[:], float64[:], float64, float64, float64, float64, float64, float64, float64, float64[:], float64[:], float64[:], float64[:,:])
def adam_update(g, m, v, b1, b1c, b2, b2c, c0, c1, eps, mu, nu, u, scratch):
    n = g.shape[0]
    block = scratch.shape[1]
    t = scratch[0]
    q = scratch[1]
    for s in range(0, n, block):
        e = min(s + block, n)
        k = e - s
        mu[s:e] = b1 * m[s:e] + b1c * g[s:e]  # (products and sums stay in the dtype)
        nu[s:e] = b2 * v[s:e] + b2c * (g[s:e] * g[s:e])
        t[:k] = nu[s:e] / c1
        t[:k] = np.sqrt(t[:k])
        t[:k] += eps
        q[:k] = mu[s:e] / c0
        u[s:e] = q[:k] / t[:k]
