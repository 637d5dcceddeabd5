"""The Python examples of the README and of the guide in docs/ run as written."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# (docs/interop.md's examples need onnxruntime and torch, and run in order in one namespace:
# tests/test_docs.py::test_the_interop_page_runs_as_written, in nox -s interop)
PAGES = [README, *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "interop.md")]
BLOCKS = [(page, code) for page in PAGES for code in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the divergence example
@pytest.mark.parametrize(
    "page,code", BLOCKS, ids=[f"{page.name}-{i}" for i, (page, _) in enumerate(BLOCKS)]
)
def test_example_runs(page, code, tmp_path, monkeypatch, capsys):
    if "from mpi4py import" in code:  # (tests/test_distributed.py runs it on 2 ranks, required in nox -s distributed)
        pytest.importorskip("mpi4py", reason="the example needs the extra: pip install mpi4py")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").symlink_to(ROOT / "pipelines")  # (the examples run from the checkout's root)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (an example may put pipelines/ on it)
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    exec(compile(code, str(page), "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out or "assert" in code  # an example prints its result or checks it


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("\n\n")[1]
    assert "nox -s mnist" in head and "nox -s tests" in head and "pip install nox" in head


def test_readme_links_to_pages_that_exist():
    for target in re.findall(r"\]\((docs/[^)#]+)\)", README.read_text()):
        assert (ROOT / target).is_file(), target


SHELL = [(page, line.split("#")[0].strip()) for page in PAGES + [ROOT / "docs" / "interop.md"]
         for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S) for line in block.splitlines()
         if line.strip() and not line.lstrip().startswith("#")]


def test_shell_lines_name_extras_and_flags_that_exist():
    """The shell lines of README and docs, checked as far as a test can: every extra a `pip install
    '.[...]'` names is in pyproject.toml, and every `python pipelines/mnist.py` line parses."""
    import tomllib
    from conftest import pipeline_module

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    recipes = pipeline_module("recipes")
    checked = 0
    for page, line in SHELL:
        for named in re.findall(r"'\.\[([a-z,]+)\]'", line):
            assert set(named.split(",")) <= extras, (page.name, line)
            checked += 1
        if line.startswith("python pipelines/mnist.py") and "--resume" not in line and "--help" not in line:
            argv = [a.strip("'\"") for a in line.split()[2:]]
            if "--export" in argv and importlib.util.find_spec("onnx") is None:  # (refused without onnx, as told)
                del argv[argv.index("--export"):argv.index("--export") + 2]
            args = recipes.parse_args(argv)
            assert args.out, (page.name, line)
            checked += 1
    assert checked >= 8  # (the README's and the guide's install and pipeline lines)
