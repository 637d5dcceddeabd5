"""The compiled kernel families, declared once: family -> the kernels it exports.

A family ``<f>`` is a numpy twin ``fnnet/kernels/<f>.py`` and a Pythran source
``fnnet/kernels/_<f>_pythran.py`` compiled to ``fnnet.kernels._<f>``, both defining every
kernel listed here with the same signature. ``meson.build`` (which runs this file to
list the families), ``fnnet/meson.build``, ``fnnet/kernels/__init__.py`` and
``noxfile.py`` all read this table; adding a family means adding a line here and the
two files, and a wrapper per kernel in ``fnnet/kernels/__init__.py``.
"""

FAMILIES = {
    "conv": ("im2col", "col2im", "im2row", "row2im"),
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

_V3 = ("AVX", "AVX2", "FMA3", "F16C", "BMI", "BMI2", "LZCNT", "MOVBE")  # x86-64-v3: what gcc may emit for it
ISAS = {
    "avx512": (*_V3, "AVX512F", "AVX512CD", "AVX512VL", "AVX512BW", "AVX512DQ"),  # x86-64-v4
    "avx2": _V3,
}
"""x86-64 instruction sets the families of :data:`ISA_FAMILIES` are also built for (best
first), each with the CPU features (numpy's names) it needs: ``avx2`` is x86-64-v3,
``avx512`` x86-64-v4 with 256-bit vectors. ``meson.build`` gives each its flags, always
with ``-ffp-contract=off`` (no fused multiply-add the source does not write), so every
variant gives the bits of the plain build (tested)."""
ISA_FAMILIES = ("norm", "fused", "optim")
"""The families built for each of :data:`ISAS` besides the plain build: where a variant
measured faster at a training shard's sizes (docs/build.md: batch norm 1.3-1.75x, the
fused passes 1.1-1.6x, Adam 1.2x). Not ``conv`` (0.81-1.35x by layer, slower at the default CNN), ``pool`` (the
AVX-512 max-pool backward 0.73x), ``act`` (ReLU forward 0.94-1.0x) or ``loss`` (too small
to tell)."""

if __name__ == "__main__":  # for meson.build: the families, or (with an argument) the ISA variants
    import sys

    print(" ".join(ISA_FAMILIES if sys.argv[1:] == ["isa"] else FAMILIES))
