"""Pythran source of the activation kernels (compiled to fnnet.kernels._act).

ReLU is a handful of numpy calls per layer (a comparison, a bool mask, a mixed-dtype
multiply); here each direction is one pass: 3-4x faster at batch 128 and about 4x at
batch 2, where the calls dominate. Arrays are flat (the wrappers ravel them).
Numpy twins with the same signatures: fnnet/kernels/act.py.
"""
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
