"""What a run shows while and after it runs: the progress line of each level, the run folder's
summary tables, and its W&B run (one run per experiment or branch, x-axis = sparsity)."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Optional

from .folder import RunFolder


def progress_line(result: dict, rounds: int) -> str:
    """``round 4/9 · sparsity 40.0% · val acc 0.8100 · 300 steps in 18s`` (of ``rounds`` levels, 0 to 9)."""
    metric = result["monitor"].split("/")[-1]
    value = result["metric"]
    shown = f"{value:.4f}" if value is not None else "n/a"
    return (
        f"round {result['round']}/{rounds - 1} · sparsity {result['sparsity']:.1%} · "
        f"val {metric} {shown} · {result['steps']} steps in {result['seconds']:.0f}s"
    )


def write_summary(folder: RunFolder, results: list[dict]) -> None:
    """``summary.csv`` (one row per level, every metric a column) and ``summary.json``."""
    metric_keys = sorted({k for r in results for k in r["metrics"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["round", "target_sparsity", "sparsity", "kept", "total", "steps", "seconds", *metric_keys])
    for r in results:
        writer.writerow(
            [r["round"], f"{r['target_sparsity']:.6f}", f"{r['sparsity']:.6f}", r["kept"], r["total"],
             r["steps"], r["seconds"], *[_cell(r["metrics"].get(k)) for k in metric_keys]]
        )
    folder.write_text(folder.path / "summary.csv", buf.getvalue())
    folder.write_json(folder.path / "summary.json", results)


def _cell(value) -> str:
    return "" if value is None else str(value)


class WandbRun:
    """The W&B run of one experiment or branch, created on first use (global rank 0 only).

    Args:
        mode: ``offline``, ``online`` or ``disabled``.
        run_id: stable id, so a resumed run continues the same W&B run.
    """

    def __init__(self, mode: str, project: str, group: str, name: str, run_id: str, job_type: str,
                 tags: list[str], directory: str, config: Optional[dict] = None):
        self.mode = mode
        self.kwargs = dict(project=project, group=group, name=name, id=run_id.replace("/", "-"), job_type=job_type,
                           tags=tags, dir=directory, mode=mode, resume="allow", config=config or {})
        self._run = None

    def log(self, values: dict) -> None:
        if self.mode == "disabled":
            return
        if self._run is None:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._run = wandb.init(**self.kwargs)
            self._run.define_metric("sparsity")
            self._run.define_metric("*", step_metric="sparsity")
        self._run.log(values)

    def log_result(self, result: dict) -> None:
        self.log({"sparsity": 100 * result["sparsity"], "round": result.get("round"), **result["metrics"]})

    def sync(self, results: list[dict], marker: Path) -> None:
        """Log every result the W&B run does not have yet, so the run is rebuilt from the round
        files: a round whose files were written just before a crash is logged by the next run.
        ``marker`` (``wandb.json``) lists what was logged."""
        if self.mode == "disabled":
            return
        logged = set(json.loads(marker.read_text()).get("logged", [])) if marker.exists() else set()
        todo = [r for r in results if r.get("round", 0) not in logged]
        for r in todo:
            self.log_result(r)
            logged.add(r.get("round", 0))
        if todo:
            marker.write_text(json.dumps({"id": self.kwargs["id"], "logged": sorted(logged)}) + "\n")

    def finish(self, summary: Optional[dict] = None) -> None:
        if self._run is not None:
            for k, v in (summary or {}).items():
                self._run.summary[k] = v
            self._run.finish()
            self._run = None
