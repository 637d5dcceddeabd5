"""Every module of the package is listed for installation in fnnet/meson.build, and
every kernel family declared in fnnet/kernels/_families.py has its twin and its source."""

from __future__ import annotations

import pathlib
import re
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = runpy.run_path(str(ROOT / "fnnet" / "kernels" / "_families.py"))["FAMILIES"]


def test_meson_installs_every_module():
    build = (ROOT / "fnnet" / "meson.build").read_text()
    listed = set(re.findall(r"'([\w/]+\.py)'", build))
    assert "kernel_twins += 'kernels/' + kernel + '.py'" in build  # one twin per declared family
    listed |= {f"kernels/{family}.py" for family in FAMILIES}
    present = {
        str(p.relative_to(ROOT / "fnnet"))
        for p in (ROOT / "fnnet").rglob("*.py")
        if not p.name.endswith("_pythran.py") and "__pycache__" not in p.parts
    }
    assert present - listed == set(), "add these to fnnet/meson.build"
    assert "'py.typed'" in build and (ROOT / "fnnet" / "py.typed").is_file(), "PEP 561 marker: ship it"
    assert listed - present == set(), "listed in fnnet/meson.build but missing"


def test_every_family_has_its_twin_and_pythran_source_exporting_its_kernels():
    for family, names in FAMILIES.items():
        twin = (ROOT / "fnnet" / "kernels" / f"{family}.py").read_text()
        source = (ROOT / "fnnet" / "kernels" / f"_{family}_pythran.py").read_text()
        for name in names:
            assert f"def {name}(" in twin, f"{family}.py lacks {name}"
            assert f"# pythran export {name}(float32" in source and f"# pythran export {name}(float64" in source, name


def test_one_version_everywhere_and_in_the_changelog():
    import importlib.metadata

    import fnnet

    project = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    meson = re.search(r"version: '([^']+)'", (ROOT / "meson.build").read_text()).group(1)
    assert fnnet.__version__ == project == meson
    # the newest release in the changelog is this version, and the migration notes lead to it
    releases = re.findall(r"(?m)^## (\d+\.\d+\.\d+) - \d{4}-\d\d-\d\d$", (ROOT / "CHANGELOG.md").read_text())
    assert releases and releases[0] == fnnet.__version__
    assert f"to {fnnet.__version__}" in (ROOT / "docs" / "migrating.md").read_text().splitlines()[0]
    assert f"Versions: {fnnet.__version__};" in (ROOT / "README.md").read_text()
    try:  # an installed fnnet (the nox sessions) gives the same version in its metadata
        installed = importlib.metadata.version("fnnet")
    except importlib.metadata.PackageNotFoundError:
        return
    if pathlib.Path(fnnet.__file__).resolve().is_relative_to(ROOT):  # this checkout, not an install
        return
    assert installed == fnnet.__version__
