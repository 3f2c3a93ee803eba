"""Shared pieces of the analysis package: the study's task order and names (from
``lightning_vl.tasks.names``), number formatting (the paper's style: percent, two decimals),
markdown tables and file writing."""
from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from lightning_vl.io import atomic_write, write_text  # noqa: F401 (write_text: what the analysis modules import)
from lightning_vl.tasks.names import STUDY_TASKS, display_name, ordered

# STUDY_TASKS: the study's eight columns in the paper's order (lightning_vl/tasks/names.py)
MISSING = "—"


def task_name(task: str) -> str:
    """A task's name in tables and figures (``TaskInfo.display``); other names as they are."""
    return display_name(task)


def ordered_tasks(tasks: Iterable[str]) -> list[str]:
    """The study's order first, other names after it, alphabetically."""
    return ordered(tasks)


def slug(name: str) -> str:
    """A file-name-safe version of a task name (``refcoco+`` → ``refcocoplus``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("+", "plus")).strip("-") or "x"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sparsity_text(s: float) -> str:
    """``70%`` for the study's 10% steps, ``27.1%`` for others (e.g. the geometric schedule)."""
    pct = 100 * s
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}%"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Render a matplotlib ``Figure`` to PNG with the Agg canvas (no display, no pyplot state) and
    write it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path
