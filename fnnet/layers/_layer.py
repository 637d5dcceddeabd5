"""The layer protocol: the record of a layer's functions, and what its hooks see.

A layer author writes four functions and, for speed, one optional hook:

* ``init(key, input_shape, dtype) -> (params, output_shape)``
* ``forward(params, x, buf) -> (y, cache)``
* ``backward(cache, dy) -> (dparams, dx)``
* ``check(params, input_shape, dtype) -> output_shape``: raises naming the problem
* ``buffers(params, sig) -> buf`` (optional): the arrays ``forward`` and ``backward``
  write into, made once per input signature ``sig`` (a :class:`Sig`). Without it,
  ``forward`` gets ``sig`` itself as ``buf``.

and, to leave fnnet as an ONNX model (:func:`fnnet.export.to_onnx`), one optional mapping:

* ``onnx(graph, params, state, x, input_shape) -> y``: the ONNX nodes of its eval-mode
  forward pass (an :class:`OnnxFn`).

The built-in ``conv2d``, ``dense``, ``batch_norm``, ``relu`` and ``max_pool2d`` also
carry a :class:`Fusion` tag, which lets ``serial`` run ``conv2d|dense|batch_norm ->
relu [-> max_pool2d]`` as one fused pass (the rules: ``fnnet/layers/_fuse.py``); a
layer without one runs as written.

The runner (``_runner.py``: ``prepare``, ``run``, ``run_backward``, and for a sequence
``run_chain``, ``run_chain_backward``) is the one place that calls them:
``Layer.forward``/``backward``, the training step, :func:`fnnet.jit` and
:func:`fnnet.predict` all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias

import attrs
import numpy as np
from numpy.typing import ArrayLike

from .. import kernels
from .._errors import (
    InvalidTypeError,
    InvalidValueError,
    ShapeError,
    instance_of,
    is_callable,
)
from ..random import Key
from ..tree import EMPTY, freeze
from ..typing import DTypeLike, Params, PyTree, Shape
from ._checks import as_batch, check_init_dtype

__all__ = ["BackwardFn", "BuffersFn", "Carry", "CheckFn", "ForwardFn", "Fusion", "InitFn", "Layer", "OnnxFn", "Sig",
           "normalized", "onnx_op", "with_bias"]


class InitFn(Protocol):
    """A layer author's ``init``: params (unfrozen is fine) and the per-sample output shape."""

    def __call__(self, key: Key, input_shape: Shape, dtype: np.dtype, /) -> tuple[Params, Shape]: ...


class CheckFn(Protocol):
    """A layer author's ``check``: the output shape, or an error naming what does not fit."""

    def __call__(self, params: Params, input_shape: Shape, dtype: np.dtype, /) -> Shape: ...


ForwardFn: TypeAlias = Callable[..., tuple[Any, ...]]
"""A layer author's ``forward(params, x, buf) -> (y, cache)``; a layer with state also
takes ``state=`` and returns ``(y, cache, state)``, a random layer also takes ``key=``."""


class BackwardFn(Protocol):
    """A layer author's ``backward``: ``(dparams, dx)``; ``dx`` may be None when the
    signature said ``need_dx=False``. (Between ``fan_out`` and a fan-in, ``dy`` and ``dx``
    are tuples of arrays.)"""

    def __call__(self, cache: Any, dy: Any, /) -> tuple[Params, Any]: ...


class BuffersFn(Protocol):
    """The optional hook: the arrays ``forward`` and ``backward`` write into for ``sig``."""

    def __call__(self, params: Params, sig: Sig, /) -> Any: ...


class OnnxFn(Protocol):
    """A layer's ONNX mapping: the nodes that compute its eval-mode output (dropout off,
    batch norm on its running statistics) from the value named ``x``, whose per-sample
    shape is ``input_shape``. It adds them to ``graph`` (a :class:`fnnet.export.Graph`:
    ``graph.op(op_type, *inputs, **attributes)`` adds a node and returns its output's
    name, ``graph.param(name, array)`` adds the layer's params and state as named
    initializers) and returns the name of its output."""

    def __call__(self, graph: Any, params: Params, state: PyTree, x: Any, input_shape: Any, /) -> Any: ...


def onnx_op(op_type: str, **attributes: Any) -> OnnxFn:
    """The mapping of a layer that is one ONNX operator on its input (``Relu``...)."""

    def mapping(graph: Any, params: Params, state: PyTree, x: str, input_shape: Shape) -> str:
        return graph.op(op_type, x, **attributes)

    return mapping


