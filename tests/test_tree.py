"""Immutable pytrees and the tree utilities."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fnnet as fn
from fnnet.tree import FrozenDict, TreeDef, freeze, tree_leaves_with_path, tree_zip


@pytest.fixture
def tree():
    return {"a": np.arange(3.0), "b": ({"c": np.ones((2, 2))}, [np.zeros(1), None]), "d": np.float32(2)}


def test_flatten_unflatten_round_trip(tree):
    leaves, treedef = fn.tree_flatten(tree)
    assert len(leaves) == treedef.num_leaves == 4
    back = fn.tree_unflatten(treedef, leaves)
    assert fn.tree_structure(back) == treedef
    assert all(x is y for x, y in zip(fn.tree_leaves(back), leaves))
    assert isinstance(back, FrozenDict) and isinstance(back["b"][1], list)


@pytest.mark.parametrize(
    "tree",
    [
        {"a": {}, "b": (1, [2, {"c": 3}], None), 7: 4, ("t", 1): {"d": ()}},  # every node kind, odd keys
        (1,),
        [],
        None,
        5,
    ],
    ids=["mixed", "1-tuple", "empty-list", "none", "leaf"],
)
def test_unflatten_rebuilds_every_node_kind(tree):
    leaves, treedef = fn.tree_flatten(tree)
    back = fn.tree_unflatten(treedef, iter(leaves))  # any iterable of leaves
    assert fn.tree_structure(back) == treedef
    assert fn.tree_leaves(back) == leaves
    assert back == tree


def test_unflatten_of_a_deep_tree_takes_the_recursive_path():
    tree = 0
    for i in range(200):  # deeper than one generated expression may nest
        tree = {"k": tree, "i": i} if i % 2 else (tree, i)
    leaves, treedef = fn.tree_flatten(tree)
    back = fn.tree_unflatten(treedef, leaves)
    assert fn.tree_structure(back) == treedef and fn.tree_leaves(back) == leaves


def test_leaves_with_path_and_order(tree):
    paths = [p for p, _ in tree_leaves_with_path(tree)]
    assert paths == [("a",), ("b", 0, "c"), ("b", 1, 0), ("d",)]


def test_tree_map_multiple_trees(tree):
    doubled = fn.tree_map(lambda x: x * 2, tree)
    summed = fn.tree_map(lambda x, y: x + y, tree, doubled)
    for x, s in zip(fn.tree_leaves(tree), fn.tree_leaves(summed)):
        np.testing.assert_array_equal(s, 3 * np.asarray(x))


@pytest.mark.parametrize(
    "other,match",
    [
        (
            {"a": 1, "b": ({"c": 1}, [1, None]), "e": 1},
            r"at <root>: a mapping with keys \['a', 'b', 'd'\] in tree 0, a mapping with keys \['a', 'b', 'e'\] "
            r"in tree 1 \(lacks \['d'\], has extra \['e'\]\)",
        ),
        ({"a": 1, "b": ({"x": 1}, [1, None]), "d": 1}, r"at b/0: a mapping with keys \['c'\] in tree 0, a mapping"),
        ({"a": 1, "b": ({"c": 1}, [1]), "d": 1}, r"at b/1: a list of 2 in tree 0, a list of 1 in tree 1"),
        ({"a": 1, "b": ({"c": 1}, [1, None]), "d": (1,)}, r"at d: a leaf of type float32 in tree 0, a tuple of 1"),
    ],
)
def test_mismatched_structures_name_the_path(tree, other, match):
    with pytest.raises(fn.TreeMismatchError, match=match):
        fn.tree_map(lambda x, y: x, tree, other)
    with pytest.raises(fn.TreeMismatchError):
        tree_zip(tree, other)


def test_unflatten_wrong_leaf_count():
    with pytest.raises(fn.TreeMismatchError, match="has 2 leaves, got 3"):
        fn.tree_unflatten(fn.tree_structure((1, 2)), [1, 2, 3])


def test_freeze_makes_containers_and_leaves_immutable(tree):
    original = tree["a"]
    frozen = freeze(tree)
    assert original.flags.writeable, "freeze must not flip the caller's array"
    assert isinstance(frozen, FrozenDict) and isinstance(frozen["b"][1], tuple)
    for leaf in fn.tree_leaves(frozen):
        assert isinstance(leaf, np.ndarray) and not leaf.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        frozen["a"][0] = 1.0
    with pytest.raises(TypeError):
        frozen["a"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        frozen.x = 1
    ro = freeze({"k": frozen["a"]})
    assert ro["k"] is frozen["a"], "read-only leaves are shared, not copied"


def test_zip_and_param_count(tree):
    pairs = tree_zip(tree, fn.tree_map(np.size, tree))
    assert [p[1] for p in pairs] == [3, 4, 1, 1]
    assert pairs[0][0] is tree["a"]
    assert fn.param_count(tree) == 3 + 4 + 1 + 1


def test_treedef_repr_and_equality():
    t = fn.tree_structure({"w": 1, "b": (2, None)})
    assert repr(t) == "{'w': *, 'b': (*, None,)}"
    assert t == fn.tree_structure({"w": 5, "b": (6, None)})
    assert t != fn.tree_structure({"b": (6, None), "w": 5})
    assert isinstance(t, TreeDef)


def test_structures_are_interned_and_built_trees_know_theirs():
    a = fn.freeze({"x": np.zeros(2), "y": ({"z": np.ones(3)}, None)})
    b = fn.freeze({"x": np.ones(2), "y": ({"z": np.zeros(3)}, None)})
    t = fn.tree_structure(a)
    assert t is fn.tree_structure(b) and t is fn.tree_structure(dict(a))  # equal structures are one object
    assert fn.tree_structure({"y": a["y"], "x": a["x"]}) is not t  # key order is part of the structure
    built = fn.tree_unflatten(t, fn.tree_leaves(b))
    assert fn.tree_structure(built) is t and fn.tree_leaves(built)[1] is fn.tree_leaves(b)[1]
    assert pickle.loads(pickle.dumps(t)) is t


def test_layouts_are_made_once_per_structure_shapes_and_dtype():
    from fnnet.flat import Layout

    p = fn.freeze({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    q = fn.freeze({"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)})
    assert Layout.of(p) is Layout.of(q)
    assert Layout.of(fn.tree_map(lambda a: a.astype(np.float64), p)) is not Layout.of(p)
    assert Layout.of(fn.freeze({"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)})) is not Layout.of(p)
