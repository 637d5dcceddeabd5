"""Hot kernels: compiled by Pythran when built, numpy twins otherwise.

The kernels come in families (:data:`FAMILIES`, declared in ``_families.py``): family
``<f>`` is compiled from ``_<f>_pythran.py`` to ``fnnet.kernels._<f>`` and has a numpy twin
``fnnet/kernels/<f>.py`` with the same signatures. The functions here dispatch to one or
the other, chosen once at import:

* ``FNNET_KERNELS=numpy`` forces the twins;
* ``FNNET_KERNELS=pythran`` requires the compiled modules (ImportError otherwise);
* unset or ``auto``: compiled if importable, else the twins with one RuntimeWarning.

The families of ``ISA_FAMILIES`` are also compiled for newer x86-64 instruction sets
(``ISAS``: ``avx512``, ``avx2``); the best one this CPU runs is chosen at import, as
numpy chooses its own SIMD loops (``FNNET_KERNELS_ISA=baseline|avx2|avx512`` forces one).
Every variant gives the plain build's bits; :func:`isa` says which one runs.

Kernels write into preallocated output arrays (their last arguments), so callers can
reuse buffers; output sizes come from the shapes of those arrays. Inputs must be
C-contiguous float32/float64 (int64 for indices); the wrappers here make them so.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import pathlib
import sys
import types
import warnings
from types import SimpleNamespace

import numpy as np

from .._errors import InvalidValueError
from ._families import FAMILIES, ISA_FAMILIES, ISAS

KERNEL_NAMES = tuple(name for names in FAMILIES.values() for name in names)
"""Every kernel's name, family by family."""

__all__ = [
    "FAMILIES",
    "ISAS",
    "ISA_FAMILIES",
    "KERNEL_NAMES",
    "adam_update",
    "affine_warp",
    "avg_pool_backward",
    "avg_pool_forward",
    "backend",
    "bn_backward",
    "bn_grad_sums",
    "bn_moments",
    "bn_normalize",
    "col2im",
    "compiled",
    "cpu_isas",
    "gelu_backward",
    "gelu_forward",
    "im2col",
    "im2row",
    "isa",
    "max_pool_backward",
    "max_pool_forward",
    "max_pool_values",
    "relu_backward",
    "relu_forward",
    "relu_max_pool_backward",
    "row2im",
    "scale_shift_relu",
    "scale_shift_relu_max_pool",
    "scale_shift_relu_max_pool_values",
    "softmax_xent",
    "standardize",
    "twins",
]


def _namespace(prefix: str, isa: str = "baseline") -> SimpleNamespace:
    """Every kernel from the modules ``<prefix><family>`` of this package (for the
    families of ``ISA_FAMILIES``, ``<prefix><family>_<isa>`` unless ``isa`` is baseline)."""
    def module(f: str) -> str:
        return f"{__name__}.{prefix}{f}" + (f"_{isa}" if isa != "baseline" and f in ISA_FAMILIES else "")

    mods = {f: importlib.import_module(module(f)) for f in FAMILIES}
    return SimpleNamespace(**{n: getattr(mods[f], n) for f, names in FAMILIES.items() for n in names})


twins = _namespace("")
"""The numpy twins of every kernel (a namespace of functions with the compiled ones' signatures)."""


def cpu_isas() -> list[str]:
    """The instruction sets of ``ISAS`` this CPU runs (best first), from numpy's table of
    the CPU's features (``numpy._core._multiarray_umath.__cpu_features__``)."""
    try:
        features = importlib.import_module("numpy._core._multiarray_umath").__cpu_features__
    except (ImportError, AttributeError):  # (another numpy layout: the plain build only)
        return []
    return [isa for isa, needs in ISAS.items() if all(features.get(f) for f in needs)]


