"""The compiled kernel families, declared once: family -> the kernels it exports.

A family ``f`` is a numpy twin ``fnnet/kernels/f.py`` and a Pythran source
``fnnet/kernels/_f_pythran.py`` compiled to ``fnnet.kernels._f``, both defining every
kernel listed here with the same signature. ``meson.build`` (which runs this file to
list the families), ``fnnet/meson.build``, ``fnnet/kernels/__init__.py`` and
``noxfile.py`` all read this table; adding a family means adding a line here and the
two files, and a wrapper per kernel in ``fnnet/kernels/__init__.py``.
"""

FAMILIES = {
    "conv": ("im2col", "col2im"),
    "pool": ("max_pool_forward", "max_pool_2x2_forward", "max_pool_values", "max_pool_2x2_values",
             "max_pool_backward", "avg_pool_forward", "avg_pool_backward"),
    "loss": ("softmax_xent",),
    "act": ("relu_forward", "relu_backward", "gelu_forward", "gelu_backward"),
    "warp": ("affine_warp",),
    "norm": ("bn_moments", "bn_normalize", "bn_grad_sums", "bn_backward"),
    "fused": ("standardize", "scale_shift_relu", "scale_shift_relu_max_pool", "scale_shift_relu_max_pool_2x2",
              "scale_shift_relu_max_pool_values", "relu_max_pool_backward"),
    "optim": ("adam_update",),
}
"""Family -> the kernels it exports (one twin module and one Pythran source per family)."""

if __name__ == "__main__":  # for meson.build
    print(" ".join(FAMILIES))
