"""Execute the tutorial notebook (docs/tutorial.py, jupytext's percent format) top to
bottom with nbclient and write it, with its outputs, as docs/tutorial.ipynb, the page the
docs site renders. Any error in a cell fails (exit 1), naming the cell. Run by
``nox -s notebook`` and ``nox -s docs``; the cells run in a temporary folder, so the
files they write (an ONNX model) stay out of the tree."""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import jupytext
import nbclient
import nbformat

DOCS = pathlib.Path(__file__).resolve().parent


def main() -> int:
    notebook = jupytext.read(DOCS / "tutorial.py")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": folder}})
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as exc:
            print(f"docs/tutorial.py: a cell failed:\n{exc}", file=sys.stderr)
            return 1
    nbformat.write(notebook, DOCS / "tutorial.ipynb")
    print(f"docs/tutorial.ipynb: {len(notebook.cells)} cells run in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
