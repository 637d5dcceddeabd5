"""Sliding-window geometry shared by convolution and pooling (the one output-size formula)."""

from __future__ import annotations


def out_size(size: int, k: int, stride: int = 1, dilation: int = 1, pad: int = 0) -> int:
    """Windows of ``k`` taps (``dilation`` apart) that fit in ``size + pad`` at ``stride``."""
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


def same_pad(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same": output ceil(size/stride); the odd pixel of padding goes last."""
    total = max((-(-size // stride) - 1) * stride + dilation * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2
