"""2-D convolution (cross-correlation, as in PyTorch), NCHW, weights (K, C/groups, kh, kw)
(the transposed convolution is in ``conv_transpose.py``).

A conv layer runs one of two algorithms, chosen by its shape alone (:func:`conv_algorithm`):

* ``"rows"``, one product over the shard: the compiled im2row kernel lays every output
  pixel's patch out as a row of an (N*Ho*Wo, C*kh*kw) matrix (channels innermost, copied
  from an NHWC copy of the input), one BLAS product with the weights gives the shard's
  output, and backward is one product each for the weight gradient and the patches'
  gradient, then the row2im kernel;
* ``"samples"``, a product per sample: the compiled im2col kernel lays each sample's
  receptive fields out as a (C*kh*kw, Ho*Wo) matrix and a batched BLAS product contracts
  them with the weights; backward sums the samples' weight gradients, and dx is a
  batched product followed by the col2im kernel.

The bias gradient is the same sum on both (of one group: the same bits).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import attrs
import numpy as np

from .. import init as initializers
from .. import kernels, random
from .._errors import InvalidValueError, ShapeError
from ..random import Key
from ..typing import Array, Params, Shape
from ._checks import check_ndim, check_params, fmt_shape, initializers_of, pair, positive_int, seal
from ._fusion import Fusion, with_bias
from ._geometry import out_size, same_pad
from ._layer import Layer
from ._sig import Sig

Geometry = tuple[int, int, int, int, int, int, int, int, int, int]
"""The kernels' kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr."""
ALGORITHMS = ("auto", "rows", "samples")
"""``conv2d``'s ``algorithm`` values: ``"auto"`` (:func:`conv_algorithm`) or one of the two."""
ROWS_MIN_DEPTH = 64
"""The least patch depth (C*kh*kw) for which ``"auto"`` runs one product over the shard."""


def conv_algorithm(channels: int, groups: int, kh: int, kw: int, plane: int) -> str:
    """The algorithm ``conv2d(algorithm="auto")`` runs for ``channels`` input channels in
    ``groups`` groups, a kh x kw kernel and an output plane of ``plane`` (Ho*Wo) pixels:
    ``"rows"`` (one product over the shard) for one group whose patches hold at least
    ``ROWS_MIN_DEPTH`` (64) values and at least twice the plane's pixels, else
    ``"samples"`` (a product per sample: a deep patch over a small plane makes thin
    per-sample products). A function of the shape alone, so the bits are a function of
    the model and its input shape, never of a timing.

    Measured through the runner (forward and backward with dx, shards of 32 rows,
    float32, one core of a 2-core AVX-512 machine, numpy's OpenBLAS on its own kernels),
    ``"samples"``' time over ``"rows"``' (depth/plane): 64 -> 128 channels at 7x7 1.77x
    (576/25), at 8x8 1.27x (576/64), 128 -> 128 at 8x8 1.26x, 32 -> 64 at 8x8 1.28x
    (288/64), at 13x13 1.22x (288/121), 64 -> 64 at 16x16 1.03x (576/256); and below the
    line, 32 -> 64 at 14x14 1.09x (288/196), 16 -> 32 at 13x13 1.04x (144/121), at 14x14
    0.94x, 32 -> 64 at 16x16 0.97x, 32 -> 32 at 32x32 0.90x, 8 -> 16 at 13x13 0.63x
    (72/121: copies of 8 floats)."""
    depth = channels * kh * kw
    return "rows" if groups == 1 and depth >= ROWS_MIN_DEPTH and depth >= 2 * plane else "samples"


class _Rows(NamedTuple):
    """What a conv2d layer running ``"rows"`` writes into for one input signature."""

    args: Geometry
    xt: np.ndarray  # (N, H+pt+pb, W+pl+pr, C): the kernels' NHWC copy of the input
    rows: np.ndarray  # (N, Ho, Wo, C*kh*kw)
    wr: np.ndarray  # (K, kh, kw, C): the weights in the rows' order
    z: np.ndarray  # (N, Ho*Wo, K): the product
    y: np.ndarray  # (N, K, Ho, Wo)
    dz: np.ndarray | None  # like z, dy in its order (None: no backward)
    dwr: np.ndarray | None  # like wr, the weight gradient in the rows' order
    grads: Any
    drows: np.ndarray | None  # like rows, when dx is needed
    dx: np.ndarray | None


