"""What a type checker sees of fnnet's public API (checked by mypy in ``nox -s lint``;
nothing here runs). A change that loses a public type makes ``assert_type`` fail."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from typing_extensions import assert_type

    import fnnet as fn
    from fnnet import optim
    from fnnet.typing import Params, PyTree, Shape

    model = fn.serial(fn.conv2d(4, 3), fn.relu(), fn.flatten(), fn.dense(10))
    assert_type(model, fn.Layer)
    params, shape = model.init(fn.random.key(0), (1, 8, 8))
    assert_type(params, Params)
    assert_type(shape, Shape)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(optim.cosine_decay(1e-3, 100)))
    assert_type(opt, optim.GradientTransformation)
    step = fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt))
    assert_type(step, fn.JitStep)
    state = fn.TrainState.create(params, opt)
    x, y = np.zeros((2, 1, 8, 8), np.float32), np.array([1, 2])
    new, metrics = step(state, (x, y))
    assert_type(new, fn.TrainState)
    assert_type(metrics, dict[str, float])
    assert_type(fn.predict(model, new.params, x), np.ndarray)
    assert_type(fn.tree_map(lambda a: a * 2, new.params), PyTree)
    assert_type(fn.checkpoint.digest(new.params), str)
    assert_type(optim.learning_rate(new.opt_state), float | None)
