"""The study's tables from run **records** (one dict per fine-tuned network; see ``Record``).

Every table is a ``Table``: ``to_markdown()``, ``to_csv(path)`` (the paper's layout, cells as
text), ``to_long_csv(path)`` (one numeric line per cell: mean, std, n). Numbers are the monitor
metric in percent with two decimals (the paper's style); a cell of several runs shows
``mean ± std (n=…)`` with the sample standard deviation (ddof = 1) over them; a missing cell shows
``—``, never 0. Records whose metric is missing or NaN (failed runs) feed no cell and are counted in
the table's notes.

Records at the "same sparsity" are grouped by their achieved sparsity rounded to 3 decimals
(``sparsity_key``): the linear schedule's levels are 0.1 steps, whose achieved sparsities differ
from 0.1·k by at most a few weights, and the geometric schedule's levels (0.1, 0.19, 0.271, …) stay
distinct.

* ``table1``  highest sparsity with a relaxed winning ticket, and the controls at it (paper Table 1)
* ``table2``  the universal (pre-training) ticket on every task, with the average drop (Table 2)
* ``table3``  standard vs adversarial fine-tuning of tickets (Table 3)
* ``transfer_matrix``  source task × target task at one sparsity
* ``rewind_table``  accuracy vs sparsity per rewind step, one task
* ``series``  mean/std curves for the figures
"""
from __future__ import annotations

import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from lightning_vl.tasks.names import PRETRAINING_TASK, TASK_INFO

from .common import MISSING, STUDY_TASKS, csv_text, is_number, markdown_table, ordered_tasks, slug, sparsity_text, \
    task_name, write_text

# the tasks Table 2's second average leaves out (the paper's "w/o VCR"): ``TaskInfo.reduced_average``
REDUCED_AVERAGE_WITHOUT = tuple(name for name, info in TASK_INFO.items() if not info.reduced_average)

SPARSITY_DECIMALS = 3
EXACT = 1e-9  # |Δ sparsity| below which two records were pruned to exactly the same sparsity (JSON round trips)

# rows of the lottery runs (by method) and of branches, with the names the tables use
ROW_NAMES = {
    "imp": "IMP ticket, θ0",
    "random": "random pruning, θ0",
    "random-layerwise": "random pruning (layer-wise), θ0",
    "omp": "OMP (one-shot magnitude), θ0",
    "lamp": "LAMP, θ0",
    "snip": "SNIP, θ0",
    "bert": "IMP mask, BERT θ'0",
    "shuffled": "IMP mask, shuffled θ''0",
    "shuffle": "IMP mask shuffled within each tensor, θ0",
    "reinit": "IMP mask, fresh random init",
    "transfer": "transferred ticket",
    "universal": "universal ticket (pre-training mask)",
    "ticket": "the task's IMP ticket, trained again",
}


def sparsity_key(s: float) -> float:
    return round(float(s), SPARSITY_DECIMALS)


@dataclass(frozen=True)
class Record:
    """One fine-tuned network. ``metric`` is a fraction in [0, 1] or None (failed / missing)."""

    task: str
    row: str
    sparsity: float
    metric: Optional[float]
    level: Optional[int] = None
    seed: Optional[int] = None
    rewind_step: int = 0
    training: str = "standard"
    source_task: Optional[str] = None
    monitor: Optional[str] = None
    path: Optional[str] = None
    backbone: str = "uniter"

    @property
    def key(self) -> float:
        return sparsity_key(self.sparsity)

    @property
    def ok(self) -> bool:
        return self.metric is not None

    @property
    def dense(self) -> bool:
        return self.level == 0 or self.key == 0.0

    @classmethod
    def from_dict(cls, d: Mapping, index: int = 0) -> "Record":
        """Validate one record of the index; keys other than the schema's are ignored."""
        where = f"record {index}" + (f" ({d.get('path')})" if isinstance(d, Mapping) and d.get("path") else "")
        if not isinstance(d, Mapping):
            raise TypeError(f"{where}: a record is a dict, got {type(d).__name__}")
        for key in ("task", "row"):
            if not isinstance(d.get(key), str) or not d.get(key):
                raise ValueError(f"{where}: {key!r} must be a non-empty string, got {d.get(key)!r}")
        s = d.get("sparsity")
        if not is_number(s) or not 0.0 <= s <= 1.0:
            raise ValueError(f"{where}: 'sparsity' must be a number in [0, 1], got {s!r}")
        metric = d.get("metric")
        if metric is not None and not isinstance(metric, bool) and isinstance(metric, (int, float)) and math.isnan(metric):
            metric = None
        if metric is not None:
            if not is_number(metric):
                raise ValueError(f"{where}: 'metric' must be a number, None or NaN, got {metric!r}")
            if not 0.0 <= metric <= 1.0:
                raise ValueError(f"{where}: 'metric' {metric!r} is outside [0, 1]; records carry the monitor metric "
                                 "as a fraction (0.7064, not 70.64)")
        training = d.get("training") or "standard"
        if training not in ("standard", "adversarial"):
            raise ValueError(f"{where}: 'training' must be standard or adversarial, got {training!r}")
        level = d.get("level")
        rewind = d.get("rewind_step") or 0
        return cls(task=d["task"], row=d["row"], sparsity=float(s), metric=None if metric is None else float(metric),
                   level=None if level is None else int(level), seed=d.get("seed"), rewind_step=int(rewind),
                   training=training, source_task=d.get("source_task"), monitor=d.get("monitor"), path=d.get("path"),
                   backbone=str(d.get("backbone") or "uniter"))


