"""Running a study's cells: here one after another, or by any number of workers at once.

Cells are independent commands (``lightning-vl prune`` / ``lightning-vl branch``), each content-
addressed twice: by the study (``studies/<study>/cells/<id>.json`` records a finished cell) and by
the run folder the command itself names from its settings, so re-running a study skips finished
cells and resumes unfinished ones where they stopped. A worker *claims* a cell with an ``flock``
on ``<id>.lock``: no two workers run the same cell, and a dead worker's claim dies with it, so
``sbatch --array`` workers on a shared filesystem cooperate with no scheduler of our own.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import yaml

from .grid import Cell, Study

CLI = [sys.executable, "-m", "lightning_vl.cli"]
RESULT_ENV = "LIGHTNING_VL_RESULT_FILE"  # the prune/branch commands write their outcome there


def stack_args(stack: list[str], task: str) -> list[str]:
    out = []
    for item in stack:
        out += ["--config", item.replace("{task}", task)]
    return out


class StudyState:
    """The study's bookkeeping folder: ``cells/<id>.json`` (done), ``.failed`` (last failure),
    ``.lock`` (claims), ``cells/<id>.log`` (the command's output)."""

    def __init__(self, root: str | Path, study: Study):
        self.path = Path(root) / study.name
        self.cells_dir = self.path / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)

    def done_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.id}.json"

    def failed_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.id}.failed"

    def log_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.id}.log"

    def is_done(self, cell: Cell) -> bool:
        return self.done_path(cell).exists()

    def record(self, cell: Cell) -> dict:
        return json.loads(self.done_path(cell).read_text())

    @contextlib.contextmanager
    def claim(self, cell: Cell) -> Iterator[bool]:
        """Yields True when this process holds the cell (non-blocking; released on exit or death)."""
        fd = os.open(self.cells_dir / f"{cell.id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
            yield True
        finally:
            os.close(fd)

    def held(self, cell: Cell) -> bool:
        """Whether another process holds the cell right now."""
        with self.claim(cell) as mine:
            return not mine


class StudyRunner:
    """Runs the cells of ``study`` that are not done, claiming each, until none is left.

    Args:
        runs: the runs root every command writes its run folder under (``--imp.root``).
        root: where the study's bookkeeping lives (``studies/``).
        execute: runs one command and returns its exit status (tests replace it).
        poll: seconds between looks when every pending cell is held by another worker or waits on one.
    """

    def __init__(self, study: Study, runs: str | Path = "runs", root: str | Path = "studies",
                 execute: Optional[Callable[[list[str], Path, Path], int]] = None, poll: float = 10.0,
                 echo: Callable[[str], None] = print):
        self.study, self.runs, self.poll, self.echo = study, Path(runs), poll, echo
        self.state = StudyState(root, study)
        self.execute = execute or run_command
        self.start = time.time()

    # ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """0 when every cell is done, 1 when some failed (named) or wait on a failed one."""
        cells = self.study.cells
        self.echo(f"study {self.study.name}: {len(cells)} cells ({sum(c.kind == 'run' for c in cells)} lottery "
                  f"runs, {sum(c.kind == 'branch' for c in cells)} branches), "
                  f"{sum(self.state.is_done(c) for c in cells)} done · {self.state.path}")
        failed: set[str] = set()
        while True:
            pending = [c for c in cells if not self.state.is_done(c) and c.id not in failed]
            if not pending:
                break
            ready = [c for c in pending if all(self.state.is_done(self.study.cell(d)) for d in c.depends)]
            blocked_by_failure = [c for c in pending if any(d in failed for d in c.depends)]
            ran = False
            for cell in ready:
                with self.state.claim(cell) as mine:
                    if not mine or self.state.is_done(cell):
                        continue
                    ok = self._run_cell(cell)
                    if not ok:
                        failed.add(cell.id)
                    ran = True
                    break
            if ran:
                continue
            for cell in blocked_by_failure:
                failed.add(cell.id)
            waiting = [c for c in pending if c.id not in failed]
            if not waiting:
                break
            time.sleep(self.poll)  # held by other workers, or waiting on cells they hold
        done = sum(self.state.is_done(c) for c in cells)
        self.echo(f"study {self.study.name}: {done}/{len(cells)} cells done in {_duration(time.time() - self.start)}"
                  + (f"; failed or blocked: {', '.join(self.study.cell(i).label for i in sorted(failed))}"
                     if failed else ""))
        return 0 if done == len(cells) else 1

    def _run_cell(self, cell: Cell) -> bool:
        command = self.command(cell)
        started = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            result_file = Path(tmp) / "result.json"
            status = self.execute(command, self.state.log_path(cell), result_file)
            outcome = json.loads(result_file.read_text()) if result_file.exists() else None
        seconds = round(time.time() - started, 1)
        if status != 0 or outcome is None:
            tail = self.state.log_path(cell).read_text()[-2000:] if self.state.log_path(cell).exists() else ""
            self.state.failed_path(cell).write_text(json.dumps({"status": status, "command": command,
                                                                "tail": tail}, indent=1))
            self.echo(f"  ✗ {cell.label}: exit status {status} (log: {self.state.log_path(cell)})")
            return False
        self.state.failed_path(cell).unlink(missing_ok=True)
        record = {"id": cell.id, "label": cell.label, "kind": cell.kind, "spec": cell.spec, "command": command,
                  "seconds": seconds, **outcome}
        tmp = self.state.done_path(cell).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.state.done_path(cell))
        self._progress(cell, seconds)
        return True

    def _progress(self, cell: Cell, seconds: float) -> None:
        cells = self.study.cells
        done = sum(self.state.is_done(c) for c in cells)
        left, workers = self.estimate_left()
        self.echo(f"  ✓ {cell.label} in {_duration(seconds)} · cells {done}/{len(cells)} done · elapsed "
                  f"{_duration(time.time() - self.start)} · ~{_duration(left)} left"
                  f" ({workers} worker{'s' if workers > 1 else ''})")

    def estimate_left(self) -> tuple[float, int]:
        """Wall-clock seconds left and the workers counted: each cell not done costs the mean time of
        the finished cells (any worker's) of its kind on the task it trains, else of its kind, and the
        sum is shared by this worker and every worker holding a cell now. (A plain mean over cells
        misleads: a study's first cells are its long lottery runs, its last ones short branches.)"""
        finished, pending = [], []
        for c in self.study.cells:
            (finished if self.state.is_done(c) else pending).append(c)
        by_key: dict[tuple[str, str], list[float]] = {}
        by_kind: dict[str, list[float]] = {}
        for c in finished:
            seconds = float(self.state.record(c).get("seconds", 0.0))
            by_key.setdefault((c.kind, _trains(c)), []).append(seconds)
            by_kind.setdefault(c.kind, []).append(seconds)
        every = [s for v in by_kind.values() for s in v] or [0.0]

        def mean(values: list[float]) -> float:
            return sum(values) / len(values)

        left = sum(mean(by_key.get((c.kind, _trains(c))) or by_kind.get(c.kind) or every) for c in pending)
        workers = 1 + sum(self.state.held(c) for c in pending)
        return left / workers, workers

    # ---------------------------------------------------------------------------------------------
    def command(self, cell: Cell) -> list[str]:
        spec = cell.spec
        common = [*spec["args"], *spec["extra"]]
        if cell.kind == "run":
            return [*CLI, "prune", *stack_args(spec["stack"], spec["task"]),
                    "--seed_everything", str(spec["seed"]), "--imp.method", spec["method"],
                    "--imp.target_sparsity", str(spec["target_sparsity"]), "--imp.schedule", spec["schedule"],
                    "--imp.rate", str(spec["rate"]), "--imp.rewind_step", str(spec["rewind_step"]),
                    "--imp.root", str(self.runs), *common]
        source = self.state.record(self.study.cell(spec["source_cell"]))
        round_dir = Path(source["run_dir"]) / f"round_{spec['level']:02d}"
        out = [*CLI, "branch", "--from", str(round_dir), "--kind", spec["branch_kind"],
               "--branch.seed", str(spec["seed"])]
        if spec.get("strategy"):
            out += ["--branch.strategy", spec["strategy"]]
        if spec.get("to"):
            out += ["--task", spec["to"]]
        init = spec.get("init")
        if init is not None:
            out += ["--model.init", self._init(init, Path(source["run_dir"]))]
        return out + common

    @staticmethod
    def _init(init: str, run_dir: Path) -> str:
        """``none`` = a fresh random init; ``shuffled`` = the source run's own init, shuffled (θ''_0)."""
        if str(init).lower() in ("none", "null", "random"):
            return "null"
        if init == "shuffled":
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            return f"shuffled:{config['model']['init']}"
        return str(init)


def _trains(cell: Cell) -> str:
    """The task a cell fine-tunes on (a transfer trains on its target), which sets its cost."""
    return cell.spec.get("to") or cell.task


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the worker dies, however it dies, so a killed
    worker leaves no cell command running (SIGTERM makes the command save its place and exit)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no libc prctl: the command outlives a SIGKILLed worker
        pass


def run_command(command: list[str], log: Path, result_file: Path) -> int:
    """Run one cell's command with its output in ``log``; the command writes its outcome (run
    folder, results) to ``result_file``. The command ends with the worker."""
    env = {**os.environ, RESULT_ENV: str(result_file)}
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            return child.wait()
        except BaseException:  # Ctrl-C or an error here: stop the command before leaving
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
            raise


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
