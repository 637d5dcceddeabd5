"""A griffe extension for the docs build: fnnet's docstrings use Sphinx roles
(:func:`fnnet.jit`, :class:`~fnnet.DataError`); here they become mkdocs-autorefs links,
so that the strict build fails on a reference to something the site does not document.
Roles naming a private or outside object become plain code."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|obj|exc):`(~?)([\w.]+)`")


def _link(match: re.Match, here: str, owner: str) -> str:
    tilde, target = match.groups()
    role = match.group(0)[1:].split(":", 1)[0]
    shown = target.rsplit(".", 1)[-1] if tilde else target
    if any(part.startswith("_") for part in target.split(".")):
        return f"`{shown}`"  # private: documented in the source, not on the site
    if not target.startswith("fnnet"):
        if "." in target:
            return f"`{shown}`"  # another library's name (typing.Protocol...)
        # a method or attribute of the same class, else a name of the same module
        target = f"{owner if role in ('meth', 'attr') else here}.{target}"
    return f"[`{shown}`][{target}]"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        module = obj if obj.is_module else obj.module
        owner = obj if obj.is_class else obj.parent
        obj.docstring.value = ROLE.sub(lambda m: _link(m, module.path, owner.path), obj.docstring.value)
