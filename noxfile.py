"""nox sessions: tests (compiled kernels), tests_numpy, build, lint, docs, distributed, sweep, interop, mnist, bench.

Every session builds fnnet into a fresh virtualenv the way a user would (`pip install .`),
so the compiled kernels are the ones under test.
"""

from __future__ import annotations

import os
import pathlib
import platform
import runpy
import zipfile

import nox

nox.options.sessions = ["tests", "tests_numpy", "build", "lint"]
nox.options.default_venv_backend = "venv"

ROOT = pathlib.Path(__file__).parent
SHARED_DATA = ROOT.parent / "shared" / "data"
_FAMILIES = runpy.run_path(str(ROOT / "fnnet" / "kernels" / "_families.py"))
KERNEL_FAMILIES, ISA_FAMILIES, ISAS = _FAMILIES["FAMILIES"], _FAMILIES["ISA_FAMILIES"], _FAMILIES["ISAS"]


def _env(**extra: str) -> dict[str, str]:
    """Point FNNET_DATA_DIR at ../shared/data when it exists and nothing else is set."""
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **extra}
    if "FNNET_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        env["FNNET_DATA_DIR"] = str(SHARED_DATA.resolve())
    return env


def _pytest(session: nox.Session, backend: str, *args: str) -> None:
    """Install fnnet with its compiled kernels and run the suite on ``backend``'s kernels."""
    session.install(".[test]")
    env = _env(FNNET_KERNELS=backend, FNNET_EXPECT_BACKEND=backend, FNNET_REQUIRE_COMPILED="1")
    session.run("pytest", *(session.posargs or ["-q", *args]), env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against the compiled (Pythran) kernels; fails if they did not build."""
    _pytest(session, "pythran")


@nox.session
def tests_numpy(session: nox.Session) -> None:
    """The same suite with the numpy twins forced (FNNET_KERNELS=numpy), but for the
    end-to-end pipeline runs marked slow: they run in ``tests`` (4.5 of this session's 9
    minutes on a 2-core machine); the pipeline's short runs still run here."""
    _pytest(session, "numpy", "-m", "not slow")


@nox.session
def build(session: nox.Session) -> None:
    """sdist + wheel; the wheel holds the compiled kernels and works in a fresh venv."""
    session.install("build")
    dist = pathlib.Path(session.create_tmp()) / "dist"
    session.run("python", "-m", "build", "--outdir", str(dist))
    wheel = next(dist.glob("fnnet-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    modules = [f"_{family}" for family in KERNEL_FAMILIES]
    if platform.machine() in ("x86_64", "AMD64"):  # the hot families' builds for newer instruction sets too
        modules += [f"_{family}_{isa}" for family in ISA_FAMILIES for isa in ISAS]
    for module in modules:
        if not any(n.startswith(f"fnnet/kernels/{module}.") and n.endswith((".so", ".pyd")) for n in names):
            session.error(f"{wheel.name} lacks the compiled kernel module fnnet/kernels/{module}")
    if "fnnet/py.typed" not in names:
        session.error(f"{wheel.name} lacks fnnet/py.typed: type checkers would ignore fnnet's annotations")
    if any(n.endswith("_pythran.py") for n in names):
        session.error(f"{wheel.name} ships pythran sources: an installed tree must not import the interpreted loops")
    session.log(f"{wheel.name}: {len(names)} files, compiled kernels present")
    fresh = dist / "fresh-venv"
    session.run("python", "-m", "venv", str(fresh))
    py = str(fresh / "bin" / "python")
    session.run(py, "-m", "pip", "install", "-q", str(wheel), external=True)
    check = (
        "import numpy as np, fnnet as fn\n"
        "assert fn.kernels.backend() == 'pythran', fn.kernels.backend()\n"
        "m = fn.serial(fn.conv2d(1, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(64), fn.relu(),"
        " fn.dense(10))\n"
        "p, _ = m.init(fn.random.key(0), (1, 28, 28))\n"
        "y, _ = m.forward(p, np.zeros((2, 1, 28, 28), np.float32))\n"
        "assert y.shape == (2, 10)\n"
        "print('wheel OK: backend', fn.kernels.backend(), 'logits', y.shape)\n"
    )
    # -I: isolated mode, so the source tree in the cwd cannot shadow the installed wheel
    session.run(py, "-I", "-c", check, external=True, env={"FNNET_KERNELS": "pythran"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and mypy (pinned; settings in pyproject.toml) on fnnet/ and pipelines/."""
    session.install("ruff", "mypy==2.4.1", "types-tqdm==4.70.0.20261106", "numpy>=2.0", "attrs>=23.1")
    session.run("ruff", "check", ".")
    session.run("mypy")


DOCS = ["mkdocs==1.6.1", "mkdocs-material==9.8.2", "mkdocstrings==1.0.8", "mkdocstrings-python==2.0.11",
        "mkdocs-jupyter==0.26.3", "ruff"]  # ruff: mkdocstrings formats long signatures with it


NOTEBOOK = ["jupytext==1.19.7", "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"]


def _run_notebook(session: nox.Session) -> None:
    session.install(".[plot,onnx]", *NOTEBOOK)
    session.run("python", "docs/run_notebook.py", env=_env())


@nox.session
def notebook(session: nox.Session) -> None:
    """The tutorial notebook (docs/tutorial.py) executed top to bottom with nbclient, fnnet
    built into the session the way a user installs it; any error fails. Writes
    docs/tutorial.ipynb with its outputs (the page the docs site shows)."""
    _run_notebook(session)


@nox.session
def docs(session: nox.Session) -> None:
    """The guide and API reference as an HTML site in site/ (mkdocs + mkdocstrings, read
    from the sources), strict: a broken reference or a public name without a docstring
    fails the build; then a selftest that both guards still bite. The tutorial notebook is
    executed first (as in ``notebook``) and shown with its outputs (mkdocs-jupyter), and
    the speed-accuracy plot of docs/pipeline.md drawn from docs/ablation.csv."""
    _run_notebook(session)
    session.run("python", "docs/ablation.py")
    session.install(*DOCS)
    env = {"NO_MKDOCS_2_WARNING": "1"}
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env=env)
    session.run("python", "docs/strict_selftest.py", env=env)


@nox.session
def distributed(session: nox.Session) -> None:
    """Data-parallel training over MPI: mpi4py and the mpich wheel's MPI runtime (mpiexec),
    then tests/test_distributed.py with every MPI test required to run (none may skip)."""
    session.install(".[test,distributed]", "mpich")
    env = _env(FNNET_REQUIRE_MPI="1")
    session.run("pytest", *(session.posargs or ["-q", "-rs", "tests/test_distributed.py"]), env=env)


@nox.session
def sweep(session: nox.Session) -> None:
    """Sweeps on Ray Tune: ray[tune], then tests/test_sweep.py with Ray required (a
    4-trial sweep, an ASHA sweep, a trial against its standalone run)."""
    session.install(".[test,tune]")
    env = _env(FNNET_REQUIRE_RAY="1", RAY_USAGE_STATS_ENABLED="0")
    session.run("pytest", *(session.posargs or ["-q", "-rs", "tests/test_sweep.py"]), env=env)


INTEROP = ["safetensors==0.8.0", "torch==2.13.0"]  # the peers the interop tests check fnnet's files against


@nox.session
def interop(session: nox.Session) -> None:
    """Models out and weights in: onnx and onnxruntime (the extra fnnet[onnx]), safetensors
    and torch (CPU) in this session only, then the tests of the ONNX export, of safetensors
    files in safetensors.numpy and .torch, of PyTorch state dicts, and docs/interop.md's
    examples, every one required to run (none may skip)."""
    session.install(".[test,onnx]", *INTEROP)
    env = _env(FNNET_REQUIRE_INTEROP="1")
    session.run("pytest", *(session.posargs or ["-q", "-rs", "-m", "interop"]), env=env)


@nox.session
def mnist(session: nox.Session) -> None:
    """Train the default preset on MNIST end to end (pass arguments after --)."""
    session.install(".[plot]")
    # the session's own folder, replaced on each run so that the README's command can be run again
    args = session.posargs or ["--preset", "default", "--out", "runs/mnist-default", "--overwrite"]
    session.run("python", "pipelines/mnist.py", *args, env=_env())


@nox.session
def bench(session: nox.Session) -> None:
    """fnnet against numpy, PyTorch and JAX: the kernels, training and inference on one thread
    and on all cores (each framework in its own processes), and the default preset end to end
    against the same recipe as a plain PyTorch script; tables in benchmarks/results/."""
    session.install(".[plot]")
    for peer in (["torch==2.13.0"], ["jax", "jaxlib"]):  # the peers live in this session only
        try:
            session.install(*peer)
        except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
            session.warn(f"could not install {' '.join(peer)} ({exc}); benchmarking without it")
    session.run("python", "benchmarks/bench_kernels.py", env=_env())
    session.run("python", "benchmarks/bench_train.py", "--threads", "1", *session.posargs, env=_env())
    # all cores: each framework at its own default (the harness sets BLAS threads per framework)
    env = {k: v for k, v in _env().items() if not k.endswith("_NUM_THREADS")}
    session.run("python", "benchmarks/bench_train.py", "--threads", "all", *session.posargs, env=env)
    # whole processes, alternating, at their defaults and at one thread (the script sets each mode's environment)
    session.run("python", "benchmarks/bench_e2e.py", "--pairs", "4", env=env)
