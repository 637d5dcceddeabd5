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
from ._fusion import Fusion
from ._sig import Sig

__all__ = ["BackwardFn", "BuffersFn", "CheckFn", "ForwardFn", "InitFn", "Layer", "OnnxFn", "onnx_op"]


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