@attrs.frozen
class Carry:
    """What the runner carries for training beside a :class:`Sig` (no layer of yours reads it).

    * ``group``, ``shard``: the :class:`~fnnet.runner.ShardGroup` of a training step whose
      batch is cut into shards, and this shard's index in it (None and 0 otherwise). Only a
      layer whose math needs the whole batch uses them (batch norm, which sets
      ``shard_sums``); other layers never see shards.
    * ``fuse``: whether ``serial`` may fuse runs of its layers (``fnnet/layers/_fuse.py``);
      False only to count the layers' own buffers (:func:`fnnet.train.least_shard_rows`).
    * ``ledger``: a list that :meth:`Sig.empty` appends the bytes of each array it makes
      to, or None: so a hook that makes its arrays with ``empty`` (the built-in layers do)
      tells :func:`fnnet.train.least_shard_rows` what a row of a batch costs.
    * ``watch``: a list that the runner's ``prepare`` appends ``(path, grads)`` to for each
      layer whose backward is not fnnet's own, or None: a training step marks those
      gradients before every backward pass and checks them after it (a layer of yours
      whose backward skips a leaf on some step gets an error on that step, not the stale
      value of an earlier one).
    """

    group: Any = None
    shard: int = 0
    fuse: bool = True
    ledger: list | None = attrs.field(default=None, eq=False, repr=False)
    watch: list | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Sig:
    """What the runner tells a layer about one input signature (its hook's argument).

    * ``x_shape``: the input shape with the batch axis; ``dtype``: the input dtype.
    * ``train``: train mode (False: eval mode, as in :func:`fnnet.predict`).
    * ``need_dx``: whether backward must return ``dx`` (a training step needs no
      gradient of its input images); when False, backward may return None.
    * ``grads``: writeable, C-contiguous arrays with the params' structure (views of
      the step's flat gradient). A backward that writes its ``dparams`` into them and
      returns ``grads`` itself costs no copy. None where no backward will run (as in
      :func:`fnnet.predict`): a hook then need not make backward's buffers.
    * ``path``: where the layer sits in the model (``"conv2d_0"``), for errors.
    * ``carry``: what the runner carries for training (a :class:`Carry`: shards, fusion,
      the buffer ledger, the gradient watch); a layer of yours needs none of it.
    """

    x_shape: tuple
    dtype: np.dtype
    train: bool = True
    need_dx: bool = True
    grads: Any = None
    path: str = ""
    carry: Carry = attrs.field(factory=lambda: Carry(), repr=False)

    def empty(self, shape: tuple | None = None, dtype: Any = None) -> np.ndarray:
        """A new array of ``shape`` (default ``x_shape``) and ``dtype`` (default the input's)."""
        a = np.empty(self.x_shape if shape is None else shape, self.dtype if dtype is None else dtype)
        if self.carry.ledger is not None:
            self.carry.ledger.append(a.nbytes)
        return a

    def dx_buffer(self) -> np.ndarray | None:
        """A new array for ``dx`` when backward must return one, else None."""
        return self.empty() if self.need_dx else None

    def child(self, key: str, x_shape: tuple, need_dx: bool | None = None) -> Sig:
        """The signature of a sub-layer ``key`` of a combinator, with input ``x_shape``."""
        return Sig(
            tuple(x_shape), self.dtype, self.train, self.need_dx if need_dx is None else need_dx,
            None if self.grads is None else self.grads[key], f"{self.path}/{key}" if self.path else key, self.carry,
        )


@attrs.frozen
class Fusion:
    """What a built-in layer tells the fusion rules (``fnnet/layers/_fuse.py``) about itself.

    A layer that leads a fused run gives its ``head``: its forward pass up to a last
    per-channel step, which the fused pass replaces with one kernel that also does what
    follows (ReLU, max pooling):

    * ``kind="affine"``: ``head(params, x, buf) -> (z, cache)`` is the output before the
      bias, in a buffer of the layer's that the fused pass may overwrite; the forward is
      :func:`with_bias` of it (``conv2d``, ``dense``).
    * ``kind="normalize"``: ``head(params, x, buf, state) -> (coef, cache, new_state)``
      with ``coef`` (4, C) of x's dtype (mean, inv_std, scale, shift per channel); the
      forward is :func:`normalized` of it, which writes ``buf.xhat`` and ``buf.y``
      (``batch_norm``).

    Either way the layer's own backward takes ``cache`` and the output's gradient. The
    layers that follow: ``kind="relu"`` (``max(x, 0)`` as
    :func:`fnnet.kernels.relu_forward`) and ``kind="max_pool"`` with ``args = (kh, kw,
    sh, sw)``, both without params.
    """

    kind: str
    args: tuple = attrs.field(default=(), converter=tuple)
    head: Callable | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidValueError(f"Fusion: kind must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")
        if (self.kind in ("affine", "normalize")) != callable(self.head):
            raise InvalidTypeError(f"Fusion: an affine or normalize layer, and only one, gives its head as a "
                                   f"function (kind {self.kind!r}, head {self.head!r})")
        if self.kind == "max_pool" and (len(self.args) != 4 or not all(isinstance(a, int) and a > 0
                                                                        for a in self.args)):
            raise InvalidValueError(f"Fusion: max_pool takes args (kh, kw, sh, sw) of ints >= 1, got {self.args!r}")


