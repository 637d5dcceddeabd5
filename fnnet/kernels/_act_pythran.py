"""Pythran source of the activation kernels (compiled to fnnet.kernels._act).

ReLU is a handful of numpy calls per layer (a comparison, a bool mask, a mixed-dtype
multiply); here each direction is one pass: 3-4x faster at batch 128 and about 4x at
batch 2, where the calls dominate. GELU's exact form needs erf, which numpy lacks (its
twin calls math.erf per element). Arrays are flat (the wrappers ravel them).
Numpy twins with the same signatures: fnnet/kernels/act.py.
"""
import math

import numpy as np


# pythran export relu_forward(float32[:], float32[:])
# pythran export relu_forward(float64[:], float64[:])
def relu_forward(x, y):
    # bit-identical to np.maximum(x, 0): NaN stays NaN, -0.0 becomes +0.0
    y[:] = np.where(x <= 0, 0, x)


# pythran export relu_backward(float32[:], float32[:], float32[:])
# pythran export relu_backward(float64[:], float64[:], float64[:])
def relu_backward(y, dy, dx):
    dx[:] = dy * (y > 0)


# pythran export gelu_forward(float32[:], float32[:])
# pythran export gelu_forward(float64[:], float64[:])
def gelu_forward(x, y):
    # x * Phi(x), Phi the standard normal CDF, in float64
    for i in range(x.shape[0]):
        v = float(x[i])
        y[i] = 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))


# pythran export gelu_backward(float32[:], float32[:], float32[:])
# pythran export gelu_backward(float64[:], float64[:], float64[:])
def gelu_backward(x, dy, dx):
    # dy * (Phi(x) + x phi(x)), in float64
    for i in range(x.shape[0]):
        v = float(x[i])
        cdf = 0.5 * (1.0 + math.erf(v * 0.7071067811865476))
        dx[i] = float(dy[i]) * (cdf + v * 0.3989422804014327 * math.exp(-0.5 * v * v))
