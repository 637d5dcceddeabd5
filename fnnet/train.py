"""One pure training step, and ``jit``: the same step specialised per input signature.

The flow of ``step(state, batch) -> (state, metrics)``::

    forward (layer 1..n) -> loss -> backward (layer n..1) -> optimizer.update
    -> apply_updates -> TrainState(params', opt_state', step + 1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from . import random
from ._errors import ShapeError, TreeMismatchError
from .layers._base import NO_STATE, Layer, as_batch, bind
from .losses import accuracy
from .optim import GradientTransformation, apply_updates
from .tree import FrozenDict, TreeDef, freeze, tree_leaves, tree_structure, tree_unflatten

__all__ = ["TrainState", "Step", "train_step", "jit", "JitStep", "predict"]


def _nonneg_int(inst, attr, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"TrainState.{attr.name} must be an int >= 0, got {value!r}")


@attrs.frozen
class TrainState:
    """Everything that changes during training: params, optimizer state, step count and
    the model's own state (batch norm's running statistics; empty for most models)."""

    params: Any
    opt_state: Any
    step: int = attrs.field(default=0, validator=_nonneg_int)
    model_state: Any = NO_STATE

    @classmethod
    def create(cls, params: Any, optimizer: GradientTransformation, model: Layer | None = None) -> TrainState:
        """Step 0: frozen ``params``, a fresh optimizer state and, given ``model``, its
        initial state (``model.init_state(params)``)."""
        params = freeze(params)
        model_state = freeze(model.init_state(params)) if model is not None else NO_STATE
        return cls(params, freeze(optimizer.init(params)), 0, model_state)


def _unpack_batch(batch: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"step: batch must be a pair (inputs, labels), got {type(batch).__name__}")
    x, labels = batch
    x = as_batch(x, "step inputs")
    labels = np.asarray(labels)
    if labels.ndim < 1 or labels.shape[0] != x.shape[0]:
        raise ShapeError(f"step: {x.shape[0]} inputs but labels of shape {labels.shape}")
    return x, labels


def _metrics(loss: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    out = {"loss": float(loss)}
    if logits.ndim == 2 and labels.ndim == 1 and labels.dtype.kind in "iu":
        out["accuracy"] = accuracy(logits, labels)
    return out


def _check_model_state(model: Layer, state: TrainState) -> None:
    if model.stateful and not state.model_state:
        raise ValueError(
            f"step: the {model.name} model has state (batch norm) but the TrainState has none: "
            "create it with TrainState.create(params, optimizer, model)"
        )


@attrs.frozen
class Step:
    """``step(state, batch) -> (state, metrics)``: pure; ``state`` is never changed.

    ``batch`` is ``(x, labels)`` with ``x`` (N, *input_shape). ``metrics`` has ``"loss"``
    and, for integer labels, ``"accuracy"`` on this batch (before the update). The model
    runs in train mode; random layers get the key ``fold_in(key, state.step)``.
    """

    model: Layer = attrs.field(validator=attrs.validators.instance_of(Layer))
    loss: Callable = attrs.field(validator=attrs.validators.is_callable())
    optimizer: GradientTransformation = attrs.field(validator=attrs.validators.instance_of(GradientTransformation))
    key: random.Key | None = attrs.field(default=None)

    @key.validator
    def _key_if_random(self, attribute, value):
        if self.model.stochastic and value is None:
            raise ValueError("train_step: the model is random in train mode (dropout): pass key=fnnet.random.key(...)")

    def step_key(self, step: int) -> random.Key | None:
        """The key of the random layers at ``step``."""
        return None if self.key is None else random.fold_in(self.key, step)

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, float]]:
        if not isinstance(state, TrainState):
            raise TypeError(f"step: state must be a TrainState, got {type(state).__name__}")
        _check_model_state(self.model, state)
        x, labels = _unpack_batch(batch)
        logits, cache, model_state = self.model.forward_with_state(
            state.params, state.model_state, x, key=self.step_key(state.step), train=True
        )
        loss, dlogits = self.loss(logits, labels)
        grads = self.model.param_grads(cache, dlogits)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = apply_updates(state.params, updates)
        new = TrainState(params, freeze(opt_state), state.step + 1, freeze(model_state))
        return new, _metrics(loss, logits, labels)


def train_step(
    model: Layer, loss: Callable, optimizer: GradientTransformation, *, key: random.Key | None = None
) -> Step:
    """Fold a model, a loss ``(outputs, labels) -> (value, d_outputs)`` and an optimizer
    into one pure step; wrap it in :func:`jit` for speed. ``key`` drives random layers
    (dropout): step ``t`` uses ``fold_in(key, t)``, so a resumed run draws the same masks."""
    return Step(model, loss, optimizer, key)


# -- jit ---------------------------------------------------------------------------------


@attrs.frozen
class _Layout:
    """Where each params leaf lives in one flat buffer."""

    treedef: TreeDef
    shapes: tuple
    dtype: np.dtype
    size: int
    slices: tuple  # ((slice, shape), ...) per leaf

    @classmethod
    def of(cls, params: Any) -> _Layout:
        leaves = tree_leaves(params)
        dtypes = {leaf.dtype for leaf in leaves}
        if len(dtypes) > 1:
            raise TreeMismatchError(f"jit: all params must share one dtype, got {sorted(map(str, dtypes))}")
        sizes = [leaf.size for leaf in leaves]
        offsets = tuple(int(o) for o in np.cumsum([0, *sizes]))
        dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        shapes = tuple(leaf.shape for leaf in leaves)
        slices = tuple((slice(o, e), s) for o, e, s in zip(offsets, offsets[1:], shapes))
        return cls(tree_structure(params), shapes, dtype, offsets[-1], slices)

    def matches(self, tree: Any) -> bool:
        if tree_structure(tree) != self.treedef:
            return False
        return all(leaf.shape == s and leaf.dtype == self.dtype for leaf, s in zip(tree_leaves(tree), self.shapes))

    def pack(self, tree: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The leaves of ``tree`` (this layout) in one flat vector (``out`` if given)."""
        leaves = tree_leaves(tree)
        if not leaves:
            return np.empty(0, self.dtype) if out is None else out
        return np.concatenate([np.ravel(leaf) for leaf in leaves], out=out)

    def leaf_views(self, flat: np.ndarray) -> list:
        """Views into ``flat``, one per leaf, in flattening order."""
        return [flat[sl] if len(s) == 1 else flat[sl].reshape(s) for sl, s in self.slices]

    def views(self, flat: np.ndarray) -> Any:
        """A tree of views into ``flat``, one per leaf."""
        return tree_unflatten(self.treedef, self.leaf_views(flat))

    def unpack_leaves(self, flat: np.ndarray) -> list:
        """Read-only views into ``flat`` (which is sealed here), one per leaf."""
        flat.setflags(write=False)
        return self.leaf_views(flat)

    def unpack(self, flat: np.ndarray) -> Any:
        """A tree of read-only views into ``flat`` (which is sealed here)."""
        return tree_unflatten(self.treedef, self.unpack_leaves(flat))