KINDS = ("affine", "normalize", "relu", "max_pool")
"""The kinds of :class:`Fusion` tags."""


def with_bias(head: Callable) -> ForwardFn:
    """The forward pass of an affine layer: ``head(params, x, buf) -> (z, cache)``, then
    ``params["b"]`` (C,) added in place along axis 1 of ``z`` (N, C, ...)."""

    def forward(params: Params, x: np.ndarray, buf: Any) -> tuple[np.ndarray, Any]:
        z, cache = head(params, x, buf)
        b = params["b"]
        z += b.reshape(b.shape + (1,) * (z.ndim - 2))
        return z, cache

    return forward


def normalized(head: Callable) -> ForwardFn:
    """The forward pass of a normalising layer: ``head(params, x, buf, state) -> (coef,
    cache, new_state)``, then :func:`fnnet.kernels.bn_normalize` of ``x`` into
    ``buf.xhat`` and ``buf.y``."""

    def forward(params: Params, x: np.ndarray, buf: Any, state: PyTree) -> tuple[np.ndarray, Any, PyTree]:
        coef, cache, new_state = head(params, x, buf, state)
        return kernels.bn_normalize(x, coef, buf.xhat, buf.y), cache, new_state

    return forward


MAX_DEPTH = 100
"""How deep combinators may nest (each pass recurses once a level; Python's stack held
about 300 levels of ``serial`` in a training step)."""