def _rows_buffers(sig: Sig, args: Geometry, out_shape: Shape) -> _Rows:
    n, c, h, w = sig.x_shape
    k, ho, wo = out_shape
    kh, kw, *_, pt, pb, pl, pr = args
    grads = sig.grads or {}
    rows = sig.empty((n, ho, wo, c * kh * kw))
    w_rows = functools.partial(np.empty, (k, kh, kw, c), sig.dtype)  # (the weights' layout: no row's cost)
    return _Rows(
        args, sig.empty((n, h + pt + pb, w + pl + pr, c)), rows, w_rows(),
        sig.empty((n, ho * wo, k)), sig.empty((n, k, ho, wo)),
        sig.empty((n, ho * wo, k)) if grads else None, w_rows() if grads else None, sig.grads,
        sig.empty(rows.shape) if grads and sig.need_dx else None, sig.dx_buffer(),
    )


def _rows_forward(w: Array, x: Array, buf: _Rows) -> Array:
    np.copyto(buf.wr, w.transpose(0, 2, 3, 1))
    kernels.im2row(x, *buf.args, 1, buf.xt, buf.rows)
    k, depth = buf.wr.shape[0], buf.rows.shape[-1]
    np.matmul(buf.rows.reshape(-1, depth), buf.wr.reshape(k, depth).T, out=buf.z.reshape(-1, k))
    np.copyto(buf.y.reshape(buf.z.shape[0], k, -1), buf.z.transpose(0, 2, 1))
    return buf.y


def _rows_backward(buf: _Rows, dy: Array) -> tuple[Params, Array | None]:
    assert buf.dz is not None and buf.dwr is not None  # made wherever a backward can run (sig.grads given)
    n, k = dy.shape[:2]
    dy3 = dy.reshape(n, k, -1)
    np.copyto(buf.dz, dy3.transpose(0, 2, 1))
    np.add.reduce(dy3.reshape(n, 1, k, -1), axis=(0, 3), out=buf.grads["b"].reshape(1, k))  # ("samples"' sum)
    depth = buf.rows.shape[-1]
    dz, rows = buf.dz.reshape(-1, k), buf.rows.reshape(-1, depth)
    np.matmul(dz.T, rows, out=buf.dwr.reshape(k, depth))
    np.copyto(buf.grads["w"], buf.dwr.transpose(0, 3, 1, 2))
    if buf.dx is None:
        return buf.grads, None
    assert buf.drows is not None
    np.matmul(dz, buf.wr.reshape(k, depth), out=buf.drows.reshape(-1, depth))
    return buf.grads, kernels.row2im(buf.drows, *buf.args, 1, buf.xt, buf.dx)


class _Buffers(NamedTuple):
    """What a conv2d layer running ``"samples"`` writes into for one input signature."""

    args: Geometry
    cols: np.ndarray  # (N, C*kh*kw, Ho, Wo): im2col's layout
    cols4: np.ndarray  # the same memory as (N, G, C/G*kh*kw, Ho*Wo), a group's rows together, for BLAS
    y: np.ndarray  # (N, G, K/G, Ho*Wo)
    y_shape: tuple  # (N, K, Ho, Wo)
    dw_n: np.ndarray | None  # (N, G, K/G, C/G*kh*kw): each sample's weight gradient (None: no backward)
    dw: Any  # grads["w"] seen as (G, K/G, C/G*kh*kw) (a view: grads are C-contiguous), or None
    db: Any  # grads["b"], or None
    grads: Any
    dcols: Any  # like cols, and dcols4 like cols4, when dx is needed; else None
    dcols4: Any
    dx: Any