def normalise(records: Iterable[Union[Mapping, Record]]) -> list[Record]:
    return [r if isinstance(r, Record) else Record.from_dict(r, i) for i, r in enumerate(records)]


# cells and tables ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """A number in display units (percent for metrics), over ``n`` runs; ``std`` only when n ≥ 2."""

    mean: Optional[float]
    std: Optional[float] = None
    n: int = 0
    note: str = ""

    @property
    def missing(self) -> bool:
        return self.mean is None or not math.isfinite(self.mean)

    def text(self, decimals: int = 2) -> str:
        if self.missing:
            return MISSING
        out = f"{self.mean:.{decimals}f}"
        if self.std is not None and self.n >= 2:
            out += f" ± {self.std:.{decimals}f} (n={self.n})"
        return out + (f" {self.note}" if self.note else "")


def aggregate(values: Sequence[float], scale: float = 100.0) -> Cell:
    """Mean and sample std (ddof = 1) of run metrics, scaled to percent; empty → missing."""
    values = [v * scale for v in values]
    if not values:
        return Cell(None)
    std = statistics.stdev(values) if len(values) >= 2 else None
    return Cell(statistics.fmean(values), std, len(values))


def _text(v) -> str:
    return v.text() if isinstance(v, Cell) else (MISSING if v is None else str(v))


@dataclass
class Table:
    name: str                              # file stem, e.g. "table1"
    title: str
    columns: list[str]                     # column keys (task names)
    header: list[str]                      # what the columns show
    rows: list[tuple[str, list]] = field(default_factory=list)   # (label, cells: Cell | str)
    row_keys: list = field(default_factory=list)                 # what each row stands for (a sparsity, a task…)
    description: str = ""
    records_used: int = 0
    notes: list[str] = field(default_factory=list)
    corner: str = ""

    @property
    def empty(self) -> bool:
        return not self.rows or not self.columns

    def cell(self, row: str, column: str):
        for label, cells in self.rows:
            if label == row:
                return cells[self.columns.index(column)]
        raise KeyError(f"{self.name}: no row {row!r}; rows: {[r for r, _ in self.rows]}")

    def to_markdown(self) -> str:
        if self.empty:
            return "_No records for this table._\n" + "".join(f"\n{n}\n" for n in self.notes)
        out = markdown_table([self.corner, *self.header], [[label, *map(_text, cells)] for label, cells in self.rows])
        if self.notes:
            out += "\n" + "\n".join(f"- {n}" for n in self.notes) + "\n"
        return out

    def to_csv(self, path: Union[str, os.PathLike]) -> Path:
        """The table as shown (cells as text: ``70.64 ± 0.06 (n=3)``, ``—`` when missing)."""
        return write_text(path, csv_text([self.corner or "row", *self.header],
                                         ([label, *map(_text, cells)] for label, cells in self.rows)))

    def to_long_csv(self, path: Union[str, os.PathLike]) -> Path:
        """One line per numeric cell: row, column, mean, std, n (display units; empty = missing)."""
        lines = []
        for label, cells in self.rows:
            for col, c in zip(self.columns, cells):
                if isinstance(c, Cell):
                    lines.append([label, col, "" if c.missing else f"{c.mean:.6g}",
                                  "" if c.std is None else f"{c.std:.6g}", c.n, c.note])
                else:
                    lines.append([label, col, "" if c is None else c, "", "", ""])
        return write_text(path, csv_text(["row", "column", "mean", "std", "n", "note"], lines))


