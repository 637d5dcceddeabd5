"""Every public function and class has a docstring (the README promises shapes in them)."""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

import fnnet
from fnnet import checkpoint, data, export, init, kernels, losses, optim, pytorch, random, shards, tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = [fnnet, checkpoint, data, export, init, kernels, losses, optim, pytorch, random, shards, tree]


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


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "docs" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_import_graph_points_down_and_the_build_notes_show_it():
    out = subprocess.run([sys.executable, "docs/import_graph.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    page = (ROOT / "docs" / "build.md").read_text()
    shown = re.search(r"<!-- import-graph -->\n```text\n(.*?)```\n<!-- /import-graph -->", page, re.S)
    assert shown and shown.group(1).strip() == out.stdout.strip(), "docs/build.md: run python docs/import_graph.py"


def test_the_build_notes_give_every_module_its_job():
    out = subprocess.run([sys.executable, "docs/import_graph.py", "--jobs"], cwd=ROOT, capture_output=True, text=True)
    page = (ROOT / "docs" / "build.md").read_text()
    shown = re.search(r"<!-- module-jobs -->\n(.*?)\n<!-- /module-jobs -->", page, re.S)
    assert shown and shown.group(1).strip() == out.stdout.strip(), "docs/build.md: python docs/import_graph.py --jobs"
    assert "(no docstring)" not in out.stdout


LONGEST = 400
"""The most lines a source file under fnnet/ or pipelines/ may have (the kernels aside:
a kernel family and its numpy twin read best whole)."""


def test_no_source_file_is_longer_than_one_concern_needs():
    files = [*(ROOT / "fnnet").rglob("*.py"), *(ROOT / "pipelines").glob("*.py")]
    long = {str(f.relative_to(ROOT)): n for f in files
            if "kernels" not in f.parts and (n := len(f.read_text().splitlines())) > LONGEST}
    assert len(files) > 50 and not long, f"split these by concern (at most {LONGEST} lines): {long}"


def test_the_import_graph_check_finds_circles_and_upward_imports(tmp_path):
    graph = _import_graph()
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\nVERSION = 1\n")
    (pkg / "a.py").write_text("from . import b\ndef f(): pass\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import g\n")
    (pkg / "sub" / "c.py").write_text("from . import g\ndef g(): pass\n")
    edges, upward = graph.edges(graph.modules(pkg))
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.b"] == {"pkg.a"}  # (a type-only import counts)
    assert upward == ["pkg.sub.c takes g from pkg.sub/__init__.py"]
    _, circle = graph.levels(edges)
    assert {"pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"} <= set(circle)
    # another package's private module: refused, but for the package itself and a public door
    private = {"pkg.train": {"pkg.layers._layer", "pkg._errors"}, "pkg.layers.conv": {"pkg.layers._layer"},
               "fnnet.runner": {"fnnet.layers._runner"}}
    assert graph.private_imports(private) == ["pkg.train -> pkg.layers._layer"]


def _promise(text: str) -> list[str]:
    """The rows of the table of what is bit-identical to what."""
    start = text.index("| run | the same bits as one process on one thread? | test |")
    return text[start:].split("\n\n")[0].splitlines()


def test_the_promise_is_one_table_and_every_row_names_tests_that_exist():
    rows = _promise((ROOT / "docs" / "scaling.md").read_text())
    assert rows == _promise((ROOT / "README.md").read_text())
    assert len(rows) >= 10
    for row in rows[2:]:
        named = re.findall(r"`(test_\w+)\.py::(test_\w+)`", row)
        bare = re.findall(r"`(test_\w+)` \(", row) + re.findall(r"the same two tests|the same test", row)
        assert named or bare, row
        for module, name in named:
            assert f"\ndef {name}(" in (ROOT / "tests" / f"{module}.py").read_text(), (module, name)
        for name in re.findall(r"`(test_\w+)` \(", row):
            assert any(f"\ndef {name}(" in f.read_text() for f in (ROOT / "tests").glob("test_*.py")), name


@pytest.mark.interop
def test_the_interop_page_runs_as_written(tmp_path, monkeypatch):
    """docs/interop.md's Python blocks, in order, in one namespace (a fresh folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").symlink_to(ROOT / "pipelines")  # (as from the checkout's root)
    page = (ROOT / "docs" / "interop.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 6
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks:
        exec(compile(block, "docs/interop.md", "exec"), namespace)
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", "torch_weights.safetensors",
                                                     "fnnet_weights.safetensors", "run.safetensors", "runs",
                                                     "pipelines"}


PATH_REF = re.compile(r"(?<![\w./-])((?:fnnet|pipelines|tests|docs|benchmarks|\.ci)/[\w./-]*\w)(?![\w<])")


def test_every_file_the_docs_and_sources_name_exists():
    """README, the guide and fnnet's own text name files that exist (the changelog and the
    migration notes, which tell history, aside); a path may end in a line number."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "fnnet").rglob("*.py")),
             *sorted((ROOT / "pipelines").glob("*.py"))]
    missing = []
    for page in pages:
        if page.name in ("migrating.md",):
            continue
        for ref in PATH_REF.findall(page.read_text()):
            path = re.sub(r":\d+(-\d+)?$", "", ref).rstrip(".")
            if "*" in path or "<" in path or path.endswith("/"):
                continue
            if not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {ref}")
    assert not missing, "\n".join(missing)


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "docs" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ablation_table_and_its_plot_show_the_same_runs(tmp_path):
    ablation = _ablation()
    rows = ablation.runs()
    page = (ROOT / "docs" / "pipeline.md").read_text()
    table = [line for line in page.splitlines() if line.startswith("| ") and "ablation.csv" not in line]
    for r in rows:  # (each run a row of the page's table, with its figures)
        assert any(f"| {r['run']} |" in line and f"{r['validation']:.4f}" in line and f"{r['wall_seconds']:.0f} s"
                   in line for line in table), r["run"]
    assert "![" in page and "speed_accuracy.png" in page
    ablation.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(ablation.FIELDS) + "\nmnist,a run,0.99,,12,no,\n")
    with pytest.raises(ValueError, match="bad.csv line 2: expected the fields"):
        ablation.runs(bad)