def _pack_state(state: Any, layout: _Layout, path: tuple = ()) -> tuple[Any, frozenset]:
    """Replace each params-shaped subtree of an optimizer state by one flat vector.

    Returns the packed state and the set of paths that were packed.
    """
    if isinstance(state, (Mapping, tuple, list)) and layout.shapes and layout.matches(state):
        return layout.pack(state), frozenset([path])
    if isinstance(state, (Mapping, tuple, list)):
        items = state.items() if isinstance(state, Mapping) else enumerate(state)
        packed, paths = {}, frozenset()
        for k, v in items:
            packed[k], sub = _pack_state(v, layout, path + (k,))
            paths |= sub
        if isinstance(state, Mapping):
            return FrozenDict(packed), paths
        return tuple(packed.values()), paths
    return state, frozenset()


def _unpack_state(state: Any, paths: frozenset, layout: _Layout, path: tuple = ()) -> Any:
    """Inverse of :func:`_pack_state`: flat vectors become trees of read-only views."""
    if paths and path in paths:
        return layout.unpack(state)
    kind = type(state)
    if kind is np.ndarray:  # the common cases first: ABC checks are slow per step
        state.setflags(write=False)
        return state
    if kind is FrozenDict or isinstance(state, Mapping):
        return FrozenDict({k: _unpack_state(v, paths, layout, path + (k,)) for k, v in state.items()})
    if kind is tuple or isinstance(state, (tuple, list)):
        return tuple(_unpack_state(v, paths, layout, path + (i,)) for i, v in enumerate(state))
    if isinstance(state, np.ndarray) and state.flags.writeable:
        state.flags.writeable = False
    return state