# selections ----------------------------------------------------------------------------------------
def _select(records: Sequence[Record], *, task=None, row=None, training="standard", rewind_step=0, key=None,
            source_task=None) -> list[Record]:
    out = []
    for r in records:
        if task is not None and r.task != task:
            continue
        if row is not None and r.row != row:
            continue
        if training is not None and r.training != training:
            continue
        if rewind_step is not None and r.rewind_step != rewind_step:
            continue
        if key is not None and r.key != key:
            continue
        if source_task is not None and r.source_task != source_task:
            continue
        out.append(r)
    return out


def _values(records: Iterable[Record]) -> list[float]:
    return [r.metric for r in records if r.ok]


def _monitor(records: Sequence[Record], task: str) -> str:
    names = Counter(r.monitor for r in records if r.task == task and r.monitor)
    return names.most_common(1)[0][0] if names else ""


def dense_records(records: Sequence[Record], task: str, training: str = "standard") -> list[Record]:
    """The dense model of a task: its level-0 IMP records (no rewinding), else any lottery run's level 0."""
    dense = [r for r in _select(records, task=task, row="imp", training=training) if r.dense]
    if not dense:
        dense = [r for r in records if r.task == task and r.training == training and r.rewind_step == 0 and r.dense
                 and r.row in ("random", "random-layerwise", "omp", "lamp", "snip")]
    return dense


def _failed_note(used: Iterable[Record]) -> list[str]:
    failed = [r for r in used if not r.ok]
    if not failed:
        return []
    shown = ", ".join(str(r.path or f"{r.task}/{r.row}@{sparsity_text(r.sparsity)}") for r in failed[:3])
    return [f"{len(failed)} run(s) without a metric (failed or missing) left out: {shown}"
            + (" …" if len(failed) > 3 else "")]


def _tasks(records: Sequence[Record], tasks: Optional[Sequence[str]], exclude=(PRETRAINING_TASK,)) -> list[str]:
    if tasks is not None:
        return list(tasks)
    return [t for t in ordered_tasks(r.task for r in records) if t not in exclude]


# Table 1 -------------------------------------------------------------------------------------------
TABLE1_CONTROLS = ("random", "bert", "shuffled")
TABLE1_EXTRA = ("random-layerwise", "shuffle", "reinit", "omp", "lamp", "snip")


def passes(imp: Cell, threshold: float, criterion: str = "mean+std") -> bool:
    """Is ``imp`` a relaxed winning ticket for ``threshold`` (99% of the dense mean, percent)?

    ``mean+std`` (the paper's "accounting for the standard deviation over runs"): the IMP mean
    plus its sample standard deviation over runs reaches the threshold, ``mean + std ≥ 0.99 ·
    dense mean``; a single run has std 0. This is the reading the paper's own Table 1 satisfies:
    VCR 53.15 ± 1.02, Flickr30k IR 70.15 ± 0.71 and TR 83.77 ± 0.76 are below their 99% rows
    (53.83, 70.54, 83.78) by less than one std, and are reported as tickets. ``mean``: the
    strict reading, mean ≥ threshold."""
    if imp.missing:
        return False
    if criterion == "mean":
        return imp.mean >= threshold
    if criterion == "mean+std":
        return imp.mean + (imp.std or 0.0) >= threshold
    raise ValueError(f"criterion must be 'mean+std' or 'mean', got {criterion!r}")


def ticket_sparsity(records: Sequence[Record], task: str, fraction: float = 0.99, criterion: str = "mean+std",
                    training: str = "standard", rewind_step: int = 0) -> Optional[float]:
    """The highest sparsity (key) whose IMP runs are a relaxed winning ticket (``passes``) against
    ``fraction`` of the dense mean, whether or not every lower sparsity passes; None without a dense
    run or when no pruned sparsity passes."""
    records = normalise(records)
    dense = aggregate(_values(dense_records(records, task, training)))
    if dense.missing:
        return None
    imp = _select(records, task=task, row="imp", training=training, rewind_step=rewind_step)
    keys = sorted({r.key for r in imp if r.key > 0}, reverse=True)
    for k in keys:
        if passes(aggregate(_values(r for r in imp if r.key == k)), fraction * dense.mean, criterion):
            return k
    return None


def _at_ticket(records: Sequence[Record], task: str, row: str, key: float, exact: Sequence[float],
               training: str) -> list[Record]:
    """Records of ``row`` at the ticket's sparsity; those pruned to exactly an IMP ticket's achieved
    sparsity (branches of the ticket's round) are preferred over others at the same level."""
    at = _select(records, task=task, row=row, training=training, key=key)
    exact_ones = [r for r in at if any(abs(r.sparsity - s) < EXACT for s in exact)]
    return exact_ones or at


