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
