"""``lightning-vl study`` and ``lightning-vl report``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .grid import load
from .runner import StudyRunner, StudyState


def study_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="lightning-vl study", description=(
        "Run a study's cells (lottery runs and branches) not done yet; any number of workers may run the same "
        "study at once on a shared filesystem (each claims a cell), e.g. one per SLURM array task."))
    ap.add_argument("study", help="the study's YAML file, e.g. configs/study/table1-demo.yaml")
    ap.add_argument("--tasks", nargs="+", help="only these tasks (the grid's task axis)")
    ap.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    ap.add_argument("--runs", default="runs", help="the runs root (default runs/)")
    ap.add_argument("--root", default="studies", help="where the study's cell records live (default studies/)")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between looks while other workers hold cells")
    ap.add_argument("--list", action="store_true", help="list the cells and their state, run nothing")
    ap.add_argument("--wandb", default=os.environ.get("WANDB_MODE", "offline"),
                    choices=["offline", "online", "disabled"],
                    help="the study's summary W&B run, logged when every cell is done (default: $WANDB_MODE or offline)")
    args = ap.parse_args(argv)
    try:
        study = load(args.study, args.tasks, args.seeds)
    except (OSError, ValueError) as err:
        ap.error(str(err))
    if args.list:
        state = StudyState(args.root, study)
        for cell in study.cells:
            mark = "done" if state.is_done(cell) else ("running" if state.held(cell) else
                                                       "failed" if state.failed_path(cell).exists() else "to do")
            print(f"{cell.id}  {mark:<8} {cell.label}")
        return 0
    runner = StudyRunner(study, runs=args.runs, root=args.root, poll=args.poll)
    code = runner.run()
    if code == 0:
        summarise(study, runner.state, args.wandb)
    return code


def summarise(study, state: StudyState, wandb_mode: str) -> None:
    """When every cell is done: the study's own report (``studies/<study>/report/``, from its
    cells' run folders only) and its summary W&B run."""
    from ..analysis.report import write_report
    from .index import records_of
    from .summary import log_summary_run

    import fcntl

    fd = os.open(state.path / "report.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:  # several workers finish together: one writes the report
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        runs = sorted({state.record(c)["run_dir"] for c in study.cells if c.kind == "run"})
        mine = {Path(state.record(c)["run_dir"]).resolve() for c in study.cells if c.kind == "branch"
                and state.is_done(c)}  # the commands report absolute folders, the index relative ones
        # a run's rounds always; a branch only when one of this study's cells made it
        found = [r for r in records_of(runs) if "/branches/" not in r["path"] or Path(r["path"]).resolve() in mine]
        index = write_report(found, state.path / "report")
        (state.path / "report" / "records.json").write_text(json.dumps(found, indent=1))
        log_summary_run(study.name, found, state.path, wandb_mode)
        print(f"study {study.name}: report {index} ({len(found)} records)")
    finally:
        os.close(fd)


def report_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="lightning-vl report", description=(
        "Index run folders into records and write the study's tables (Table 1, 2, 3, transfer, rewinding; CSV "
        "and markdown) and figures (PNG) with one index.md."))
    ap.add_argument("--runs", nargs="+", default=["runs"], help="runs roots to index (default runs/)")
    ap.add_argument("--records", metavar="FILE", help="build from these records instead of run folders: a JSON list or "
                    "JSON lines (e.g. an earlier report's records.json)")
    ap.add_argument("--out", default="reports", help="output folder (default reports/)")
    ap.add_argument("--mask", nargs="*", default=[], metavar="LABEL=PATH",
                    help="masks for the overlap heat map (e.g. vqa=runs/vqa/imp-…/round_07/mask.pt)")
    ap.add_argument("--tasks", nargs="+", help="only these tasks' columns")
    args = ap.parse_args(argv)

    from ..analysis.overlap import OverlapAnalysis, load_masks
    from ..analysis.report import read_records, write_report
    from .index import records

    try:
        found = read_records(args.records) if args.records else [r for root in args.runs for r in records(root)]
        if not found:
            print(f"lightning-vl report: no finished rounds {'in ' + args.records if args.records else 'under ' + ', '.join(args.runs)}")
            return 1
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "records.json").write_text(json.dumps(found, indent=1))
        overlaps = OverlapAnalysis.compute(*load_masks(args.mask)) if args.mask else None
        index = write_report(found, out, overlaps=overlaps, tasks=args.tasks)
    except (OSError, ValueError, TypeError) as err:
        print(f"lightning-vl report: {err}", file=sys.stderr)
        return 2
    runs = len({str(r.get("path", "")).split("/round_")[0] for r in found})
    print(f"{len(found)} records from {runs} runs → {index}")
    return 0