def table1(records: Iterable[Union[Mapping, Record]], tasks: Optional[Sequence[str]] = None,
           fraction: float = 0.99, criterion: str = "mean+std", training: str = "standard") -> Table:
    """Highest sparsity with a relaxed winning ticket, per task (paper Table 1).

    Rows: the monitor metric; the ticket sparsity (``ticket_sparsity``: the highest sparsity whose
    IMP runs reach ``fraction`` = 99% of the dense mean, by ``criterion``, default ``mean+std``: IMP
    mean + std ≥ 0.99 · dense mean — see ``passes``); dense (level-0 IMP runs, no rewinding) mean ±
    std; 99% of the dense mean; then at the ticket sparsity: the IMP ticket, random pruning (row
    ``random``, preferring records at exactly the ticket's achieved sparsity), the IMP mask on BERT
    θ'_0 (``bert``) and on shuffled θ''_0 (``shuffled``); rows of other controls
    (``random-layerwise``, ``shuffle``, ``reinit``, ``omp``, ``lamp``, ``snip``) follow when any
    record of them exists. IMP rows use rewind step 0 (θ_0) only."""
    records = normalise(records)
    tasks = _tasks(records, tasks)
    extra = [row for row in TABLE1_EXTRA if any(r.row == row and r.task in tasks for r in records)]
    labels = ["metric", "sparsity", "dense (level 0)", f"{fraction:.0%} of dense", ROW_NAMES["imp"],
              *[ROW_NAMES[r] for r in TABLE1_CONTROLS], *[ROW_NAMES[r] for r in extra]]
    columns: dict[str, list] = {}
    used: list[Record] = []
    notes: list[str] = []
    for task in tasks:
        dense_recs = dense_records(records, task, training)
        dense = aggregate(_values(dense_recs))
        used += dense_recs
        col = [_monitor(records, task) or MISSING]
        key = ticket_sparsity(records, task, fraction, criterion, training)
        if dense.missing:
            notes.append(f"{task}: no dense (level-0) run with a metric")
            col += [MISSING, dense, Cell(None)] + [Cell(None)] * (1 + len(TABLE1_CONTROLS) + len(extra))
        elif key is None:
            notes.append(f"{task}: no pruned sparsity reaches {fraction:.0%} of dense")
            col += ["none", dense, Cell(fraction * dense.mean, n=dense.n)] + \
                   [Cell(None)] * (1 + len(TABLE1_CONTROLS) + len(extra))
        else:
            imp_recs = _select(records, task=task, row="imp", training=training, key=key)
            used += imp_recs
            col += [sparsity_text(key), dense, Cell(fraction * dense.mean, n=dense.n), aggregate(_values(imp_recs))]
            exact = [r.sparsity for r in imp_recs]
            for row in (*TABLE1_CONTROLS, *extra):
                recs = _at_ticket(records, task, row, key, exact, training)
                used += recs
                col.append(aggregate(_values(recs)))
        columns[task] = col
    rows = [(label, [columns[t][i] for t in tasks]) for i, label in enumerate(labels)]
    rule = "mean + std" if criterion == "mean+std" else "mean"
    return Table("table1", "Table 1 — highest sparsity with a relaxed winning ticket", list(tasks),
                 [task_name(t) for t in tasks], rows, row_keys=labels,
                 description=f"Per task, the highest sparsity whose IMP ticket ({rule} over runs) keeps ≥ "
                             f"{fraction:.0%} of the dense mean, and the controls at that sparsity.",
                 records_used=sum(1 for r in used if r.ok), notes=notes + _failed_note(used))


# Table 2 -------------------------------------------------------------------------------------------
def average_drop(dense: Mapping[str, float], values: Mapping[str, float], tasks: Sequence[str]) -> tuple[Optional[float], int]:
    """Mean over ``tasks`` of 100·(dense − x)/dense, over the tasks that have both numbers; and how many did."""
    drops = [100.0 * (dense[t] - values[t]) / dense[t] for t in tasks
             if dense.get(t) is not None and values.get(t) is not None and dense[t] != 0]
    return (statistics.fmean(drops) if drops else None), len(drops)