@attrs.frozen
class Layer:
    """A layer: the pure functions its author wrote (see the module docstring).

    ``Layer(name, init, forward, backward, check, buffers=None)`` is all most layers
    need. Two optional capabilities stay explicit: a layer with state (batch norm's
    running statistics) gives ``init_state(params) -> state``, and its ``forward`` takes
    ``state=`` and returns ``(y, cache, new_state)``; a random layer (dropout) sets
    ``stochastic=True``, and its ``forward`` takes ``key=`` (None in eval mode).
    Combinators list their sub-layers as ``children`` (``((key, layer), ...)``); the
    built-in layers that fusion knows carry a :class:`Fusion` as ``fusion``; a layer
    that can leave as ONNX (every built-in one) carries its mapping as ``onnx`` (an
    :class:`OnnxFn`; :func:`fnnet.export.to_onnx` names a layer without one). A
    layer with state whose statistics are the batch's sets ``shard_sums=True`` when its
    passes combine the shards' partial sums through ``sig.group`` (batch norm; a
    combinator, when all its layers are :attr:`cuttable`): a batch is cut into shards
    only when the model is.

    The methods run the layer eagerly, checked, through the runner:
    ``init(key, input_shape, *, dtype=float32)``, ``forward(params, x, *, key=None,
    train=True) -> (y, cache)``, ``forward_with_state(params, state, x, ...) -> (y,
    cache, state)``, ``backward(cache, dy) -> (dparams, dx)``, ``init_state(params)``,
    ``output_shape(params, input_shape, dtype)``. Shapes given to ``init`` exclude the
    batch axis; arrays carry it first.
    """

    name: str = attrs.field(validator=instance_of(str))
    _init: InitFn = attrs.field(validator=is_callable, repr=False)
    _forward: ForwardFn = attrs.field(validator=is_callable, repr=False)
    _backward: BackwardFn = attrs.field(validator=is_callable, repr=False)
    _check: CheckFn = attrs.field(validator=is_callable, repr=False)
    buffers: BuffersFn | None = attrs.field(
        default=None, validator=attrs.validators.optional(is_callable), repr=False
    )
    _init_state: Callable[[Params], PyTree] | None = attrs.field(
        default=None, validator=attrs.validators.optional(is_callable), repr=False
    )
    stochastic: bool = False
    children: tuple = attrs.field(default=(), repr=False)
    shard_sums: bool = False
    fusion: Fusion | None = attrs.field(default=None, validator=attrs.validators.optional(instance_of(Fusion)),
                                        repr=False)
    onnx: OnnxFn | None = attrs.field(default=None, validator=attrs.validators.optional(is_callable), repr=False)
    stateful: bool = attrs.field(init=False)  # whether forward takes and returns ``state`` (derived)
    depth: int = attrs.field(init=False, repr=False)  # 1, or 1 + the deepest child's (derived)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "stateful", self._init_state is not None)
        depth = 1 + max((child.depth for _, child in self.children if isinstance(child, Layer)), default=0)
        if depth > MAX_DEPTH:  # (every pass recurses through the nesting: refused here, not by a RecursionError)
            raise InvalidValueError(f"{self.name}: layers nested {depth} deep; fnnet runs at most {MAX_DEPTH} levels "
                                    f"of combinators (serial(a, serial(b, ...)) is serial(a, b, ...))")
        object.__setattr__(self, "depth", depth)

    def init(self, key: Key, input_shape: Sequence[int], *, dtype: DTypeLike = np.float32) -> tuple[Params, Shape]:
        """``(params, output_shape)`` for per-sample ``input_shape``: params of ``dtype``,
        frozen (read-only leaves; writeable arrays an ``init`` returned are copied)."""
        params, shape = self._init(key, tuple(input_shape), check_init_dtype(self.name, dtype))
        return freeze(params), tuple(shape)

    @property
    def cuttable(self) -> bool:
        """Whether a training batch may be cut into shards for this layer: it has no
        state, or its state pools the shards' sums (``shard_sums``; a combinator's, when
        each of its layers is cuttable)."""
        return not self.stateful or self.shard_sums

    def init_state(self, params: Params) -> PyTree:
        """The initial state (empty for a layer without state)."""
        return EMPTY if self._init_state is None else self._init_state(params)

    def output_shape(self, params: Params, input_shape: Sequence[int], dtype: DTypeLike = np.float32) -> Shape:
        """Per-sample output shape for ``input_shape``; checks params, shape and dtype."""
        return tuple(self._check(params, tuple(input_shape), np.dtype(dtype)))

    def forward(
        self, params: Params, x: ArrayLike, *, key: Key | None = None, train: bool = True
    ) -> tuple[np.ndarray, Any]:
        """Checked forward pass: ``x`` is (N, *input_shape); returns ``(y, cache)``."""
        if self.stateful:
            raise InvalidTypeError(f"{self.name} has state (e.g. batch norm): use forward_with_state(params, state, x)")
        y, cache, _ = self.forward_with_state(params, EMPTY, x, key=key, train=train)
        return y, cache

    def forward_with_state(
        self, params: Params, state: PyTree, x: ArrayLike, *, key: Key | None = None, train: bool = True
    ) -> tuple[np.ndarray, Any, PyTree]:
        """Checked forward pass threading ``state``; returns ``(y, cache, new_state)``."""
        from ._runner import _Cache, prepare_checked, run  # (late: the runner imports the protocol)

        x = as_batch(x, self.name)
        site, layout, flat = prepare_checked(self, params, x.shape, x.dtype, train=train, need_dx=True)
        if train and self.stochastic and key is None:
            raise InvalidTypeError(
                f"{self.name} is random in train mode: pass key=fnnet.random.key(...) (or train=False)"
            )
        y, cache, state = run(site, params, x, key, state)
        return y, _Cache(site, cache, y.shape, layout, flat), state

    def backward(self, cache: Any, dy: ArrayLike) -> tuple[Params, np.ndarray | None]:
        """``(dparams, dx)`` for the ``cache`` of this layer's forward and ``dy`` (N, *output_shape)."""
        from ._runner import _Cache, run_backward  # (late: the runner imports the protocol)

        if not isinstance(cache, _Cache) or cache.site.layer is not self:
            raise InvalidTypeError(f"{self.name}.backward takes the cache returned by this layer's forward")
        dy = as_batch(dy, self.name)
        if dy.shape != cache.y_shape:
            raise ShapeError(f"{self.name}: dy has shape {dy.shape}, the forward output had {cache.y_shape}")
        dx = run_backward(cache.site, cache.inner, dy)
        cache.layout.check_written(cache.grads, self.name)
        return cache.site.grads, dx