@attrs.frozen
class _Spec:
    """A conv2d layer's static shape: K filters in G groups, its window and its padding."""

    K: int
    G: int
    kh: int
    kw: int
    sh: int
    sw: int
    dil_h: int
    dil_w: int
    padding: Any  # "valid", "same" or (ph, pw)

    def args(self, pads: tuple[int, int, int, int]) -> Geometry:
        """The kernels' geometry arguments with ``pads`` (top, bottom, left, right)."""
        return (self.kh, self.kw, self.sh, self.sw, self.dil_h, self.dil_w, *pads)

    def geometry(self, input_shape: Shape) -> tuple[tuple[int, int, int, int], Shape]:
        """Padding (top, bottom, left, right) and per-sample output shape."""
        c, h, w = input_shape
        if self.padding == "valid":
            pads = (0, 0, 0, 0)
        elif self.padding == "same":
            pads = (*same_pad(h, self.kh, self.sh, self.dil_h), *same_pad(w, self.kw, self.sw, self.dil_w))
        else:
            pads = (self.padding[0], self.padding[0], self.padding[1], self.padding[1])
        ho = out_size(h, self.kh, self.sh, self.dil_h, pads[0] + pads[1])
        wo = out_size(w, self.kw, self.sw, self.dil_w, pads[2] + pads[3])
        if ho < 1 or wo < 1:
            raise ShapeError(f"conv2d: input {fmt_shape(input_shape)} is smaller than the {self.kh}x{self.kw} "
                             f"kernel (dilation {self.dil_h}x{self.dil_w}, padding {pads})")
        return pads, (self.K, ho, wo)

    def group_channels(self, c: int) -> int:
        """The input channels of a group, or an error."""
        if c % self.G:
            raise ShapeError(f"conv2d: {c} input channel(s) cannot be split into {self.G} groups")
        return c // self.G