def table2(records: Iterable[Union[Mapping, Record]], tasks: Optional[Sequence[str]] = None,
           row: str = "universal", source_task: str = PRETRAINING_TASK, without: Sequence[str] = REDUCED_AVERAGE_WITHOUT) -> Table:
    """The universal ticket (paper Table 2): rows = 0% (the dense model: level-0 IMP runs) then every
    sparsity of the ``row`` records (``universal``, ``source_task`` ``pretrain``), columns = tasks,
    plus the average drop in percent over all tasks and over all but ``without`` (VCR). A task's
    drop is 100·(dense − x)/dense on the mean metrics; the average is over the tasks with both a
    dense and a ticket value, and names how many of the table's tasks it covers when not all."""
    records = normalise(records)
    picked = [r for r in records if r.row == row and (source_task is None or r.source_task == source_task)
              and r.training == "standard" and r.rewind_step == 0]
    title = "Table 2 — the universal ticket (pre-training mask) on every task"
    description = ("The mask IMP found on pre-training, fine-tuned on each task at each sparsity (0% = the dense "
                   "model), and the average relative drop from dense in percent.")
    if not picked:
        return Table("table2", title, [], [], description=description,
                     notes=[f"No {row!r} records" + (f" with source_task {source_task!r}." if source_task else ".")])
    tasks = _tasks(picked, tasks)
    keys = sorted({r.key for r in picked if r.key > 0})
    used: list[Record] = []
    dense: dict[str, Cell] = {}
    for t in tasks:
        recs = dense_records(records, t) or [r for r in picked if r.task == t and r.key == 0]
        used += recs
        dense[t] = aggregate(_values(recs))
    reduced = [t for t in tasks if t not in without]
    show_reduced = len(reduced) < len(tasks)
    header = [task_name(t) for t in tasks] + ["avg drop % (all)"] + \
             ([f"w/o {', '.join(task_name(t) for t in without if t in tasks)}"] if show_reduced else [])
    columns = list(tasks) + ["avg_drop"] + (["avg_drop_reduced"] if show_reduced else [])
    rows = [("0%", [dense[t] for t in tasks] + [MISSING] * (1 + show_reduced))]
    for k in keys:
        cells = {}
        for t in tasks:
            recs = [r for r in picked if r.task == t and r.key == k]
            used += recs
            cells[t] = aggregate(_values(recs))
        d = {t: None if dense[t].missing else dense[t].mean for t in tasks}
        v = {t: None if cells[t].missing else cells[t].mean for t in tasks}
        avg = []
        for subset in ([tasks, reduced] if show_reduced else [tasks]):
            mean, n = average_drop(d, v, subset)
            avg.append(Cell(mean, n=n, note="" if n == len(subset) or mean is None else f"({n}/{len(subset)} tasks)"))
        rows.append((sparsity_text(k), [cells[t] for t in tasks] + avg))
    return Table("table2", title, columns, header, rows, row_keys=[0.0, *keys], corner="sparsity",
                 description=description,
                 records_used=sum(1 for r in used if r.ok), notes=_failed_note(used))


# Table 3 -------------------------------------------------------------------------------------------
def table3(records: Iterable[Union[Mapping, Record]], tasks: Optional[Sequence[str]] = None, row: str = "universal",
           sparsities: Optional[Sequence[float]] = None, standard_row: Optional[str] = None,
           name: str = "table3") -> Table:
    """Standard vs adversarial fine-tuning of tickets (paper Table 3): for every sparsity with an
    adversarial record of ``row`` (default the universal ticket; or ``sparsities``), a row
    "60% Std." from ``training: standard`` records and "60% Adv." from ``adversarial`` ones.
    ``standard_row`` takes the Std. rows from another row: for ``ticket`` branches (a task's own
    IMP ticket trained again adversarially) the standard ticket is the IMP round itself."""
    records = normalise(records)
    picked = [r for r in records if r.row == row and r.rewind_step == 0]
    standard = [r for r in records if r.row == (standard_row or row) and r.rewind_step == 0
                and r.training == "standard"]
    if sparsities is None:
        keys = sorted({r.key for r in picked if r.training == "adversarial"})
    else:
        keys = sorted({sparsity_key(s) for s in sparsities})
    # the columns: tasks with an adversarial record (a task trained only one way has nothing to compare)
    tasks = _tasks([r for r in picked if r.key in keys and r.training == "adversarial"], tasks) if keys else []
    rows, used, row_keys = [], [], []
    for k in keys:
        for training, short in (("standard", "Std."), ("adversarial", "Adv.")):
            cells = []
            for t in tasks:
                pool = standard if training == "standard" else picked
                recs = [r for r in pool if r.task == t and r.key == k and r.training == training]
                used += recs
                cells.append(aggregate(_values(recs)))
            rows.append((f"{sparsity_text(k)} {short}", cells))
            row_keys.append((k, training))
    notes = [] if keys else [f"No adversarially fine-tuned {row!r} records."]
    what = ROW_NAMES.get(row, row)
    std_from = f" Std. rows: {ROW_NAMES.get(standard_row, standard_row)}." if standard_row else ""
    return Table(name, f"Table 3 — standard vs adversarial fine-tuning: {what}", list(tasks),
                 [task_name(t) for t in tasks], rows, row_keys=row_keys, corner="sparsity",
                 description="The same tickets fine-tuned with standard training (Std.) and adversarial training "
                             f"(Adv.).{std_from}",
                 records_used=sum(1 for r in used if r.ok), notes=notes + _failed_note(used))


