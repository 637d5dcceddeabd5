"""mkdocs hook for the strict build: every public name of fnnet (each module's
``__all__``) has a docstring, else a warning, which ``strict: true`` turns into a failure."""

from __future__ import annotations

import logging
from typing import Any

import griffe

log = logging.getLogger("mkdocs.plugins.fnnet")
MODULES = ["fnnet", "fnnet.checkpoint", "fnnet.data", "fnnet.data.augment", "fnnet.init", "fnnet.kernels",
           "fnnet.distributed", "fnnet.experiment", "fnnet.layers", "fnnet.losses", "fnnet.metrics", "fnnet.optim",
           "fnnet.random", "fnnet.runtime", "fnnet.shards", "fnnet.threads", "fnnet.train",
           "fnnet.tree", "fnnet.typing"]


def on_pre_build(config: Any, **kwargs: Any) -> None:
    package = griffe.load("fnnet", search_paths=["."], resolve_aliases=True, resolve_external=False)
    count = 0
    for path in MODULES:
        module = package if path == "fnnet" else package[path.removeprefix("fnnet.")]
        if not module.docstring:
            log.warning(f"docs: module {path} has no docstring")
        for name in module.exports or []:
            obj = module[name]
            target = obj.final_target if obj.is_alias else obj
            count += 1
            if not target.docstring or not target.docstring.value.strip():
                log.warning(f"docs: public name {path}.{name} has no docstring")
    log.info(f"docs: {count} public names checked for docstrings")