def _spec(out_channels: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any, groups: Any,
          algorithm: Any) -> _Spec:
    """conv2d's arguments checked (each error names the argument) as a :class:`_Spec`."""
    name = "conv2d"
    if algorithm not in ALGORITHMS:
        raise InvalidValueError(f"{name}: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                                f"got {algorithm!r}")
    K = positive_int(out_channels, "out_channels", name)
    G = positive_int(groups, "groups", name)
    if algorithm == "rows" and G != 1:
        raise InvalidValueError(f"{name}: algorithm 'rows' runs one group (groups=1), got groups={G}; "
                                "grouped convolutions run 'samples'")
    if K % G:
        raise InvalidValueError(f"{name}: out_channels {K} is not a multiple of groups {G}")
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise InvalidValueError(f"{name}: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        padding = pair(padding, "padding", name, minimum=0)
    return _Spec(K, G, *pair(kernel_size, "kernel_size", name), *pair(stride, "stride", name),
                 *pair(dilation, "dilation", name), padding)


def _samples_buffers(spec: _Spec, sig: Sig, pads: tuple[int, int, int, int], ho: int, wo: int) -> _Buffers:
    n, c = sig.x_shape[:2]
    K, G, kh, kw = spec.K, spec.G, spec.kh, spec.kw
    cols = sig.empty((n, c * kh * kw, ho, wo))
    dcols = sig.empty(cols.shape) if sig.need_dx else None
    grads = sig.grads or {}
    per_group = (n, G, c // G * kh * kw, ho * wo)
    return _Buffers(
        spec.args(pads), cols, cols.reshape(per_group), sig.empty((n, G, K // G, ho * wo)), (n, K, ho, wo),
        sig.empty((n, G, K // G, c // G * kh * kw)) if grads else None,  # no backward in eval mode (predict)
        grads["w"].reshape(G, K // G, -1) if grads else None, grads.get("b"), sig.grads,
        dcols, None if dcols is None else dcols.reshape(per_group), sig.dx_buffer(),
    )


def _samples_forward(spec: _Spec, w: Array, x: Array, buf: _Buffers) -> Array:
    kernels.im2col(x, *buf.args, buf.cols)
    return np.matmul(w.reshape(spec.G, spec.K // spec.G, -1), buf.cols4, out=buf.y).reshape(buf.y_shape)


def _samples_backward(spec: _Spec, w: Array, buf: _Buffers, dy: Array) -> tuple[Params, Array | None]:
    G, K = spec.G, spec.K
    assert buf.dw_n is not None  # made wherever a backward can run (sig.grads given)
    dy4 = np.ascontiguousarray(dy).reshape(buf.y.shape)
    np.add.reduce(dy4, axis=(0, 3), out=buf.db.reshape(G, K // G))
    np.matmul(dy4, buf.cols4.transpose(0, 1, 3, 2), out=buf.dw_n)
    np.add.reduce(buf.dw_n, axis=0, out=buf.dw)
    if buf.dx is None:
        return buf.grads, None
    wt = w.reshape(G, K // G, -1).transpose(0, 2, 1)  # (G, C/G*kh*kw, K/G)
    if K == G:  # an outer product per sample and group: a broadcast multiply beats matmul's k=1 path
        np.multiply(wt, dy4, out=buf.dcols4)
    else:
        np.matmul(wt, dy4, out=buf.dcols4)
    return buf.grads, kernels.col2im(buf.dcols, *buf.args, buf.dx)


def conv2d(
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = "valid",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    w_init: initializers.Initializer | None = None,
    b_init: initializers.Initializer = initializers.zeros,
    algorithm: str = "auto",
) -> Layer:
    """A conv layer with ``out_channels`` filters of ``kernel_size``.

    Input (N, C, H, W), output (N, K, Ho, Wo). ``padding`` is an int, a pair (ph, pw)
    of zero padding on both sides, ``"valid"`` (none) or ``"same"`` (output
    ceil(H/stride), TensorFlow's split: the odd pixel at the bottom and right). ``groups``
    G splits the channels into G groups, each convolved with its own K/G filters (as
    PyTorch's ``groups``; ``groups=C`` with K a multiple of C is depthwise). Params
    ``{"w": (K, C/G, kh, kw), "b": (K,)}``; defaults: ``w`` he_normal (fan_in
    C/G*kh*kw), ``b`` zeros. ``algorithm``: ``"auto"`` (default: by the shape,
    :func:`conv_algorithm`), ``"rows"`` (one product over the shard) or ``"samples"`` (a
    product per sample); the two give the same result up to the order of the sums.
    """
    name = "conv2d"
    spec = _spec(out_channels, kernel_size, stride, padding, dilation, groups, algorithm)
    K, G, kh, kw = spec.K, spec.G, spec.kh, spec.kw
    w_init, b_init = initializers_of(name, w_init, b_init, initializers.he_normal(), initializers.zeros)

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        _, out_shape = spec.geometry(input_shape)
        cg = spec.group_channels(input_shape[0])
        fan_in, fan_out = cg * kh * kw, K // G * kh * kw
        k_w, k_b = random.split(key)
        w = np.asarray(w_init(k_w, (K, cg, kh, kw), dtype, fan_in, fan_out), dtype)
        b = np.asarray(b_init(k_b, (K,), dtype, fan_in, fan_out), dtype)
        return seal(w=w, b=b), out_shape

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        check_params(name, params, dtype, w=(K, None, kh, kw), b=(K,))
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        c = params["w"].shape[1] * G
        if input_shape[0] != c:
            raise ShapeError(f"{name}: expected input of shape {fmt_shape((c, 'H', 'W'))} ({c} channel(s)), "
                             f"got {fmt_shape(input_shape)}")
        return spec.geometry(tuple(input_shape))[1]

    def buffers(params: Params, sig: Sig) -> Any:
        pads, (_, ho, wo) = spec.geometry(sig.x_shape[1:])
        chosen = conv_algorithm(sig.x_shape[1], G, kh, kw, ho * wo) if algorithm == "auto" else algorithm
        if chosen == "rows":
            return _rows_buffers(sig, spec.args(pads), (K, ho, wo))
        return _samples_buffers(spec, sig, pads, ho, wo)

    def linear(params: Params, x: Array, buf: _Rows | _Buffers) -> tuple[Array, Any]:  # the forward before the bias
        w = params["w"]
        return (_rows_forward(w, x, buf) if isinstance(buf, _Rows) else _samples_forward(spec, w, x, buf)), (w, buf)

    def backward(cache: tuple[Array, _Rows | _Buffers], dy: Array) -> tuple[Params, Array | None]:
        w, buf = cache
        if isinstance(buf, _Rows):
            return _rows_backward(buf, np.ascontiguousarray(dy))
        return _samples_backward(spec, w, buf, dy)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:
        (pt, pb, pl, pr), _ = spec.geometry(input_shape)
        return g.op("Conv", x, g.param("w", params["w"]), g.param("b", params["b"]), kernel_shape=[kh, kw],
                    strides=[spec.sh, spec.sw], dilations=[spec.dil_h, spec.dil_w], pads=[pt, pl, pb, pr], group=G)

    return Layer(name, init, with_bias(linear), backward, check, buffers=buffers,
                 fusion=Fusion("affine", head=linear), onnx=onnx)