# the other backbones (the published paper's Tables 3 and 4) ----------------------------------------
BACKBONE_NAMES = {"uniter": "UNITER", "lxmert": "LXMERT", "vilt": "ViLT"}
# the published table of each backbone and the sparsity it reports (AAAI 2022, Tables 3 and 4);
# UNITER's row of the same form is for comparison at the sparsity of LXMERT's
PUBLISHED_TABLES = {"lxmert": ("Table 3", 0.7), "vilt": ("Table 4", 0.3), "uniter": ("", 0.7)}


def backbone_name(backbone: str) -> str:
    return BACKBONE_NAMES.get(backbone, backbone)


def backbones(records: Iterable[Union[Mapping, Record]]) -> list[str]:
    """The backbones of the records: UNITER first, then in order of appearance."""
    seen = list(dict.fromkeys(r.backbone for r in normalise(records)))
    return sorted(seen, key=lambda b: (b != "uniter", seen.index(b)))


def main_backbone(records: Iterable[Union[Mapping, Record]]) -> Optional[str]:
    """The backbone the study's main tables (1, 2, transfer, rewinding) are about: UNITER, the
    paper's main testbed, when it has records; else the one with the most records."""
    counts = Counter(r.backbone for r in normalise(records))
    if not counts:
        return None
    return "uniter" if "uniter" in counts else counts.most_common(1)[0][0]


def backbone_table(records: Iterable[Union[Mapping, Record]], backbone: str,
                   tasks: Optional[Sequence[str]] = None, sparsity: Optional[float] = None,
                   fraction: float = 0.99, criterion: str = "mean+std") -> Table:
    """One backbone's results in the form of the published paper's Tables 3 (LXMERT, at 70%) and
    4 (ViLT, at 30%): per task the dense model, 99% of it, the IMP ticket and random pruning at
    ``sparsity`` (default: the published table's), the gap between them, then the highest sparsity
    with a relaxed winning ticket (``ticket_sparsity``) and IMP and random pruning there.

    Example:
        >>> rows = [{"task": "vqa", "row": "imp", "sparsity": 0.0, "level": 0, "metric": 0.70, "backbone": "lxmert"},
        ...         {"task": "vqa", "row": "imp", "sparsity": 0.7, "level": 7, "metric": 0.695, "backbone": "lxmert"}]
        >>> backbone_table(rows, "lxmert").cell("lottery ticket (IMP)", "vqa").text()
        '69.50'

    Raises:
        ValueError: ``criterion`` is neither ``mean+std`` nor ``mean``.
    """
    mine = [r for r in normalise(records) if r.backbone == backbone and r.rewind_step == 0
            and r.training == "standard"]
    published, default = PUBLISHED_TABLES.get(backbone, ("", 0.7))
    key = sparsity_key(default if sparsity is None else sparsity)
    tasks = _tasks(mine, tasks)
    name = backbone_name(backbone)
    labels = (f"{name} (dense)", f"{fraction:.0%}", "lottery ticket (IMP)", "random pruning", "ticket − random",
              "highest relaxed ticket", "IMP there", "random pruning there")
    columns: dict[str, list] = {label: [] for label in labels}
    used: list[Record] = []
    for t in tasks:
        dense_recs = dense_records(mine, t)
        dense = aggregate(_values(dense_recs))
        imp = _select(mine, task=t, row="imp", key=key)
        rnd = _select(mine, task=t, row="random", key=key)
        used += dense_recs + imp + rnd
        ticket, random = aggregate(_values(imp)), aggregate(_values(rnd))
        columns[labels[0]].append(dense)
        columns[labels[1]].append(Cell(None) if dense.missing else Cell(fraction * dense.mean))
        columns[labels[2]].append(ticket)
        columns[labels[3]].append(random)
        if ticket.missing or random.missing:
            columns[labels[4]].append(MISSING)
        else:
            gap = ticket.mean - random.mean
            spread = max(ticket.std or 0.0, random.std or 0.0)
            columns[labels[4]].append(f"{gap:+.2f}" + (f" ({gap / spread:+.1f} std)" if spread > 0 else ""))
        best = ticket_sparsity(mine, t, fraction, criterion)
        columns[labels[5]].append("none" if best is None else sparsity_text(best))
        if best is None:
            columns[labels[6]].append(Cell(None))
            columns[labels[7]].append(Cell(None))
        else:
            imp_best, rnd_best = _select(mine, task=t, row="imp", key=best), _select(mine, task=t, row="random", key=best)
            used += imp_best + rnd_best
            columns[labels[6]].append(aggregate(_values(imp_best)))
            columns[labels[7]].append(aggregate(_values(rnd_best)))
    rows = [(label, cells) for label, cells in columns.items()]
    where = f"published {published}'s form" if published else "the form of the published Tables 3 and 4"
    return Table(f"backbone_{backbone}", f"{name} at {sparsity_text(key)} sparsity ({where})", list(tasks),
                 [task_name(t) for t in tasks], rows if tasks else [], row_keys=list(labels),
                 description=(f"{name}'s task-specific IMP tickets (rewind step 0, standard fine-tuning) against its "
                              f"dense model and random pruning at {sparsity_text(key)}; a relaxed winning ticket keeps "
                              f"≥ {fraction:.0%} of the dense mean ({criterion}). \"ticket − random\" is in points, "
                              "and in units of the larger of the two standard deviations."),
                 records_used=sum(1 for r in {id(r): r for r in used}.values() if r.ok),
                 notes=([] if tasks else [f"No {name} records."]) + _failed_note(used))