def _slotted(treedef: TreeDef, leaves: list) -> tuple[Any, list]:
    """``leaves`` in a tree of plain dicts and lists, and the (container, key) of each
    leaf: the params a bound model reads, whose leaves jit swaps before every step."""
    slots: list = []
    it = iter(leaves)

    def build(t: TreeDef) -> Any:
        if t.kind == "none":
            return None
        node: Any = {} if t.kind == "dict" else [None] * len(t.children)
        for k, c in zip(t.keys if t.kind == "dict" else range(len(t.children)), t.children):
            if c.kind == "leaf":
                slots.append((node, k))
                node[k] = next(it)
            else:
                node[k] = build(c)
        return node

    return build(treedef), slots


@attrs.define
class _Plan:
    """What jit keeps for one input signature.

    With an elementwise optimizer and a model without state or randomness,
    ``forward``/``backward`` are the model bound (:func:`fnnet.layers.bind`) to buffers
    made once: they read the params through ``slots`` (pointed at the state's leaves
    before each step, no copy) and write the gradients into the flat ``grads``, which
    the optimizer then updates in one go. Other models, and non-elementwise optimizers,
    run ``apply`` with the workspace dicts.
    """

    layout: _Layout
    ws_forward: dict = attrs.Factory(dict)
    ws_backward: dict = attrs.Factory(dict)
    grads: np.ndarray | None = None
    forward: Callable | None = None
    backward: Callable | None = None
    slots: list = attrs.Factory(list)

    @classmethod
    def of(cls, step: Step, params: Any, x: np.ndarray) -> _Plan:
        layout = _Layout.of(params)
        plan = cls(layout)
        if not step.optimizer.elementwise:
            return plan
        plan.grads = np.empty(layout.size, layout.dtype)
        model = step.model
        if not (model.stateful or model.stochastic) and layout.treedef.kind != "leaf":
            bound, plan.slots = _slotted(layout.treedef, tree_leaves(params))
            grads = layout.views(plan.grads)
            plan.forward, plan.backward = bind(model, bound, grads, x.shape, x.dtype, need_dx=False)
        return plan

    def point(self, leaves: list) -> None:
        """Make the bound model read ``leaves`` (the params in flattening order)."""
        for (node, k), leaf in zip(self.slots, leaves):
            node[k] = leaf


