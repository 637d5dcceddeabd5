"""The runner, the one place that calls a layer's functions: a layer prepared for an input
signature (:func:`prepare`, its hook's buffers made once), run forward and backward
(:func:`run`, :func:`run_backward`), and a sequence of prepared layers (:class:`Chain`,
:func:`run_chain`, :func:`run_chain_backward`). ``Layer.forward``/``backward``, the
training step, :func:`fnnet.jit` and :func:`fnnet.predict` all go through it; jit only
keeps what :func:`prepare` made. ``fnnet.runner`` is its public door.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple, overload

import attrs
import numpy as np

from .. import random
from .._errors import DTypeError, InvalidValueError, ShapeError, TreeMismatchError
from ..flat import Layout
from ..tree import EMPTY, _path_str, tree_leaves, tree_leaves_with_path, tree_zip
from ._layer import Layer
from ._sig import Carry, Sig

__all__ = ["Chain", "Site", "check_batch", "one_output", "prepare", "prepare_checked", "run", "run_backward",
           "run_chain", "run_chain_backward"]


@attrs.frozen
class _Cache:
    """What ``Layer.forward`` hands to ``Layer.backward``: the layer's own cache and its site."""

    site: Site
    inner: Any
    y_shape: tuple
    layout: Layout
    grads: np.ndarray


class Site(NamedTuple):
    """A layer prepared for one :class:`Sig` by :func:`prepare`: its buffers, and what
    :func:`run` calls. (A NamedTuple: one is made per layer for every plain step.)"""

    layer: Layer
    sig: Sig
    buf: Any
    forward: Callable  # layer's forward and backward, and sig.grads, at hand for the hot path
    backward: Callable
    grads: Any
    plain: bool  # neither random nor stateful


def prepare(layer: Layer, params: Any, sig: Sig) -> Site:
    """``layer`` ready to run on inputs of ``sig``: its hook's buffers made (unchecked:
    check the params and the input shape first)."""
    buf = sig if layer.buffers is None else layer.buffers(params, sig)
    watch = sig.carry.watch
    if watch is not None and sig.grads is not None and tree_leaves(sig.grads) and not _own(layer):
        watch.append((sig.path or layer.name, sig.grads))
    return Site(layer, sig, buf, layer._forward, layer._backward, sig.grads, not (layer.stochastic or layer.stateful))


def _own(layer: Layer) -> bool:
    """Whether ``layer``'s backward is fnnet's (its layer table tests that it writes every gradient)."""
    return getattr(layer._backward, "__module__", "").startswith("fnnet.")


@overload
def prepare_checked(
    layer: Layer, params: Any, x_shape: tuple, dtype: np.dtype, *, train: bool, need_dx: bool,
    backward: Literal[True] = True, group: Any = None, shard: int = 0, fuse: bool = True, ledger: list | None = None,
    watch: list | None = None,
) -> tuple[Site, Layout, np.ndarray]: ...


@overload
def prepare_checked(
    layer: Layer, params: Any, x_shape: tuple, dtype: np.dtype, *, train: bool, need_dx: bool, backward: Literal[False],
    group: Any = None, shard: int = 0, fuse: bool = True, ledger: list | None = None, watch: list | None = None,
) -> tuple[Site, None, None]: ...


@overload
def prepare_checked(
    layer: Layer, params: Any, x_shape: tuple, dtype: np.dtype, *, train: bool, need_dx: bool, backward: bool,
    group: Any = None, shard: int = 0, fuse: bool = True, ledger: list | None = None, watch: list | None = None,
) -> tuple[Site, Layout | None, np.ndarray | None]: ...


def prepare_checked(
    layer: Layer, params: Any, x_shape: tuple, dtype: np.dtype, *, train: bool, need_dx: bool, backward: bool = True,
    group: Any = None, shard: int = 0, fuse: bool = True, ledger: list | None = None, watch: list | None = None,
) -> tuple[Site, Layout | None, np.ndarray | None]:
    """Check ``params`` and inputs of ``x_shape`` and ``dtype`` against ``layer`` (errors
    name the layer), then :func:`prepare` it (as shard ``shard`` of ``group``, for a
    training step cut into shards; ``fuse``, ``ledger`` and ``watch`` as in :class:`Sig`). With
    ``backward``, its gradients go to a fresh flat vector, returned with its layout
    (else both are None). A batch of no rows is refused here, where every path passes
    (batch norm's statistics of no rows do not exist; a layer's buffers need a row)."""
    check_batch(layer, params, x_shape, dtype)
    if not backward:
        sig = Sig(x_shape, dtype, train, need_dx, carry=Carry(fuse=fuse, ledger=ledger))
        return prepare(layer, params, sig), None, None
    layout = Layout.of(params)
    flat, grads = layout.fresh_grads()
    sig = Sig(x_shape, dtype, train, need_dx, grads, "", Carry(group, shard, fuse, ledger, watch))
    return prepare(layer, params, sig), layout, flat


def one_output(layer: Layer, shape: tuple) -> tuple:
    """``shape``, the per-sample output shape of a model run as a whole, or an
    InvalidValueError if it gives several arrays (a ``fan_out`` without a fan-in at its
    end: a block inside a graph, not a model a pass, a loss or a file can take)."""
    if shape and isinstance(shape[0], tuple):
        n = len(shape)
        raise InvalidValueError(f"{layer.name}: the model gives {n} output{'s' if n != 1 else ''} (a fan_out without "
                                "a fan-in at its end); a forward pass, a training step, predict and the export take "
                                "a model of one output: end it with fan_in_sum() or fan_in_concat()")
    return shape