def backbones_table(records: Iterable[Union[Mapping, Record]], tasks: Optional[Sequence[str]] = None,
                    fraction: float = 0.99, criterion: str = "mean+std") -> Table:
    """The highest sparsity with a relaxed winning ticket per backbone and task, side by side
    (the published paper's "30% for ViLT against 70% for UNITER and LXMERT"); "none" where no
    pruned sparsity keeps ``fraction`` of that backbone's dense model, "—" where a backbone has no
    runs of the task.

    Example:
        >>> rows = [{"task": "vqa", "row": "imp", "sparsity": s, "level": round(10 * s), "metric": m, "backbone": b}
        ...         for b, ms in (("uniter", (0.70, 0.70, 0.695)), ("vilt", (0.70, 0.60, 0.50)))
        ...         for s, m in zip((0.0, 0.3, 0.7), ms)]
        >>> t = backbones_table(rows)
        >>> t.cell("UNITER", "vqa"), t.cell("ViLT", "vqa")
        ('70%', 'none')

    Raises:
        ValueError: ``criterion`` is neither ``mean+std`` nor ``mean``.
    """
    records = [r for r in normalise(records) if r.rewind_step == 0 and r.training == "standard"]
    names = backbones(records)
    tasks = _tasks(records, tasks)
    rows, used = [], []
    for b in names:
        mine = [r for r in records if r.backbone == b]
        cells = []
        for t in tasks:
            if not dense_records(mine, t):
                cells.append(MISSING)
                continue
            best = ticket_sparsity(mine, t, fraction, criterion)
            used += [r for r in mine if r.task == t and r.row == "imp"]
            cells.append("none" if best is None else sparsity_text(best))
        rows.append((backbone_name(b), cells))
    return Table("backbones", "Highest relaxed-ticket sparsity per backbone", list(tasks), [task_name(t) for t in tasks],
                 rows if tasks else [], row_keys=names, corner="backbone",
                 description=f"Per backbone and task, the highest sparsity whose IMP ticket keeps ≥ {fraction:.0%} of "
                             f"that backbone's dense model ({criterion}).",
                 records_used=sum(1 for r in used if r.ok), notes=_failed_note(used))


# transfer and rewinding ----------------------------------------------------------------------------
def transfer_sparsities(records: Iterable[Union[Mapping, Record]]) -> list[float]:
    return sorted({r.key for r in normalise(records) if r.row == "transfer"})


