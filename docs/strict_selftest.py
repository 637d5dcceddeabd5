"""The docs build's guards work: in a copy of the tree, a public function without a
docstring, and a docstring that refers to a name the site does not document, each make
``mkdocs build --strict`` fail with a message naming them. Run by ``nox -s docs``."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = {
    "missing docstring": (
        '    """Fraction of rows of ``logits`` (N, C) whose arg-max matches the label (class ids\n'
        '    (N,) or one-hot rows (N, C))."""\n',
        "",
        "public name fnnet.metrics.accuracy has no docstring",
    ),
    "broken reference": (
        '    """``m[true, predicted]`` counts',
        '    """See :func:`fnnet.no_such_thing`. ``m[true, predicted]`` counts',
        "Could not find cross-reference target 'fnnet.no_such_thing'",
    ),
}


def main() -> int:
    for name, (old, new, expected) in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            copy = pathlib.Path(tmp)
            for part in ("fnnet", "docs", "mkdocs.yml"):
                src = ROOT / part
                (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / part)
            metrics = copy / "fnnet" / "metrics.py"
            text = metrics.read_text()
            assert old in text, f"{name}: the selftest's anchor text is gone from fnnet/metrics.py"
            metrics.write_text(text.replace(old, new))
            command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(copy / "site")]
            env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
            proc = subprocess.run(command, cwd=copy, capture_output=True, text=True, env=env)
            if proc.returncode == 0 or expected not in proc.stderr:
                print(f"FAIL {name}: exit {proc.returncode}\n{proc.stderr}", file=sys.stderr)
                return 1
            print(f"ok: {name} fails the strict build ({expected})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