def _isas() -> list[str]:
    """The variants to try, best first (``FNNET_KERNELS_ISA``, else what the CPU runs), then the plain build."""
    wanted = os.environ.get("FNNET_KERNELS_ISA", "auto").strip().lower() or "auto"
    if wanted not in ("auto", "baseline", *ISAS):
        raise InvalidValueError(f"FNNET_KERNELS_ISA must be 'auto', 'baseline' or one of {', '.join(map(repr, ISAS))}, "
                                f"got {wanted!r}")
    runs = cpu_isas() if ISA_FAMILIES else []  # (no family built for one: the plain build only)
    if wanted in ISAS and wanted not in cpu_isas():
        raise InvalidValueError(f"FNNET_KERNELS_ISA={wanted} but this CPU lacks its features "
                                f"({', '.join(ISAS[wanted])}); it runs: {', '.join([*runs, 'baseline'])}")
    return ["baseline"] if wanted == "baseline" else [wanted] if wanted in ISAS else [*runs, "baseline"]


def _load_compiled() -> tuple[SimpleNamespace | None, str, str | None]:
    """The compiled kernels of the best variant that imports, its name, and why none did."""
    why = ""
    for isa in _isas():
        try:
            return _namespace("_", isa), "", isa
        except ImportError as exc:
            why = why or str(exc)
    return None, why, None


def _select() -> tuple[str, SimpleNamespace, SimpleNamespace | None, str | None]:
    """(backend, the kernels in use, the compiled kernels or None, their variant or None)."""
    mode = os.environ.get("FNNET_KERNELS", "auto").strip().lower() or "auto"
    if mode not in ("auto", "pythran", "numpy"):
        raise InvalidValueError(f"FNNET_KERNELS must be 'auto', 'pythran' or 'numpy', got {mode!r}")
    comp, why, variant = _load_compiled()
    if mode == "numpy":
        return "numpy", twins, comp, variant
    if comp is None:
        if mode == "pythran":
            raise ImportError(f"FNNET_KERNELS=pythran but the compiled kernels do not import: {why}")
        warnings.warn(_without_kernels(why), RuntimeWarning, stacklevel=_user_stacklevel())
        return "numpy", twins, None, None
    return "pythran", comp, comp, variant


def _without_kernels(why: str) -> str:
    """The warning when no compiled kernels import: where this fnnet is, and the fix that works."""
    here = pathlib.Path(__file__).resolve().parents[1]
    head = f"fnnet: no compiled kernels in {here} ({why}); the numpy twins run, 3-20x slower. "
    if not (here.parent / "meson.build").is_file():
        return head + "Reinstall fnnet (pip install fnnet, or pip install . from a checkout) to build them."
    installed = _installed_elsewhere(here)
    shadow = (f"This is the source checkout, which shadows the fnnet installed in {installed} because Python "
              "started in the checkout's folder. " if installed else "This is a source checkout, never built. ")
    return head + shadow + ("Run from another folder, or `python -I` (the current folder off the path), or "
                            "install the checkout editable, which builds the kernels: pip install meson-python "
                            "meson ninja pythran numpy && pip install --no-build-isolation -e .")


def _installed_elsewhere(here: pathlib.Path) -> pathlib.Path | None:
    """The folder of an installed fnnet other than ``here``, if the environment has one."""
    try:
        located = pathlib.Path(str(importlib.metadata.distribution("fnnet").locate_file("fnnet"))).resolve()
    except importlib.metadata.PackageNotFoundError:
        return None
    return located if located != here and located.is_dir() else None


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside fnnet and the import machinery: the
    user's line that imported fnnet (an ``import fnnet`` passes through a dozen frames)."""
    package = str(pathlib.Path(__file__).resolve().parents[1])
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(package) or "importlib" in name):
            return level
        frame = frame.f_back
        level += "importlib" not in name  # (warnings skips the import machinery's frames in its count)
    return 1


_BACKEND, _impl, _compiled, _VARIANT = _select()
compiled = _compiled
"""The compiled kernels (a namespace of functions), or None where they are not built."""


def backend() -> str:
    """``"pythran"`` when the compiled kernels are in use, ``"numpy"`` otherwise."""
    return _BACKEND


def isa() -> str | None:
    """The instruction set the compiled kernels in use were built for (``"avx512"``,
    ``"avx2"`` or ``"baseline"``, the plain build), or None when the numpy twins run.
    Every variant gives the same bits."""
    return _VARIANT if _BACKEND == "pythran" else None


