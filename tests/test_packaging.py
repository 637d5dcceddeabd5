"""Every module of the package is listed for installation in fnnet/meson.build."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_meson_installs_every_module():
    build = (ROOT / "fnnet" / "meson.build").read_text()
    listed = set(re.findall(r"'([\w/]+\.py)'", build))
    present = {
        str(p.relative_to(ROOT / "fnnet"))
        for p in (ROOT / "fnnet").rglob("*.py")
        if not p.name.endswith("_pythran.py") and "__pycache__" not in p.parts
    }
    assert present - listed == set(), "add these to fnnet/meson.build"
    assert listed - present == set(), "listed in fnnet/meson.build but missing"
