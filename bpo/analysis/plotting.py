"""Shared plumbing of the analysis commands: Agg figures, atomic PNG/CSV writes, run colours.

Figures are built with the object-oriented API (``matplotlib.figure.Figure`` on an Agg canvas), never
``pyplot``: no global figure registry to leak memory in long sessions, no display needed, and the
plotting functions can return the figure so tests can read its axis labels and lines.
Every PNG is written next to a CSV holding exactly the numbers it shows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from bpo.errors import BpoError
from bpo.io import atomic_write, read_text

# Colour-blind-safe (Okabe-Ito); runs/methods cycle through them in order.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
LINESTYLES = ("-", "--", ":", "-.")


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def linestyle(i: int) -> str:
    return LINESTYLES[i % len(LINESTYLES)]


def new_figure(n_panels: int = 1, *, ncols: int = 3, panel_size: tuple[float, float] = (5.0, 3.6)):
    """A ``Figure`` on an Agg canvas with ``n_panels`` axes in a grid (returns ``fig, axes``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG at ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return path


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    """Atomically write ``rows`` (dicts) with a header; missing keys become empty cells."""
    path = Path(path)
    with atomic_write(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    return path


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision, so a CSV round-trips to the exact float
    return value


def read_csv(path: str | os.PathLike) -> list[dict]:
    import io

    return list(csv.DictReader(io.StringIO(read_text(path), newline="")))


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub-flavoured markdown table; ``|`` and newlines inside cells are escaped."""

    def esc(cell) -> str:
        text = f"{cell:.4g}" if isinstance(cell, float) else str(cell)
        return text.replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def unique_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short labels for paths: the last component, or the last two when names collide."""
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    names = [str(Path(*Path(p).parts[-2:])) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def parse_labels(text: str | None, n: int, default: list[str]) -> list[str]:
    """``--labels a,b`` (must give one label per input) or the defaults."""
    if not text:
        return default
    labels = [s.strip() for s in text.split(",")]
    if len(labels) != n or not all(labels):
        raise BpoError(f"--labels has {len(labels)} label(s) for {n} input(s); give one non-empty label per "
                       "input, comma-separated, in the same order")
    if len(set(labels)) != len(labels):
        raise BpoError(f"--labels must be unique, got {labels}")
    return labels