def _c(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def im2col(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int,
    pt: int, pb: int, pl: int, pr: int, cols: np.ndarray,
) -> np.ndarray:
    """Patch matrix of ``x`` (N, C, H, W) into ``cols`` (N, C*kh*kw, Ho, Wo); returns cols.

    Windows of kh x kw taps at strides (sh, sw), dilations (dil_h, dil_w), over ``x`` zero-padded
    by (top pt, bottom pb, left pl, right pr). Row ``(c*kh + i)*kw + j`` of a sample's
    matrix holds the pixels under tap (i, j) of channel c."""
    _impl.im2col(_c(x), kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, cols)
    return cols


def col2im(
    cols: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int,
    pt: int, pb: int, pl: int, pr: int, x: np.ndarray,
) -> np.ndarray:
    """Adjoint of :func:`im2col`: ``cols`` (N, C*kh*kw, Ho, Wo) summed into ``x`` (N, C, H, W),
    overwritten; returns x."""
    _impl.col2im(_c(cols), kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, x)
    return x


def im2row(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int,
    pt: int, pb: int, pl: int, pr: int, groups: int, xt: np.ndarray, rows: np.ndarray,
) -> np.ndarray:
    """Patch rows of ``x`` (N, C, H, W) into ``rows`` (N, Ho, Wo, C*kh*kw); returns rows.

    The geometry as :func:`im2col`'s. Column ``((g*kh + i)*kw + j)*C/G + c`` of an output
    pixel's row holds channel c of group g (of ``groups``) under tap (i, j): the pixel's
    patch with the channels innermost, so that the compiled kernel copies runs of C/G
    floats from an NHWC copy of ``x``, which it makes in ``xt`` (N, H+pt+pb, W+pl+pr, C)."""
    _impl.im2row(_c(x), kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, groups, xt, rows)
    return rows


def row2im(
    rows: np.ndarray, kh: int, kw: int, sh: int, sw: int, dil_h: int, dil_w: int,
    pt: int, pb: int, pl: int, pr: int, groups: int, xt: np.ndarray, x: np.ndarray,
) -> np.ndarray:
    """Adjoint of :func:`im2row`: ``rows`` (N, Ho, Wo, C*kh*kw) summed into ``x`` (N, C, H,
    W), overwritten (``xt`` as :func:`im2row`'s); returns x."""
    _impl.row2im(_c(rows), kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr, groups, xt, x)
    return x


def max_pool_forward(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray, idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Window maxima into ``y`` and winners' flat (h*W + w) indices into ``idx``."""
    x = _c(x)
    # 2x2 at stride 2 takes the branch-free kernel, which says if it met a NaN: then (and
    # for any other window) the loop that follows the NaN rule
    if (kh, kw, sh, sw) != (2, 2, 2, 2) or _impl.max_pool_2x2_forward(x, y, idx):
        _impl.max_pool_forward(x, kh, kw, sh, sw, y, idx)
    return y, idx


def max_pool_values(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray) -> np.ndarray:
    """Window maxima into ``y`` without their positions (for inference); returns y."""
    x = _c(x)
    # the np.maximum tree drops a NaN: one min-reduce (a NaN propagates) finds one first
    if (kh, kw, sh, sw) == (2, 2, 2, 2) and x.size and not math.isnan(np.minimum.reduce(x, axis=None)):
        _impl.max_pool_2x2_values(x, y)
    else:
        _impl.max_pool_values(x, kh, kw, sh, sw, y)
    return y


def max_pool_backward(dy: np.ndarray, idx: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Gradient of max pooling into ``dx`` (N, C, H, W), overwritten; returns dx.

    The kernels see ``dx`` as (N, C, H*W), so that ``idx`` addresses it without division.
    """
    n, c, h, w = dx.shape
    _impl.max_pool_backward(_c(dy), _c(idx), dx.reshape(n, c, h * w))
    return dx


def avg_pool_forward(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray) -> np.ndarray:
    """Window means into ``y``; returns y."""
    _impl.avg_pool_forward(_c(x), kh, kw, sh, sw, y)
    return y


def avg_pool_backward(dy: np.ndarray, kh: int, kw: int, sh: int, sw: int, dx: np.ndarray) -> np.ndarray:
    """Gradient of average pooling into ``dx`` (overwritten); returns dx."""
    _impl.avg_pool_backward(_c(dy), kh, kw, sh, sw, dx)
    return dx


def softmax_xent(logits: np.ndarray, labels: np.ndarray, dlogits: np.ndarray) -> tuple[float, int]:
    """Summed softmax cross-entropy of (N, C) ``logits`` and int64 ``labels``; writes
    ``(softmax - onehot) / N`` into ``dlogits``; returns ``(loss_sum, status)``."""
    return _impl.softmax_xent(_c(logits), _c(labels), dlogits)


def affine_warp(x: np.ndarray, m: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``x`` (N, C, H, W) at ``m[i] @ (r, q, 1)`` (``m`` float64
    (N, 2, 3)) for each output pixel ``(r, q)`` of image ``i`` into ``out`` (zeros outside
    ``x``); returns out."""
    _impl.affine_warp(_c(x), np.ascontiguousarray(m, np.float64), out)
    return out


def relu_forward(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y = max(x, 0)`` elementwise (NaN propagates, -0.0 becomes 0); returns y."""
    _impl.relu_forward(_c(x).reshape(-1), y.reshape(-1))
    return y


def relu_backward(y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``dx = dy * (y > 0)`` elementwise, ``y`` the forward output; returns dx."""
    _impl.relu_backward(_c(y).reshape(-1), _c(dy).reshape(-1), dx.reshape(-1))
    return dx


def gelu_forward(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y = x * Phi(x)`` elementwise (GELU's exact form; Phi the standard normal CDF,
    computed in float64 with erf); returns y."""
    _impl.gelu_forward(_c(x).reshape(-1), y.reshape(-1))
    return y


def gelu_backward(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``dx = dy * (Phi(x) + x phi(x))`` elementwise, ``x`` the forward input; returns dx."""
    _impl.gelu_backward(_c(x).reshape(-1), _c(dy).reshape(-1), dx.reshape(-1))
    return dx


def _ncs(a: np.ndarray, out: bool = False) -> np.ndarray:
    """``a`` (N, C, ...) as a C-contiguous (N, C, S) array (S: the product of the rest, 1
    for (N, C)); an output (``out``) must be C-contiguous already, so that the view is written."""
    if out and not a.flags.c_contiguous:
        raise ValueError("batch-norm kernels write into C-contiguous arrays only")
    return _c(a).reshape(a.shape[0], a.shape[1], -1)


def bn_moments(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Each channel's mean (``out[0]``) and sum of squared deviations (``out[1]``) over the
    batch and space of ``x`` (N, C, ...), in float64 ``out`` (2, C); returns out."""
    _impl.bn_moments(_ncs(x), out)
    return out


def bn_normalize(x: np.ndarray, coef: np.ndarray, xhat: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per channel of ``x`` (N, C, ...), with ``coef`` (4, C) of x's dtype holding the
    rows mean, inv_std, scale, shift: ``xhat = (x - mean) * inv_std`` and
    ``y = xhat * scale + shift``; returns y."""
    _impl.bn_normalize(_ncs(x), _c(coef), _ncs(xhat, True), _ncs(y, True))
    return y


def bn_grad_sums(dy: np.ndarray, xhat: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Each channel's sum of ``dy`` (``out[0]``) and of ``dy * xhat`` (``out[1]``), float64
    ``out`` (2, C); returns out."""
    _impl.bn_grad_sums(_ncs(dy), _ncs(xhat), out)
    return out


def bn_backward(dy: np.ndarray, xhat: np.ndarray, k: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``dx = k[0] * dy - k[1] - k[2] * xhat`` per channel (``k`` (3 or more, C) of dy's
    dtype); returns dx."""
    _impl.bn_backward(_ncs(dy), _ncs(xhat), _c(k), _ncs(dx, True))
    return dx



def standardize(x: np.ndarray, coef: np.ndarray, xhat: np.ndarray) -> np.ndarray:
    """``xhat = (x - mean) * inv_std`` per channel of ``x`` (N, C, ...), ``coef`` (2 or
    more, C) of x's dtype holding the rows mean and inv_std: the bits of
    :func:`bn_normalize`'s ``xhat``. Returns xhat."""
    _impl.standardize(_ncs(x), _c(coef), _ncs(xhat, True))
    return xhat


def scale_shift_relu(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y = relu(x * scale + shift)`` per channel (axis 1) of ``x`` (N, C, ...), in one
    pass; ``y`` may be ``x``. With ``scale`` ones it is the bias add then
    :func:`relu_forward`; with batch norm's scale and shift on ``xhat``, :func:`bn_normalize`'s
    ``y`` then :func:`relu_forward`: the same bits. Returns y."""
    _impl.scale_shift_relu(_ncs(x), _c(scale), _c(shift), _ncs(y, True))
    return y


def scale_shift_relu_max_pool(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray,
    idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`max_pool_forward` of :func:`scale_shift_relu`'s output (``x`` (N, C, H, W))
    in one pass that writes neither it nor ``x * scale + shift``; the same bits. Returns ``(y, idx)``."""
    x, scale, shift = _c(x), _c(scale), _c(shift)
    if (kh, kw, sh, sw) != (2, 2, 2, 2) or _impl.scale_shift_relu_max_pool_2x2(x, scale, shift, y, idx):
        _impl.scale_shift_relu_max_pool(x, scale, shift, kh, kw, sh, sw, y, idx)
    return y, idx


def scale_shift_relu_max_pool_values(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray,
) -> np.ndarray:
    """:func:`max_pool_values` of :func:`scale_shift_relu`'s output in one pass (inference); returns y."""
    x, scale, shift = _c(x), _c(scale), _c(shift)
    if _impl.scale_shift_relu_max_pool_values(x, scale, shift, kh, kw, sh, sw, y):  # a NaN: the loop that keeps it
        _impl.scale_shift_relu_max_pool(x, scale, shift, kh, kw, sh, sw, y, np.empty(y.shape, np.int64))
    return y


def relu_max_pool_backward(
    dy: np.ndarray, idx: np.ndarray, y: np.ndarray, kh: int, kw: int, sh: int, sw: int, dz: np.ndarray,
) -> np.ndarray:
    """The gradient through max pooling then ReLU, from the pooled output ``y`` and its
    winners ``idx`` (of :func:`scale_shift_relu_max_pool`), into ``dz`` (N, C, H, W),
    overwritten: the bits of :func:`max_pool_backward` then :func:`relu_backward`, in one pass.
    Returns dz."""
    n, c, h, w = dz.shape
    _impl.relu_max_pool_backward(_c(dy), _c(idx), _c(y), int(sh < kh or sw < kw), dz.reshape(n, c, h * w))
    return dz


_ADAM_BLOCK = 1024  # (elements a block of the compiled pass: its scratch rows stay in L1)


def adam_update(
    g: np.ndarray, m: np.ndarray, v: np.ndarray, b1: float, b2: float, eps: float, c0: float, c1: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adam's step, ``(u, mu, nu)`` as new arrays of ``g``'s shape: ``mu = b1*m + (1-b1)*g``,
    ``nu = b2*v + (1-b2)*(g*g)``, ``u = (mu/c0) / (sqrt(nu/c1) + eps)``, with the scalars cast
    to the arrays' dtype and each operation rounded to it: the bits of that numpy
    expression. ``g``, ``m``, ``v`` must have one shape (ValueError otherwise)."""
    if not g.shape == m.shape == v.shape:
        raise ValueError(f"adam_update: g, m and v must have one shape, got {g.shape}, {m.shape}, {v.shape}")
    dtype = np.result_type(g, m, v, 1.0)  # (integer gradients: float64, as numpy's expression)
    impl = _impl if dtype in (np.float32, np.float64) else twins  # (float16, complex: the twin)
    shape = g.shape
    g, m, v = (_c(np.asarray(a, dtype)).reshape(-1) for a in (g, m, v))
    mu, nu, u = np.empty_like(g), np.empty_like(g), np.empty_like(g)
    t = dtype.type
    impl.adam_update(g, m, v, t(b1), t(1 - b1), t(b2), t(1 - b2), t(c0), t(c1), t(eps), mu, nu, u,
                     np.empty((2, _ADAM_BLOCK), dtype))
    return u.reshape(shape), mu.reshape(shape), nu.reshape(shape)
