"""Pythran source of the image-warp kernel (compiled to fnnet.kernels._warp).

``affine_warp`` samples every output pixel of every image bilinearly at an affine map of
its coordinates: one pass, where numpy needs four gathers over the batch (about 30x
faster at batch 128 of 28x28). Arithmetic is in float64, in the order of the numpy twin
(fnnet/kernels/warp.py), so both give the same bits.
"""
import numpy as np


# pythran export affine_warp(float32[:,:,:,:], float64[:,:,:], float32[:,:,:,:])
# pythran export affine_warp(float64[:,:,:,:], float64[:,:,:], float64[:,:,:,:])
def affine_warp(x, m, out):
    n, c, h, w = x.shape
    for i in range(n):
        for r in range(h):
            for q in range(w):
                sy = m[i, 0, 0] * r + m[i, 0, 1] * q + m[i, 0, 2]
                sx = m[i, 1, 0] * r + m[i, 1, 1] * q + m[i, 1, 2]
                fy0 = np.floor(sy)
                fx0 = np.floor(sx)
                fy = sy - fy0
                fx = sx - fx0
                y0 = int(fy0)
                x0 = int(fx0)
                w00 = (1 - fy) * (1 - fx)
                w01 = (1 - fy) * fx
                w10 = fy * (1 - fx)
                w11 = fy * fx
                in_y0 = 0 <= y0 < h
                in_y1 = 0 <= y0 + 1 < h
                in_x0 = 0 <= x0 < w
                in_x1 = 0 <= x0 + 1 < w
                for ch in range(c):
                    acc = 0.0
                    if in_y0 and in_x0:
                        acc += w00 * x[i, ch, y0, x0]
                    if in_y0 and in_x1:
                        acc += w01 * x[i, ch, y0, x0 + 1]
                    if in_y1 and in_x0:
                        acc += w10 * x[i, ch, y0 + 1, x0]
                    if in_y1 and in_x1:
                        acc += w11 * x[i, ch, y0 + 1, x0 + 1]
                    out[i, ch, r, q] = acc
