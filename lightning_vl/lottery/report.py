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


KEEP_FRACTION = 0.99  # a round "kept" the dense score when it reached this fraction of round 0's


def ticket_round(results: list[dict], fraction: float = KEEP_FRACTION) -> Optional[dict]:
    """The sparsest round whose score is at least ``fraction`` of the dense (round 0) score.

    Example:
        >>> rounds = [{"round": i, "sparsity": i / 10, "metric": m} for i, m in enumerate([0.80, 0.795, 0.70])]
        >>> ticket_round(rounds)["round"]
        1

    Returns ``None`` without a finite round-0 score; round 0 itself when no pruned round kept it.
    """
    dense = next((r for r in results if r.get("round") == 0), None)
    if dense is None or not _finite(dense.get("metric")):
        return None
    kept = [r for r in results if _finite(r.get("metric")) and r["metric"] >= fraction * dense["metric"]]
    return max(kept, key=lambda r: (r["sparsity"], r["round"]))


def prune_summary(results: list[dict], run_dir: Path, task: str, method: str, make_args: str = "") -> list[str]:
    """The lines ``lightning-vl prune`` ends with: what was found, where it is, what to run next.

    Args:
        results: the run's levels (``summary.json``'s rows).
        run_dir: the run folder.
        task, method: the run's task and pruning method.
        make_args: ``make`` settings that the next ``make prune`` should repeat (``SPARSITY=0.2 RUNS=…``).

    Example:
        >>> rows = [{"round": 0, "sparsity": 0.0, "metric": 0.6, "monitor": "val/acc"},
        ...         {"round": 1, "sparsity": 0.1, "metric": 0.598, "monitor": "val/acc"}]
        >>> print("\\n".join(prune_summary(rows, Path("runs/nlvr2/imp-1"), "nlvr2", "imp")))
        done: imp on nlvr2 · dense (round 0) val acc 0.6000 · ≥ 99% of it up to sparsity 10.0% (round 1, val acc 0.5980)
          run folder  runs/nlvr2/imp-1  (summary.csv, summary.json)
          next        make prune TASK=nlvr2 PRUNE=random   (the random-pruning baseline)
                      make report   (tables and figures of every run in reports/)
    """
    if not results:
        found = "no rounds recorded"
    else:
        name = results[0]["monitor"].split("/")[-1]
        dense = next((r for r in results if r["round"] == 0), None)
        ticket = ticket_round(results)
        if ticket is None:
            found = f"dense (round 0) val {name} {_score(dense)}: no finite score to compare the pruned rounds with"
        elif ticket["round"] == 0:
            best = max((r for r in results if r["round"] > 0 and _finite(r.get("metric"))),
                       key=lambda r: r["metric"], default=None)
            found = (f"dense (round 0) val {name} {_score(dense)} · no pruned round kept ≥ {KEEP_FRACTION:.0%} of it"
                     + (f" (best: round {best['round']}, val {name} {_score(best)})" if best else ""))
        else:
            found = (f"dense (round 0) val {name} {_score(dense)} · ≥ {KEEP_FRACTION:.0%} of it up to sparsity "
                     f"{ticket['sparsity']:.1%} (round {ticket['round']}, val {name} {_score(ticket)})")
    other = "random" if not method.startswith("random") else "imp"
    settings = f"TASK={task} PRUNE={other}" + (f" {make_args}" if make_args else "")
    runs = next((a for a in make_args.split() if a.startswith("RUNS=")), "")
    what = "the random-pruning baseline" if other == "random" else "IMP, to compare with"
    check = unconverged_dense(results)
    return [f"done: {method} on {task} · {found}",
            *([f"  check       {check}"] if check else []),
            f"  run folder  {run_dir}  (summary.csv, summary.json)",
            f"  next        make prune {settings}   ({what})",
            f"              make report{' ' + runs if runs else ''}   (tables and figures of every run in reports/)"]


# A pruned round may beat the dense one by noise; by more than this (in the monitor's units, a
# fraction: 0.02 is 2 points of accuracy) the dense round is the suspect, not the ticket.
ABOVE_DENSE_MARGIN = 0.02


def unconverged_dense(results: list[dict], margin: float = ABOVE_DENSE_MARGIN) -> str | None:
    """A warning when a pruned round scores more than ``margin`` above the dense round, else None.

    A sub-network of the same start, trained with the same budget, matches the dense model when
    both have converged; a ticket far *above* dense means the dense fine-tune stopped while still
    learning (its score then depends on how fast it happened to learn, seed by seed), so every round
    passes the 99% line trivially. The demo's dense RefCOCO+ scored 0.735 after 300 steps where
    1,000 reach 0.965, and the 20% round 0.922 (reports/measured, "The demo's dense baseline").

    Example:
        >>> unconverged_dense([{"round": 0, "sparsity": 0.0, "metric": 0.73, "steps": 300},
        ...                    {"round": 2, "sparsity": 0.2, "metric": 0.92, "steps": 300}])[:62]
        'round 2 (20.0%) scores 0.1900 above the dense round after 300 '

    Raises:
        Nothing: rows without a finite score are skipped.
    """
    dense = next((r for r in results if r["round"] == 0 and _finite(r.get("metric"))), None)
    best = max((r for r in results if r["round"] > 0 and _finite(r.get("metric"))),
               key=lambda r: r["metric"], default=None)
    if dense is None or best is None or best["metric"] - dense["metric"] <= margin:
        return None
    steps = dense.get("steps")
    return (f"round {best['round']} ({best['sparsity']:.1%}) scores {best['metric'] - dense['metric']:.4f} above the "
            f"dense round after {steps if steps is not None else 'the same'} steps: the dense fine-tune has likely not "
            "converged (raise --trainer.max_steps; docs/troubleshooting.md)")


def branch_summary(result: dict, branch_dir: Path) -> list[str]:
    """The lines ``lightning-vl branch`` ends with: its score beside the source round's, its folder.

    Example:
        >>> r = {"kind": "shuffle", "task": "nlvr2", "sparsity": 0.4, "metric": 0.55, "monitor": "val/acc",
        ...      "source": "runs/nlvr2/imp-1/round_04", "source_metric": 0.6}
        >>> print("\\n".join(branch_summary(r, Path("runs/nlvr2/imp-1/branches/shuffle-2"))))
        done: shuffle branch of runs/nlvr2/imp-1/round_04 on nlvr2 at sparsity 40.0%: val acc 0.5500 (source round 0.6000)
          branch folder  runs/nlvr2/imp-1/branches/shuffle-2  (metrics.json, mask.pt)
          next           make report   (tables and figures of every run and branch in reports/)
    """
    name = result["monitor"].split("/")[-1]
    ref = result.get("source_metric")
    ref = f" (source round {ref:.4f})" if _finite(ref) else ""
    return [f"done: {result['kind']} branch of {result['source']} on {result['task']} at sparsity "
            f"{result['sparsity']:.1%}: val {name} {_score(result)}{ref}",
            f"  branch folder  {branch_dir}  (metrics.json, mask.pt)",
            "  next           make report   (tables and figures of every run and branch in reports/)"]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _score(result: Optional[dict]) -> str:
    value = None if result is None else result.get("metric")
    return f"{value:.4f}" if _finite(value) else "n/a"


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
