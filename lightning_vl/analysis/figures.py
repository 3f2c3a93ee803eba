"""The study's figures as PNG files, drawn with matplotlib's Agg canvas (no display, no pyplot
state; safe on clusters and in tests).

* ``accuracy_figure``  accuracy vs sparsity of one task: IMP vs random pruning vs the controls
  (BERT θ'_0, shuffled θ''_0, OMP/LAMP/SNIP, …), mean line and ±std band over runs, and a
  horizontal line at 99% of the dense mean
* ``accuracy_grid``    the same for every task, one panel each
* ``backbones_figure`` IMP vs random pruning per backbone and task (the published Figure 4's analogue)
* ``rewind_figure``    accuracy vs sparsity per rewind step, one task
* ``transfer_heatmap`` a transfer matrix (``tables.transfer_matrix``)
* ``matrix_heatmap``   any annotated labels × labels heat map (the mask-overlap figure uses it)
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .common import save_figure, task_name
from .tables import ROW_NAMES, Cell, Table, dense_cell, monitor_of, normalise, series

# what the accuracy figures draw, in order, with a fixed colour per row
CURVE_ROWS = ("imp", "random", "random-layerwise", "omp", "lamp", "snip", "bert", "shuffled", "shuffle", "reinit",
              "universal")
COLOURS = {"imp": "#1f77b4", "random": "#d62728", "random-layerwise": "#ff7f0e", "omp": "#9467bd",
           "lamp": "#8c564b", "snip": "#e377c2", "bert": "#2ca02c", "shuffled": "#7f7f7f", "shuffle": "#bcbd22",
           "reinit": "#17becf", "universal": "#000000"}
MARKERS = {"imp": "o", "random": "s", "bert": "^", "shuffled": "v", "universal": "D"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _draw_accuracy(ax, records, task: str, fraction: float = 0.99, legend: bool = True,
                   rows: Sequence[str] = CURVE_ROWS) -> int:
    """Curves of one task on ``ax``; returns how many curves were drawn."""
    drawn = 0
    for row in rows:
        for training, style in (("standard", "-"), ("adversarial", "--")):
            pts = series(records, task, row, training=training)
            if not pts:
                continue
            x = np.array([100 * p.sparsity for p in pts])
            y = np.array([p.mean for p in pts])
            s = np.array([p.std for p in pts])
            label = ROW_NAMES.get(row, row) + (" (adversarial)" if training == "adversarial" else "")
            colour = COLOURS.get(row)
            line, = ax.plot(x, y, style, marker=MARKERS.get(row, "."), markersize=4, color=colour, label=label,
                            linewidth=1.6)
            if any(p.n >= 2 for p in pts):
                ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.18, linewidth=0)
            drawn += 1
    dense = dense_cell(records, task)
    if not dense.missing:
        ax.axhline(fraction * dense.mean, color="#444444", linestyle=":", linewidth=1.2,
                   label=f"{fraction:.0%} of dense ({fraction * dense.mean:.2f})")
    monitor = monitor_of(records, task)
    ax.set_title(f"{task_name(task)}" + (f" — {monitor}" if monitor else ""), fontsize=10)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(f"{monitor or 'metric'} (%)")
    ax.grid(True, alpha=0.3)
    if drawn == 0:
        ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes, color="#888888")
    elif legend:  # beside the axes, never over the curves
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return drawn


def accuracy_figure(records, task: str, path: Union[str, os.PathLike], fraction: float = 0.99) -> Path:
    """Accuracy vs sparsity of one task: every lottery/control row present (rewind step 0;
    adversarial runs dashed), mean ± std over runs, and the 99%-of-dense line."""
    records = normalise(records)
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot()
    _draw_accuracy(ax, records, task, fraction)
    return save_figure(fig, path)


def accuracy_grid(records, path: Union[str, os.PathLike], tasks: Optional[Sequence[str]] = None,
                  fraction: float = 0.99, ncols: int = 4) -> Path:
    """One panel per task (``accuracy_figure``'s curves), one legend for all."""
    records = normalise(records)
    from .common import ordered_tasks

    tasks = list(tasks) if tasks is not None else [t for t in ordered_tasks(r.task for r in records)]
    tasks = tasks or ["(none)"]
    ncols = max(1, min(ncols, len(tasks)))
    nrows = math.ceil(len(tasks) / ncols)
    fig = _figure(4.0 * ncols, 3.2 * nrows + 0.8)
    handles: dict[str, object] = {}
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _draw_accuracy(ax, records, task, fraction, legend=False)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            key = "99% line" if "of dense" in lab else lab
            handles.setdefault(key, (h, f"{fraction:.0%} of dense" if key == "99% line" else lab))
    if handles:
        fig.legend([h for h, _ in handles.values()], [lab for _, lab in handles.values()], loc="lower center",
                   ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle("Accuracy vs sparsity (mean ± std over runs)", fontsize=12)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(handles) / 4), 1, 0.96))
    return save_figure(fig, path)