def check_batch(layer: Layer, params: Any, x_shape: tuple, dtype: np.dtype) -> None:
    """The checks of :func:`prepare_checked` alone: ``params`` against ``layer`` and inputs
    of ``x_shape`` and ``dtype`` (errors name the layer), and a batch of at least one row."""
    one_output(layer, layer.output_shape(params, x_shape[1:], dtype))
    if x_shape[0] == 0:
        raise ShapeError(f"{layer.name}: the batch is empty (inputs of shape {tuple(x_shape)}): a pass needs at "
                         "least one row")


def run(site: Site, params: Any, x: np.ndarray, key: Any = None, state: Any = EMPTY) -> tuple[np.ndarray, Any, Any]:
    """The forward pass of a prepared layer: ``(y, cache, new_state)``."""
    if site.plain:
        y, cache = site.forward(params, x, site.buf)
        return y, cache, state
    layer = site.layer
    kw = {"key": key} if layer.stochastic else {}
    if layer.stateful:
        return site.forward(params, x, site.buf, state=state, **kw)
    y, cache = site.forward(params, x, site.buf, **kw)
    return y, cache, state


@attrs.frozen
class Chain:
    """Prepared layers to run in sequence: ``serial``'s buffers, made once per signature.

    Site ``i`` runs on the params ``names[i]``; it is one layer, or a run of layers fused
    into one site (``fnnet/layers/_fuse.py``) whose first layer is ``names[i]`` (the
    others have no params). ``index[i]`` is the position of that layer in the serial
    (its key is the ``index[i]``-th of ``split(key, length)``), ``length`` the serial's
    number of layers."""

    names: tuple
    sites: tuple
    index: tuple
    length: int
    # (name, forward, buf, position) per site, first first; forward is None for a site that
    # is not plain (random or stateful: run through :func:`run`, as sites[position])
    forward_steps: tuple = attrs.field(init=False)
    backward_steps: tuple = attrs.field(init=False)  # (backward, grads, site), last site first

    def __attrs_post_init__(self) -> None:
        steps = tuple((n, s.forward if s.plain else None, s.buf, i)
                      for i, (n, s) in enumerate(zip(self.names, self.sites)))
        object.__setattr__(self, "forward_steps", steps)
        object.__setattr__(self, "backward_steps", tuple((s.backward, s.grads, s) for s in reversed(self.sites)))


def run_chain(chain: Chain, params: Any, x: np.ndarray, key: Any, state: Any) -> tuple[np.ndarray, list, dict]:
    """The sites of ``chain`` in sequence, site ``i`` on ``params[names[i]]``, with the
    ``index[i]``-th key of ``split(key, length)`` (for random layers) and
    ``state[names[i]]`` (for layers with state): ``(y, caches, new_state)``."""
    keys = None if key is None else random.split(key, chain.length)
    caches, new_state = [], {}
    for name, forward, buf, i in chain.forward_steps:
        if forward is not None:  # what run does for a plain layer, inlined: the hot path of every serial model
            x, cache = forward(params[name], x, buf)
        else:
            site = chain.sites[i]
            stateful = site.layer.stateful
            x, cache, s = run(site, params[name], x, None if keys is None else keys[chain.index[i]],
                              state[name] if stateful else EMPTY)
            if stateful:
                new_state[name] = s
        caches.append(cache)
    return x, caches, new_state


def run_chain_backward(chain: Chain, caches: list, dy: np.ndarray) -> np.ndarray | None:
    """:func:`run_backward` through the sites of ``chain``, last first; returns the first layer's dx."""
    for (backward, want, site), cache in zip(chain.backward_steps, reversed(caches)):
        grads, dy = backward(cache, dy)  # run_backward, inlined
        if grads is not want:
            _adopt(site, grads)
    return dy


def run_backward(site: Site, cache: Any, dy: np.ndarray) -> np.ndarray | None:
    """The backward pass of a prepared layer: the gradients land in ``site.sig.grads``
    (checked against the params' structure, shapes and dtype); returns ``dx``."""
    grads, dx = site.backward(cache, dy)
    if grads is not site.grads:  # new arrays: check them and copy them in
        _adopt(site, grads)
    return dx


def _adopt(site: Site, grads: Any) -> None:
    """Copy gradients a backward returned as new arrays into ``site.sig.grads``."""
    want, where = site.grads, site.sig.path or site.layer.name
    if not tree_leaves(want) and not tree_leaves(grads):
        return
    try:
        pairs = tree_zip(want, grads)
    except TreeMismatchError as err:
        raise TreeMismatchError(f"{where}: backward returned gradients without the params' structure ({err})") from None
    for (path, target), (_, leaf) in zip(tree_leaves_with_path(want), pairs):
        leaf = np.asarray(leaf)
        name = _path_str(path)
        if leaf.shape != target.shape:
            raise ShapeError(f"{where}: backward returned a gradient of shape {leaf.shape} for params {name!r} "
                             f"of shape {target.shape}")
        if leaf.dtype != target.dtype:
            raise DTypeError(f"{where}: backward returned a {leaf.dtype} gradient for {target.dtype} params {name!r}")
        np.copyto(target, leaf)

