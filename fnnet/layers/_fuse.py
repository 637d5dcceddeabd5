"""Fusion: the runs of layers a ``serial`` chain runs as one pass, and how.

:data:`RULES` is the one place that picks them: a run of layers whose :class:`Fusion`
tags spell a rule's kinds (the longest first) becomes one site of the chain. Built-in
layers carry tags; a layer without one (any custom layer) is never fused and runs as
it was written. A fused site runs the first layer's own head (``conv2d`` and ``dense``:
the matrix product; ``batch_norm``: the statistics and the state) and its own backward;
what follows the head (the bias add or the normalisation, ReLU, max pooling, and
backward the pooling and ReLU gradients) runs as one kernel pass of
:mod:`fnnet.kernels` (family ``fused``: the head's last step is ``x * scale + shift``
per channel, a bias add with a scale of ones) that gives the bits of the layers' own passes,
in training (``step``, ``jit``) and in inference (``predict``). The layers' pure pairs
stay the reference: tests/test_fuse.py runs every rule fused and unfused.

What a fusion saves: ``conv2d -> relu -> max_pool2d`` writes the pooled output once
where the layers write the biased output, the ReLU output and the pooled output (and
backward zeroes and fills the pooling gradient, then masks it into a third array);
``conv2d -> relu`` and ``dense -> relu`` add the bias and take the ReLU in place, in the
pass that the bias add alone made; ``batch_norm -> relu [-> max_pool2d]`` writes the
normalised input (its backward's) and the ReLU or pooled output, not the batch-norm
output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from .. import kernels
from ..tree import EMPTY
from ..typing import Array, Params
from ._checks import batch_of, with_batch, without_batch
from ._fusion import Fusion
from ._layer import Layer
from ._runner import Chain, Site, prepare
from ._sig import Sig


def _run_affine(head: Callable, params: Params, x: Array, buf: Any, state: Any, ones: np.ndarray) -> tuple:
    z, cache = head(params, x, buf)
    return (z, ones, params["b"]), z, cache, state  # z * 1 + b: the bits of z + b


def _run_normalize(head: Callable, params: Params, x: Array, buf: Any, state: Any, ones: np.ndarray) -> tuple:
    coef, cache, new_state = head(params, x, buf, state)
    xhat = kernels.standardize(x, coef, buf.xhat)  # batch norm's backward reads it
    return (xhat, coef[2], coef[3]), buf.y, cache, new_state


HEADS = {"affine": _run_affine, "normalize": _run_normalize}
"""How a fused run drives its first layer's head, by kind: ``run(head, params, x, buf,
state, ones) -> ((x, scale, shift), out, cache, new_state)``, the arguments of the
``scale_shift_*`` kernels (the head's last step is ``x * scale + shift`` per channel),
the array a ReLU without pooling writes (the affine output in place: backward needs
the ReLU output alone; batch norm's own ``y``), and the layer's cache and state."""


class _Pooled(NamedTuple):
    """What ``head -> relu -> max_pool`` writes into, beside the head layer's buffers."""

    inner: Any  # the head layer's buffers
    y: np.ndarray  # (N, C, Ho, Wo): the pooled output
    idx: np.ndarray | None  # (N, C, Ho, Wo) winners; None where no backward runs (maxima alone)
    dz: np.ndarray | None  # (N, C, H, W): the gradient of the head layer's output


def _tag(layer: Layer) -> Fusion:
    assert layer.fusion is not None  # a rule matched it
    return layer.fusion


def _site(site: Site, buf: Any, forward: Callable, backward: Callable) -> Site:
    """``site`` running the fused ``forward(params, x, buf, state) -> (y, cache, state)``
    and ``backward`` (a plain site's forward returns ``(y, cache)``, as the runner expects;
    the runner passes a stateful one ``state=``)."""
    if not site.plain:
        return site._replace(buf=buf, forward=forward, backward=backward)

    def plain(params: Params, x: Array, buf: Any) -> tuple[Array, Any]:
        y, cache, _ = forward(params, x, buf, EMPTY)
        return y, cache

    return site._replace(buf=buf, forward=plain, backward=backward)


def _relu_pool(site: Site, layers: Sequence[Layer], sig: Sig, shapes: Sequence[tuple]) -> Site:
    tag = _tag(layers[0])
    head, run, ones = cast(Callable, tag.head), HEADS[tag.kind], np.ones(shapes[0][1], sig.dtype)
    kh, kw, sh, sw = _tag(layers[2]).args
    layer_backward = site.backward
    train = site.grads is not None  # a backward may run (else, as in predict, maxima alone)
    buf = _Pooled(site.buf, sig.empty(shapes[2]), np.empty(shapes[2], np.int64) if train else None,
                  sig.empty(shapes[0]) if train else None)

    def forward(params: Params, x: Array, buf: _Pooled, state: Any) -> tuple[Array, Any, Any]:
        (v, scale, shift), _, cache, state = run(head, params, x, buf.inner, state, ones)
        if buf.idx is None:
            kernels.scale_shift_relu_max_pool_values(v, scale, shift, kh, kw, sh, sw, buf.y)
        else:
            kernels.scale_shift_relu_max_pool(v, scale, shift, kh, kw, sh, sw, buf.y, buf.idx)
        return buf.y, (cache, buf), state

    def backward(cache: tuple[Any, _Pooled], dy: Array) -> tuple[Params, Array | None]:
        inner, buf = cache
        assert buf.idx is not None and buf.dz is not None  # made wherever a backward can run
        return layer_backward(inner, kernels.relu_max_pool_backward(dy, buf.idx, buf.y, kh, kw, sh, sw, buf.dz))

    return _site(site, buf, forward, backward)


def _relu(site: Site, layers: Sequence[Layer], sig: Sig, shapes: Sequence[tuple]) -> Site:
    tag = _tag(layers[0])
    head, run, ones = cast(Callable, tag.head), HEADS[tag.kind], np.ones(shapes[0][1], sig.dtype)
    layer_backward = site.backward
    buf = (site.buf, None if site.grads is None else sig.empty(shapes[0]))  # the layer's buffers, dz

    def forward(params: Params, x: Array, buf: tuple, state: Any) -> tuple[Array, Any, Any]:
        (v, scale, shift), out, cache, state = run(head, params, x, buf[0], state, ones)
        y = kernels.scale_shift_relu(v, scale, shift, out)
        return y, (cache, y, buf[1]), state

    def backward(cache: tuple, dy: Array) -> tuple[Params, Array | None]:
        inner, y, dz = cache
        return layer_backward(inner, kernels.relu_backward(y, dy, dz))

    return _site(site, buf, forward, backward)


RULES: tuple[tuple[tuple[str, ...], Callable[..., Site]], ...] = (
    (("affine", "relu", "max_pool"), _relu_pool),
    (("normalize", "relu", "max_pool"), _relu_pool),
    (("affine", "relu"), _relu),
    (("normalize", "relu"), _relu),
)
"""(kinds, fuse) pairs, longest first: ``fuse(site, layers, sig, shapes) -> Site`` turns
the first layer's prepared site into the run's site (``shapes``: each layer's output
with the batch axis)."""


def _match(layers: Sequence[Layer]) -> tuple[tuple[str, ...], Callable[..., Site]] | None:
    """The first rule whose kinds the layers at the front of ``layers`` carry."""
    for kinds, fuse in RULES:
        if len(layers) >= len(kinds) and all(
            layer.fusion is not None and layer.fusion.kind == kind for layer, kind in zip(layers, kinds)
        ):
            return kinds, fuse
    return None


def prepare_chain(children: Sequence[tuple[str, Layer]], params: Params, sig: Sig) -> Chain:
    """``serial``'s chain for inputs of ``sig``: each layer :func:`prepare`-d, runs that
    a rule of :data:`RULES` matches as one site (checked params and shapes assumed)."""
    layers = [layer for _, layer in children]
    names, sites, index = [], [], []
    shape, i = sig.x_shape, 0
    while i < len(children):
        key, layer = children[i]
        # the first layer's dx only if serial's is needed
        site = prepare(layer, params[key], sig.child(key, shape, need_dx=sig.need_dx or i > 0))
        rule = _match(layers[i:]) if sig.carry.fuse else None
        run = len(rule[0]) if rule else 1
        shapes = []
        for k, sub in children[i:i + run]:
            shape = with_batch(batch_of(shape), sub.output_shape(params[k], without_batch(shape), sig.dtype))
            shapes.append(shape)
        if rule:
            site = rule[1](site, layers[i:i + run], site.sig, shapes)
        names.append(key)
        sites.append(site)
        index.append(i)
        i += run
    return Chain(tuple(names), tuple(sites), tuple(index), len(children))
