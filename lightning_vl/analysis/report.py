"""One folder with every table and figure of the study, and an ``index.md`` that shows them.

``write_report(records, "reports/")`` writes::

    reports/
      index.md                    all tables (markdown) and figures (relative links), one section each
      tables/<name>.csv  .md  .long.csv   table1, table2, table3, table3_tickets, transfer_<s>, rewind_<task>,
                                          backbones (ticket sparsity per backbone), backbone_<name>
                                          (LXMERT, ViLT: the published Tables 3 and 4)
      figures/accuracy_<task>.png  accuracy_all.png  rewind_<task>.png  transfer_<s>.png  backbones.png
      overlap/                    with ``overlaps``: pairwise/per_type/per_layer CSVs, overlap.md, overlap_iou.png

Tables 1-3, transfer and rewinding are about one backbone (UNITER when it has records); with runs of
other backbones a "Backbones" section shows each in the published Tables 3 and 4's form and their
curves side by side. Sections without records say so. Its command is ``lightning-vl report`` (``study/command.py``): from
run folders (``--runs``) or from a saved JSON list or JSON lines of records (``--records``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

from lightning_vl.tasks.names import PRETRAINING_TASK

from .common import ordered_tasks, slug, sparsity_text, task_name, write_text
from .overlap import OverlapAnalysis
from .tables import (Record, Table, backbone_name, backbone_table, backbones, backbones_table, main_backbone, normalise,
                     rewind_steps, rewind_table, table1, table2, table3, transfer_matrix, transfer_sparsities)


def _write_table(table: Table, tables_dir: Path) -> dict[str, Path]:
    return {"csv": table.to_csv(tables_dir / f"{table.name}.csv"),
            "long_csv": table.to_long_csv(tables_dir / f"{table.name}.long.csv"),
            "markdown": write_text(tables_dir / f"{table.name}.md", f"# {table.title}\n\n{table.description}\n\n"
                                   + table.to_markdown())}


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _table_section(table: Table, files: dict[str, Path], root: Path, level: str = "##") -> list[str]:
    used = f"{table.records_used} record{'s' if table.records_used != 1 else ''}"
    links = f"[csv]({_rel(files['csv'], root)}) · [numbers]({_rel(files['long_csv'], root)})"
    return [f"{level} {table.title}\n", f"{table.description} Built from {used}. {links}\n", table.to_markdown()]


def write_report(records: Iterable[Union[Mapping, Record]], out_dir: Union[str, os.PathLike] = "reports",
                 overlaps: Optional[Union[OverlapAnalysis, Mapping[str, object]]] = None,
                 tasks: Optional[Sequence[str]] = None, fraction: float = 0.99, criterion: str = "mean+std") -> Path:
    """Write every table (CSV + markdown) and figure (PNG) of the records into ``out_dir`` and an
    ``index.md`` showing them; returns the index's path. ``overlaps``: an ``OverlapAnalysis`` or
    label → mask (computed here) for the mask-overlap section. ``tasks`` restricts/orders the
    columns (default: the tasks present, in the study's order)."""
    from . import figures

    every = normalise(records)
    main = main_backbone(every)
    records = [r for r in every if r.backbone == main]  # Tables 1-3, transfer, rewinding: one backbone
    others = [b for b in backbones(every) if b != main]
    published = [b for b in backbones(every) if b != "uniter"]  # LXMERT, ViLT: the published Tables 3 and 4
    root = Path(out_dir)
    tables_dir, figures_dir = root / "tables", root / "figures"
    all_tasks = list(tasks) if tasks is not None else [t for t in ordered_tasks(r.task for r in records)]
    downstream = [t for t in all_tasks if t != PRETRAINING_TASK]
    failed = sum(1 for r in records if not r.ok)
    md = ["# lightning-vl report\n",
          f"{len(every)} records over {len(all_tasks)} task(s)"
          + (f" ({', '.join(task_name(t) for t in all_tasks)})" if all_tasks else "")
          + (f"; {failed} without a metric (failed or missing), left out of every number" if failed else "")
          + ". Metrics in percent, mean ± sample std (n = runs) where several runs exist; — = no record.\n"]
    if others:
        md.append(f"The main tables are {backbone_name(main)}'s ({len(records)} records); "
                  + ", ".join(f"{backbone_name(b)}'s {sum(1 for r in every if r.backbone == b)}" for b in others)
                  + " are in the Backbones section.\n")

    # Table 1 and the accuracy curves
    t1 = table1(records, downstream if tasks is not None else None, fraction=fraction, criterion=criterion)
    md += _table_section(t1, _write_table(t1, tables_dir), root)
    md.append("\n## Accuracy vs sparsity\n")
    curve_tasks = [t for t in all_tasks if any(r.task == t and r.rewind_step == 0 for r in records)]
    if curve_tasks:
        grid = figures.accuracy_grid(records, figures_dir / "accuracy_all.png", curve_tasks, fraction=fraction)
        md.append(f"Every lottery and control row present (rewind step 0; adversarial runs dashed), mean ± std over "
                  f"runs, the dotted line at {fraction:.0%} of dense.\n")
        md.append(f"![accuracy vs sparsity, all tasks]({_rel(grid, root)})\n")
        for t in curve_tasks:
            p = figures.accuracy_figure(records, t, figures_dir / f"accuracy_{slug(t)}.png", fraction=fraction)
            n = sum(1 for r in records if r.task == t and r.rewind_step == 0)
            md.append(f"### {task_name(t)}\n\n{n} records.\n\n![{task_name(t)}: accuracy vs sparsity]({_rel(p, root)})\n")
    else:
        md.append("No records.\n")

    # Tables 2 and 3
    t2 = table2(records, downstream if tasks is not None else None)
    md += _table_section(t2, _write_table(t2, tables_dir), root)
    t3 = table3(records, downstream if tasks is not None else None)
    md += _table_section(t3, _write_table(t3, tables_dir), root)
    if any(r.row == "ticket" and r.training == "adversarial" for r in records):  # the tasks' own tickets
        t3t = table3(records, downstream if tasks is not None else None, row="ticket", standard_row="imp",
                     name="table3_tickets")
        md += _table_section(t3t, _write_table(t3t, tables_dir), root)

    # transfer
    md.append("\n## Transfer between tasks\n")
    keys = transfer_sparsities(records)
    if not keys:
        md.append("No `transfer` records.\n")
    for k in keys:
        tm = transfer_matrix(records, k, downstream if tasks is not None else None)
        files = _write_table(tm, tables_dir)
        md += _table_section(tm, files, root, level="###")
        p = figures.transfer_heatmap(tm, figures_dir / f"{tm.name}.png")
        md.append(f"\n![{tm.title}]({_rel(p, root)})\n")

    # rewinding
    md.append("\n## Rewinding\n")
    rewound = [t for t in all_tasks if any(s > 0 for s in rewind_steps(records, t))]
    if not rewound:
        md.append("No records with a rewind step > 0.\n")
    for t in rewound:
        rt = rewind_table(records, t)
        md += _table_section(rt, _write_table(rt, tables_dir), root, level="###")
        p = figures.rewind_figure(records, t, figures_dir / f"rewind_{slug(t)}.png", fraction=fraction)
        md.append(f"\n![{rt.title}]({_rel(p, root)})\n")

    # the other backbones: the published Tables 3 (LXMERT) and 4 (ViLT), and Figure 4's analogue
    if published:
        md.append("\n## Backbones\n")
        shown = backbones(every)
        bb_tasks = [t for t in ordered_tasks(r.task for r in every if r.backbone in published) if t != PRETRAINING_TASK]
        if tasks is not None:
            bb_tasks = [t for t in bb_tasks if t in tasks]
        bs = backbones_table([r for r in every if r.backbone in shown], bb_tasks, fraction=fraction,
                             criterion=criterion)
        md += _table_section(bs, _write_table(bs, tables_dir), root, level="###")
        for b in shown:
            bt = backbone_table(every, b, bb_tasks, fraction=fraction, criterion=criterion)
            md += _table_section(bt, _write_table(bt, tables_dir), root, level="###")
        p = figures.backbones_figure([r for r in every if r.backbone in shown], figures_dir / "backbones.png",
                                     bb_tasks, fraction=fraction)
        md.append(f"\n![IMP vs random pruning per backbone]({_rel(p, root)})\n")

    # mask overlap
    md.append("\n## Mask overlap\n")
    if overlaps is None:
        md.append("No masks given (`write_report(..., overlaps=...)` or `lightning-vl overlap`).\n")
    else:
        analysis = overlaps if isinstance(overlaps, OverlapAnalysis) else OverlapAnalysis.compute(overlaps)
        files = analysis.write(root / "overlap")
        lo, hi = analysis.chance_range("iou") if len(analysis.labels) >= 2 else (float("nan"),) * 2
        chance = f"{lo:.3f}" if abs(hi - lo) < 5e-4 else f"{lo:.3f}–{hi:.3f}"
        md.append(f"IoU of the kept weights of {len(analysis.labels)} masks "
                  f"({', '.join(f'{lab} at {sparsity_text(analysis.sparsity(lab))}' for lab in analysis.labels)}); "
                  f"two independent random masks would score {chance}. "
                  f"[details]({_rel(files['markdown'], root)}) · [pairs]({_rel(files['pairwise'], root)}) · "
                  f"[per layer type]({_rel(files['per_type'], root)}) · [per layer]({_rel(files['per_layer'], root)})\n")
        if "heatmap_iou" in files:
            md.append(f"![mask overlap]({_rel(files['heatmap_iou'], root)})\n")
    return write_text(root / "index.md", "\n".join(md))


def read_records(path: Union[str, os.PathLike]) -> list[dict]:
    """Records from a JSON list or JSON lines file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i}: not JSON ({err.msg})") from None
    if isinstance(data, dict) and "records" in data:
        data = data["records"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records, got {type(data).__name__}")
    return data
