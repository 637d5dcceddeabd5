"""fnnet.data.augment: pure, keyed, vectorised; each checked against a per-image reference."""

from __future__ import annotations

import numpy as np
import pytest

import fnnet as fn
from fnnet import random
from fnnet.data import augment as A

AUGMENTS = {
    "translate": A.translate(2),
    "affine": A.affine(rotate=15, scale=0.1, shear=10),
    "cutout": A.cutout(4),
    "hflip": A.hflip(0.5),
    "chain": A.chain(A.affine(rotate=10), A.translate(1), A.cutout(3)),
}


def batch(n=5, c=2, h=9, w=8, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", AUGMENTS)
def test_pure_keyed_and_shape_keeping(name, dtype):
    aug, x = AUGMENTS[name], batch(dtype=dtype)
    before = x.copy()
    y = aug(random.key(1), x)
    np.testing.assert_array_equal(x, before)  # the input is never changed
    assert y.shape == x.shape and y.dtype == x.dtype and not np.shares_memory(x, y)
    assert aug(random.key(1), x).tobytes() == y.tobytes()  # same key, same bits
    assert aug(random.key(2), x).tobytes() != y.tobytes()  # another key, another draw


def test_translate_shifts_each_image_by_whole_pixels_within_range():
    x = batch(n=12)
    y = A.translate(2)(random.key(3), x)
    for xi, yi in zip(x, y):
        padded = np.pad(xi, ((0, 0), (2, 2), (2, 2)))
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(padded[:, dy:dy + 9, dx:dx + 8], yi)]
        assert matches, "not a shift by at most 2 pixels"
    np.testing.assert_array_equal(A.translate(0)(random.key(3), x), x)


def _affine_reference(x, u, rotate, scale, shear):
    """Per pixel and per image, the textbook inverse map and bilinear interpolation."""
    n, c, h, w = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for i in range(n):
        t, z, s = np.deg2rad(rotate * u[i, 0]), 1 + scale * u[i, 1], np.deg2rad(shear * u[i, 2])
        rot_back = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
        unshear = np.array([[1.0, -np.tan(s)], [0.0, 1.0]])
        inv = unshear @ rot_back / z
        for r in range(h):
            for q in range(w):
                sy, sx = inv @ np.array([r - cy, q - cx]) + [cy, cx]
                y0, x0 = int(np.floor(sy)), int(np.floor(sx))
                fy, fx = sy - y0, sx - x0
                for yy, xx, wt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                                   (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[i, :, r, q] += wt * x[i, :, yy, xx]
    return out


def test_affine_matches_a_per_pixel_reference():
    x, key = batch(n=4, dtype=np.float64), random.key(5)
    u = random.generator(key).uniform(-1.0, 1.0, (4, 3))  # the draw affine makes from its key
    got = A.affine(rotate=30, scale=0.2, shear=15)(key, x)
    np.testing.assert_allclose(got, _affine_reference(x, u, 30, 0.2, 15), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(A.affine()(key, x), x)  # no rotation, scaling or shear: exact


def test_cutout_zeroes_one_square_per_image_and_keeps_the_rest():
    x = batch(n=20) + 1.0  # no zero pixel before
    y = A.cutout(3)(random.key(7), x)
    for xi, yi in zip(x, y):
        zero = yi[0] == 0
        rows, cols = np.flatnonzero(zero.any(axis=1)), np.flatnonzero(zero.any(axis=0))
        assert 1 <= len(rows) <= 3 and 1 <= len(cols) <= 3  # a square, clipped at a border
        assert zero.sum() == len(rows) * len(cols) and (yi == 0).all(axis=0).sum() == zero.sum()
        np.testing.assert_array_equal(yi[:, ~zero], xi[:, ~zero])


def test_hflip_mirrors_the_images_its_key_draws_and_keeps_the_others():
    x, key = batch(n=40), random.key(4)
    y = A.hflip(0.5)(key, x)
    flipped = random.generator(key).random(40) < 0.5  # the draw hflip makes from its key
    assert 10 < flipped.sum() < 30
    for xi, yi, f in zip(x, y, flipped):
        np.testing.assert_array_equal(yi, xi[:, :, ::-1] if f else xi)
    np.testing.assert_array_equal(A.hflip(1.0)(key, x), x[..., ::-1])
    np.testing.assert_array_equal(A.hflip(0.0)(key, x), x)
    np.testing.assert_array_equal(A.hflip(1.0)(key, A.hflip(1.0)(key, x)), x)  # twice: the image


def test_chain_applies_in_order_with_split_keys():
    x, key = batch(), random.key(9)
    a, b = A.affine(rotate=20), A.translate(1)
    k1, k2 = random.split(key, 2)
    np.testing.assert_array_equal(A.chain(a, b)(key, x), b(k2, a(k1, x)))
    y = A.chain()(key, x)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(x, y)


@pytest.mark.parametrize(
    "make,error,names",
    [
        (lambda: A.translate(-1), fn.InvalidValueError, ["translate", "max_shift", "-1"]),
        (lambda: A.translate(1.5), fn.InvalidValueError, ["max_shift", "1.5"]),
        (lambda: A.affine(rotate=200), fn.InvalidValueError, ["affine", "rotate", "200"]),
        (lambda: A.affine(scale=float("nan")), fn.InvalidValueError, ["scale", "nan"]),
        (lambda: A.cutout(0), fn.InvalidValueError, ["cutout", "size", "0"]),
        (lambda: A.hflip(1.5), fn.InvalidValueError, ["hflip", "p (the probability of a flip)", "1.5"]),
        (lambda: A.hflip(0.5)(random.key(0), np.zeros((2, 1, 9, 9), np.int64)), fn.DTypeError, ["hflip", "int64"]),
        (lambda: A.chain(A.cutout(2), 3), fn.InvalidTypeError, ["chain", "argument 1"]),
        (lambda: A.translate(1)(random.key(0), np.zeros((2, 9, 9))), fn.ShapeError, ["translate", "(N, C, H, W)"]),
        (lambda: A.cutout(2)(random.key(0), np.zeros((2, 1, 9, 9), np.uint8)), fn.DTypeError, ["cutout", "uint8"]),
    ],
)
def test_bad_arguments_are_named(make, error, names):
    with pytest.raises(error) as e:
        make()
    for n in names:
        assert n in str(e.value), str(e.value)
