"""What a sweep leaves in --out beside its trials: results.csv and results.md (one row per
trial) and sweep.png (accuracy against the swept hyper-parameter)."""

from __future__ import annotations

import csv
import pathlib
import sys
from typing import Any

__all__ = ["plot", "write_tables"]


def write_tables(out: pathlib.Path, rows: list[dict]) -> None:
    """results.csv and results.md: one row per trial."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return f"`{v}`" if isinstance(v, str) and (v.startswith("python") or len(v) == 64) else str(v)

    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in fields) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot(out: pathlib.Path, rows: list[dict], swept: list[str]) -> bool:
    """sweep.png: the final accuracy (test, else validation) against the first swept
    hyper-parameter (the trial index when only seeds vary), one point per seed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no sweep.png (pip install matplotlib)", file=sys.stderr)
        return False
    x_name = swept[0] if swept else "seed"
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, seed in enumerate(sorted({r["seed"] for r in rows})):
        done = [r for r in rows if r["seed"] == seed and r["test_accuracy"] is not None]
        stopped = [r for r in rows
                   if r["seed"] == seed and r["test_accuracy"] is None and r["val_accuracy"] is not None]
        ax.plot([r[x_name] for r in done], [r["test_accuracy"] for r in done], "o", color=f"C{i}", alpha=0.8,
                label=f"seed {seed}")
        if stopped:  # the validation accuracy where the scheduler stopped them
            ax.plot([r[x_name] for r in stopped], [r["val_accuracy"] for r in stopped], "x", color=f"C{i}",
                    label=f"seed {seed}, stopped early")
    if x_name == "lr":
        ax.set_xscale("log")
    ax.set_xlabel(x_name)
    ax.set_ylabel("test accuracy (x: validation, stopped early)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    plt.close(fig)
    return True
