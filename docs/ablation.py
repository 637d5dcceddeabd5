"""The speed-accuracy plot of docs/pipeline.md: ``python docs/ablation.py [out.png]``.

Reads docs/ablation.csv (one row per measured run of ``pipelines/mnist.py``: the dataset,
what the run changed, its validation accuracy, its whole-process wall time) and draws
validation accuracy against wall time, one panel per dataset, the preset's own run marked.
``nox -s docs`` runs it before the site is built (the image is not committed: the table is).
"""

from __future__ import annotations

import csv
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
TABLE = HERE / "ablation.csv"
FIELDS = ("dataset", "run", "validation", "test", "wall_seconds", "preset", "flags")


def runs(path: pathlib.Path = TABLE) -> list[dict]:
    """The table's rows, numbers as floats; a ValueError naming the row unless it has every field."""
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            if tuple(row) != FIELDS or any(row[k] in (None, "") for k in FIELDS[:5]):
                raise ValueError(f"{path.name} line {i}: expected the fields {', '.join(FIELDS)}, got {row}")
            rows.append({**row, **{k: float(row[k]) for k in ("validation", "test", "wall_seconds")},
                         "preset": row["preset"] == "yes"})
    return rows


def plot(rows: list[dict], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        mine = [r for r in rows if r["dataset"] == name]
        for r in mine:
            ax.plot(r["wall_seconds"], 100 * r["validation"], "*" if r["preset"] else "o",
                    ms=14 if r["preset"] else 7, color="C3" if r["preset"] else "C0")
            ax.annotate(r["run"], (r["wall_seconds"], 100 * r["validation"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.axvline(300, color="grey", ls="--", lw=1)
        ax.set_title(f"{name}, seed 0 (star: the preset)")
        ax.set_xlabel("wall time of the whole run (s)")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    plot(runs(), pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "speed_accuracy.png")