def backbones_figure(records, path: Union[str, os.PathLike], tasks: Optional[Sequence[str]] = None,
                     fraction: float = 0.99) -> Path:
    """The published Figure 4's analogue, backbones side by side: one row of panels per backbone
    (UNITER first), one column per task, IMP and random pruning (mean ± std over runs, rewind step
    0) with the line at ``fraction`` of that backbone's dense mean. A backbone with no runs of a
    task shows "no records" there."""
    from .common import ordered_tasks
    from .tables import backbone_name, backbones

    records = normalise(records)
    names = backbones(records) or ["(none)"]
    tasks = list(tasks) if tasks is not None else ordered_tasks(r.task for r in records)
    tasks = tasks or ["(none)"]
    fig = _figure(3.8 * len(tasks), 3.0 * len(names) + 0.9)
    handles: dict[str, object] = {}
    for i, backbone in enumerate(names):
        mine = [r for r in records if r.backbone == backbone]
        for j, task in enumerate(tasks):
            ax = fig.add_subplot(len(names), len(tasks), i * len(tasks) + j + 1)
            _draw_accuracy(ax, mine, task, fraction, legend=False, rows=("imp", "random"))
            ax.set_title(f"{backbone_name(backbone)} — {ax.get_title()}", fontsize=9)
            for h, lab in zip(*ax.get_legend_handles_labels()):
                key = "99% line" if "of dense" in lab else lab
                handles.setdefault(key, (h, f"{fraction:.0%} of dense" if key == "99% line" else lab))
    if handles:
        fig.legend([h for h, _ in handles.values()], [lab for _, lab in handles.values()], loc="lower center",
                   ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("IMP vs random pruning per backbone (mean ± std over runs)", fontsize=12)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return save_figure(fig, path)


def rewind_figure(records, task: str, path: Union[str, os.PathLike], row: str = "imp", fraction: float = 0.99) -> Path:
    """Accuracy vs sparsity of one task's ``row`` runs, one line per rewind step."""
    from matplotlib import colormaps

    records = normalise(records)
    steps = sorted({r.rewind_step for r in records if r.task == task and r.row == row})
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    for i, step in enumerate(steps):
        pts = series(records, task, row, rewind_step=step)
        if not pts:
            continue
        x = np.array([100 * p.sparsity for p in pts])
        y = np.array([p.mean for p in pts])
        s = np.array([p.std for p in pts])
        colour = cmap(i / max(1, len(steps) - 1) * 0.9)
        ax.plot(x, y, marker="o", markersize=4, color=colour, label=f"rewound to step {step}" if step else "θ0 (no rewinding)")
        if any(p.n >= 2 for p in pts):
            ax.fill_between(x, y - s, y + s, color=colour, alpha=0.18, linewidth=0)
    dense = dense_cell(records, task)
    if not dense.missing:
        ax.axhline(fraction * dense.mean, color="#444444", linestyle=":", linewidth=1.2,
                   label=f"{fraction:.0%} of dense ({fraction * dense.mean:.2f})")
    monitor = monitor_of(records, task)
    ax.set_title(f"Rewinding — {task_name(task)}" + (f" — {monitor}" if monitor else ""), fontsize=10)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(f"{monitor or 'metric'} (%)")
    ax.grid(True, alpha=0.3)
    if steps:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return save_figure(fig, path)


def matrix_heatmap(values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                   path: Union[str, os.PathLike], title: str = "", vmin: Optional[float] = None,
                   vmax: Optional[float] = None, colorbar_label: str = "", fmt: str = "{:.2f}",
                   annotations: Optional[Sequence[Sequence[str]]] = None, cmap: str = "viridis",
                   marks: Optional[Mapping[str, float]] = None, xlabel: str = "", ylabel: str = "",
                   center: Optional[float] = None) -> Path:
    """An annotated heat map; NaN cells are blank and marked ``—``; ``marks`` draws named levels
    (e.g. the chance IoU) on the colour bar; ``center`` pins a diverging map's middle colour."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize, TwoSlopeNorm

    values = np.asarray(values, dtype=float)
    nr, nc = values.shape
    fig = _figure(max(4.5, 0.85 * nc + 2.6), max(3.6, 0.7 * nr + 1.9))
    ax = fig.add_subplot()
    colours = colormaps[cmap].with_extremes(bad="#f0f0f0")
    masked = np.ma.masked_invalid(values)
    lo = vmin if vmin is not None else (float(np.nanmin(values)) if np.isfinite(values).any() else 0.0)
    hi = vmax if vmax is not None else (float(np.nanmax(values)) if np.isfinite(values).any() else 1.0)
    if hi <= lo:
        hi = lo + 1e-9
    norm = TwoSlopeNorm(vcenter=center, vmin=lo, vmax=hi) if center is not None and lo < center < hi \
        else Normalize(vmin=lo, vmax=hi)
    image = ax.imshow(masked, cmap=colours, norm=norm, aspect="auto")
    ax.set_xticks(range(nc), labels=list(col_labels), rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(nr), labels=list(row_labels), fontsize=8)
    for i in range(nr):
        for j in range(nc):
            v = values[i, j]
            text = annotations[i][j] if annotations is not None else ("—" if not math.isfinite(v) else fmt.format(v))
            if math.isfinite(v):
                r, g, b, _ = colours(float(norm(v)))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            else:
                dark = False
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if colorbar_label:
        bar.set_label(colorbar_label, fontsize=8)
    for name, level in (marks or {}).items():
        if level is not None and math.isfinite(level) and lo <= level <= hi:
            bar.ax.axhline(level, color="red", linewidth=1.5)
            bar.ax.text(1.05, level, f" {name}", transform=bar.ax.get_yaxis_transform(), va="center", fontsize=7,
                        color="red")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def transfer_heatmap(table: Table, path: Union[str, os.PathLike]) -> Path:
    """A transfer matrix: colour = the cell as % of the target's own IMP ticket (the diagonal;
    the column's scale differs by task), text = the metric itself."""
    means = np.array([[c.mean if isinstance(c, Cell) and not c.missing else np.nan for c in cells]
                      for _, cells in table.rows], dtype=float)
    diagonal = {}
    for i, src in enumerate(table.row_keys):
        if src in table.columns:
            diagonal[table.columns.index(src)] = means[i, table.columns.index(src)]
    relative = np.full_like(means, np.nan)
    for j in range(means.shape[1]):
        own = diagonal.get(j)
        if own is not None and math.isfinite(own) and own != 0:
            relative[:, j] = 100.0 * means[:, j] / own
    annotations = [["—" if not math.isfinite(v) else f"{v:.2f}" for v in row] for row in means]
    finite = relative[np.isfinite(relative)]
    lo = float(min(finite.min(), 90.0)) if finite.size else 0.0
    hi = float(max(finite.max(), 100.0)) if finite.size else 100.0
    return matrix_heatmap(relative, [label for label, _ in table.rows], table.header, path,
                          title=f"{table.title}\ncolour: % of the target's own ticket; text: metric (%)", vmin=lo,
                          vmax=hi, colorbar_label="% of the target's own IMP ticket", annotations=annotations,
                          cmap="RdYlGn", xlabel="target task", ylabel="source of the mask", center=100.0)


__all__ = ["CURVE_ROWS", "accuracy_figure", "accuracy_grid", "matrix_heatmap", "rewind_figure", "transfer_heatmap"]
