"""Every public function and class has a docstring (the README promises shapes in them)."""

from __future__ import annotations

import inspect

import pytest

import fnnet
from fnnet import checkpoint, data, init, kernels, losses, optim, random, tree

MODULES = [fnnet, checkpoint, data, init, kernels, losses, optim, random, tree]


def _public():
    for mod in MODULES:
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{mod.__name__}.{name}", obj


@pytest.mark.parametrize("name,obj", list(_public()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_api_is_documented(name, obj):
    assert inspect.getdoc(obj), f"{name} has no docstring"


def test_every_module_is_documented():
    for mod in MODULES:
        assert mod.__doc__, mod.__name__