class JitStep:
    """A step specialised per input signature; same signature and bits as the plain step.

    For each new ``(x.shape, x.dtype, labels.shape, labels.dtype)`` it checks the model
    once (errors name the layer) and allocates workspace that later calls reuse. With an
    elementwise optimizer it binds the model to fixed buffers and runs the optimizer once
    on all params packed into one flat vector. Returned states own fresh buffers: a
    state you hold is never overwritten. The buffers are shared between calls, so use
    one JitStep per thread.
    """

    def __init__(self, step: Step) -> None:
        if not isinstance(step, Step):
            raise TypeError(f"jit: expected a step made by train_step, got {type(step).__name__}")
        self.step = step
        self._plans: dict[tuple, _Plan] = {}
        self._last: tuple | None = None  # (state returned, flat params, leaves, packed opt state, paths, layout)

    def _plan(self, state: TrainState, x: np.ndarray, labels: np.ndarray) -> _Plan:
        sig = (x.shape, x.dtype, labels.shape, labels.dtype)
        plan = self._plans.get(sig)
        if plan is not None:
            last = self._last
            ours = last is not None and state is last[0] and last[5] is plan.layout
            if ours or plan.layout.matches(state.params):
                return plan
        self.step.model.check(state.params, x.shape[1:], x.dtype)  # raises naming the layer
        plan = self._plans[sig] = _Plan.of(self.step, state.params, x)
        return plan

    def _packed(self, state: TrainState, layout: _Layout) -> tuple[np.ndarray, list, Any, frozenset]:
        """Flat params, param leaves and packed optimizer state: reused if ``state`` is
        our last output."""
        last = self._last
        if last is not None and state is last[0] and last[5] is layout:
            return last[1:5]
        leaves = tree_leaves(state.params)
        return (layout.pack(leaves), leaves, *_pack_state(state.opt_state, layout))

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, float]]:
        step = self.step
        if not isinstance(state, TrainState):
            raise TypeError(f"step: state must be a TrainState, got {type(state).__name__}")
        _check_model_state(step.model, state)
        x, labels = _unpack_batch(batch)
        plan = self._plan(state, x, labels)
        if not step.optimizer.elementwise:
            return self._tree_step(plan, state, x, labels)
        layout = plan.layout
        flat, leaves, opt, paths = self._packed(state, layout)
        if plan.forward is not None:
            plan.point(leaves)
            logits = plan.forward(x)
            loss, dlogits = step.loss(logits, labels)
            metrics = _metrics(loss, logits, labels)
            plan.backward(dlogits)  # the gradients land in plan.grads
            model_state = NO_STATE
        else:
            logits, cache, model_state = self._apply(plan, state, x)
            model_state = freeze(model_state)
            loss, dlogits = step.loss(logits, labels)
            metrics = _metrics(loss, logits, labels)
            layout.pack(step.model.param_grads(cache, dlogits, plan.ws_backward), out=plan.grads)
        updates, new_opt = step.optimizer.update(plan.grads, opt, flat)
        new_flat = np.add(flat, updates, dtype=layout.dtype)
        new_leaves = layout.unpack_leaves(new_flat)
        params = tree_unflatten(layout.treedef, new_leaves)
        new = TrainState(params, _unpack_state(new_opt, paths, layout), state.step + 1, model_state)
        self._last = (new, new_flat, new_leaves, new_opt, paths, layout)
        return new, metrics

    def _apply(self, plan: _Plan, state: TrainState, x: np.ndarray) -> tuple[np.ndarray, Any, Any]:
        """The model's train-mode forward through ``apply``, reusing the plan's workspace."""
        step = self.step
        return step.model.apply(state.params, state.model_state, x, plan.ws_forward, step.step_key(state.step), True)

    def _tree_step(self, plan: _Plan, state: TrainState, x: np.ndarray, labels: np.ndarray):
        """The step for non-elementwise optimizers: the plain step with reused workspace."""
        step = self.step
        logits, cache, model_state = self._apply(plan, state, x)
        loss, dlogits = step.loss(logits, labels)
        metrics = _metrics(loss, logits, labels)
        grads = step.model.param_grads(cache, dlogits, plan.ws_backward)
        updates, opt_state = step.optimizer.update(grads, state.opt_state, state.params)
        new = TrainState(apply_updates(state.params, updates), freeze(opt_state), state.step + 1, freeze(model_state))
        return new, metrics


def jit(step: Step) -> JitStep:
    """Specialise ``step`` (from :func:`train_step`): same signature, bit-identical
    results, shape checks once per input signature, workspace reused between calls."""
    return JitStep(step)



def predict(
    model: Layer, params: Any, x: np.ndarray, batch_size: int = 64, model_state: Any = NO_STATE
) -> np.ndarray:
    """Model outputs for ``x`` (N, *input_shape) in eval mode, in chunks of ``batch_size``.

    Eval mode: dropout is off and batch norm uses the running statistics in
    ``model_state``. Checks the model once, then reuses one workspace across chunks. The
    default chunk keeps the im2col buffers in cache: on a LeNet-size model, chunks of 64
    run about twice as fast as chunks of 1000. Returns a new array (N, *output_shape).
    """
    x = as_batch(x, "predict")
    if batch_size < 1:
        raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
    out_shape = model.check(params, x.shape[1:], x.dtype)
    out = np.empty((x.shape[0], *out_shape), x.dtype)
    ws: dict = {}
    for i in range(0, x.shape[0], batch_size):
        y, _, _ = model.apply(params, model_state, x[i : i + batch_size], ws, None, False)
        out[i : i + batch_size] = y
    return out