def transfer_matrix(records: Iterable[Union[Mapping, Record]], sparsity: float,
                    tasks: Optional[Sequence[str]] = None, include_universal: bool = True) -> Table:
    """Source task (rows) × target task (columns) at one sparsity, from ``transfer`` records (``task``
    = target, ``source_task`` = source); the diagonal is the target's own IMP ticket at that
    sparsity; a ``pre-training`` row holds the universal ticket when such records exist."""
    records = normalise(records)
    k = sparsity_key(sparsity)
    transfer = [r for r in records if r.row == "transfer" and r.key == k and r.training == "standard"]
    if tasks is None:
        tasks = [t for t in ordered_tasks({r.task for r in transfer} | {r.source_task for r in transfer if r.source_task})
                 if t != PRETRAINING_TASK]
    sources = list(tasks)
    universal = [r for r in records if r.row == "universal" and r.key == k and r.training == "standard"
                 and r.rewind_step == 0 and r.task in tasks]
    if include_universal and universal:
        sources.append(PRETRAINING_TASK)
    rows, used = [], []
    for src in sources:
        cells = []
        for tgt in tasks:
            if src == tgt:
                recs = _select(records, task=tgt, row="imp", key=k)
            elif src == PRETRAINING_TASK:
                recs = [r for r in universal if r.task == tgt]
            else:
                recs = [r for r in transfer if r.task == tgt and r.source_task == src]
            used += recs
            cells.append(aggregate(_values(recs)))
        rows.append((task_name(src), cells))
    name = f"transfer_{sparsity_text(k).rstrip('%').replace('.', '_')}"
    return Table(name, f"Transfer at {sparsity_text(k)} sparsity — source task × target task", list(tasks),
                 [task_name(t) for t in tasks], rows, row_keys=sources, corner="source \\ target",
                 description=f"Tickets found on the row's task, fine-tuned on the column's task at {sparsity_text(k)} "
                             "sparsity; the diagonal is the target's own IMP ticket.",
                 records_used=sum(1 for r in used if r.ok), notes=_failed_note(used))


def rewind_steps(records: Iterable[Union[Mapping, Record]], task: str, row: str = "imp") -> list[int]:
    return sorted({r.rewind_step for r in normalise(records) if r.task == task and r.row == row})


def rewind_table(records: Iterable[Union[Mapping, Record]], task: str, row: str = "imp",
                 training: str = "standard") -> Table:
    """Accuracy vs sparsity (rows) per rewind step (columns) of one task's ``row`` runs."""
    records = normalise(records)
    picked = _select(records, task=task, row=row, training=training, rewind_step=None)
    steps = sorted({r.rewind_step for r in picked})
    keys = sorted({r.key for r in picked})
    rows, used = [], []
    for k in keys:
        cells = []
        for step in steps:
            recs = [r for r in picked if r.key == k and r.rewind_step == step]
            used += recs
            cells.append(aggregate(_values(recs)))
        rows.append((sparsity_text(k), cells))
    monitor = _monitor(records, task)
    return Table(f"rewind_{slug(task)}", f"Rewinding — {task_name(task)}" + (f" ({monitor})" if monitor else ""),
                 [str(s) for s in steps], [f"rewind {s}" for s in steps], rows, row_keys=keys, corner="sparsity",
                 description=f"{task_name(task)}: {ROW_NAMES.get(row, row)} with the weights rewound to θ_i, i = the "
                             "column's step (0 = θ_0).",
                 records_used=sum(1 for r in used if r.ok), notes=_failed_note(used))


# curves for the figures ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    sparsity: float
    mean: float
    std: float
    n: int


def series(records: Iterable[Union[Mapping, Record]], task: str, row: str, training: str = "standard",
           rewind_step: Optional[int] = 0) -> list[Point]:
    """(sparsity, mean, std, n) per sparsity of one task's ``row`` runs, metric in percent; std 0 for one run."""
    groups: dict[float, list[float]] = defaultdict(list)
    for r in _select(normalise(records), task=task, row=row, training=training, rewind_step=rewind_step):
        if r.ok:
            groups[r.key].append(r.metric)
    out = []
    for k in sorted(groups):
        c = aggregate(groups[k])
        out.append(Point(k, c.mean, c.std or 0.0, c.n))
    return out


def dense_cell(records: Iterable[Union[Mapping, Record]], task: str) -> Cell:
    records = normalise(records)
    return aggregate(_values(dense_records(records, task)))


def monitor_of(records: Iterable[Union[Mapping, Record]], task: str) -> str:
    return _monitor(normalise(records), task)


__all__ = ["BACKBONE_NAMES", "Cell", "PUBLISHED_TABLES", "Point", "ROW_NAMES", "Record", "STUDY_TASKS", "Table",
           "aggregate", "average_drop", "backbone_name", "backbone_table", "backbones", "backbones_table", "dense_cell", "main_backbone",
           "dense_records", "monitor_of", "normalise", "passes", "rewind_steps", "rewind_table", "series",
           "sparsity_key", "table1", "table2", "table3", "ticket_sparsity", "transfer_matrix", "transfer_sparsities"]
