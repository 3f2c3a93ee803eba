"""A study's summary W&B run: its tables as W&B Tables and, per task, accuracy vs sparsity of
every row (IMP, random, the controls) as one line plot, so a synced project compares IMP with
random pruning without setting charts up by hand. Offline by default."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..analysis.tables import Table, normalise, series, table1, table2


def _wandb_table(wandb, table: Table):
    data = [[label, *[getattr(c, "text", lambda: str(c))() if not isinstance(c, str) else c for c in cells]]
            for label, cells in table.rows]
    return wandb.Table(columns=[table.corner or "row", *table.header], data=data)


def log_summary_run(name: str, records: list[dict], directory: Path, mode: str = "offline",
                    project: str = "lightning-vl") -> Optional[str]:
    """Log the study's summary run; returns its id (None when W&B is disabled)."""
    if mode == "disabled" or not records:
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, name=f"study/{name}", id=f"study-{name}", job_type="summary",
                     group="studies", tags=["study", name], dir=str(directory), mode=mode, resume="allow")
    recs = normalise(records)
    logged = {}
    for table in (table1(recs), table2(recs)):
        if not table.empty:
            logged[table.name] = _wandb_table(wandb, table)
    tasks = sorted({r.task for r in recs})
    for task in tasks:
        rows = sorted({r.row for r in recs if r.task == task})
        curves = {row: series(recs, task, row) for row in rows}
        curves = {row: pts for row, pts in curves.items() if len(pts) > 1}
        if not curves:
            continue
        xs = sorted({round(p.sparsity * 100, 1) for pts in curves.values() for p in pts})
        ys = []
        for row in curves:
            by_x = {round(p.sparsity * 100, 1): p.mean for p in curves[row]}
            ys.append([by_x.get(x, float("nan")) for x in xs])
        logged[f"{task}/accuracy_vs_sparsity"] = wandb.plot.line_series(
            xs=xs, ys=ys, keys=list(curves), title=f"{task}: accuracy vs sparsity", xname="sparsity (%)")
    run.log(logged)
    run.summary["records"] = len(records)
    run.finish()
    return f"study-{name}"
