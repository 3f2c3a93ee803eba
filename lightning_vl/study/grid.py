"""A study: a small YAML grid that expands into *cells*, each one lottery run or one branch of one.

::

    study: table1                       # name (studies/<name>/ holds the cells' state)
    tasks: [nlvr2, refcoco+]            # the grid's task axis
    seeds: [0, 1, 2]                    # or per task: {nlvr2: [0, 1, 2], default: [0]}
    stack: [configs/task/{task}.yaml, configs/model/uniter-tiny.yaml, configs/demo.yaml,
            configs/demo/{task}.yaml]   # config files of a task's command ({task} substituted)
    args: [--trainer.enable_progress_bar, "false"]   # added to every command
    runs:                               # lottery runs, per task × seed (× rewind step); a run's own
      - {method: imp, target_sparsity: 0.7, rewind_steps: [0]}   # `tasks:` narrows the task axis
      - {method: random, target_sparsity: 0.7}
      - {name: imp-adv, method: imp, args: [--model.adversarial.enabled, "true"]}  # `name`: two runs
                                        # of one method (default: the method)
    branches:                           # branches of a run's rounds, per task × seed
      - {name: bert, from: imp, kind: reinit, init: data/demo/bert-tiny, at: [0.5, 0.7]}
      - {name: transfer, from: imp, kind: transfer, to: [vqa, gqa], at: [0.7]}

A branch cell depends on the run cell it hangs off (``from`` names the run: its ``name``; ``source``
names another task's run, e.g. ``source: pretrain`` for the universal ticket); ``at`` lists
sparsities on the run's schedule. ``configs/study/*.yaml`` are the shipped studies.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from lightning_vl.lottery.config import BRANCH_KINDS, ImpConfig
from lightning_vl.pruning import schedule_level
from lightning_vl.tasks.names import TASK_INFO, TASK_NAMES

# a run entry's defaults are the lottery's own (``--imp.*``), declared once in ImpConfig
IMP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ImpConfig)
                if f.name in ("target_sparsity", "schedule", "rate")}
RUN_KEYS = {"name", "method", "target_sparsity", "rewind_steps", "schedule", "rate", "args", "tasks"}
BRANCH_KEYS = {"name", "from", "source", "kind", "init", "strategy", "to", "at", "seeds", "args"}


@dataclass(frozen=True)
class Cell:
    """One command of a study. ``depends`` are the ids of cells that must be done first."""

    id: str
    kind: str  # "run" or "branch"
    task: str  # the task whose folder holds the result (a branch: its source run's task)
    label: str  # for progress lines: "nlvr2 imp seed 0"
    spec: dict = field(hash=False)
    depends: tuple[str, ...] = ()


@dataclass
class Study:
    name: str
    cells: list[Cell]
    path: Optional[Path] = None
    raw: dict = field(default_factory=dict)

    def cell(self, cell_id: str) -> Cell:
        return next(c for c in self.cells if c.id == cell_id)


def _cell_id(spec: dict) -> str:
    """Content address of a cell: what it runs (not where it runs it)."""
    return hashlib.md5(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def _list(value, default):
    if value is None:
        return list(default)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_keys(entry: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def expand(raw: dict, tasks: Optional[list[str]] = None, seeds: Optional[list[int]] = None,
           source: str = "study") -> Study:
    """The cells of a study (``tasks`` / ``seeds`` override the grid's axes): the run cells of
    ``runs`` first, then the branch cells of ``branches``, each hanging off its run cell."""
    if not isinstance(raw, dict) or "study" not in raw:
        raise ValueError(f"{source}: a study needs a 'study:' name, 'tasks', 'stack' and 'runs'")
    # `--tasks` narrows every cell to those tasks, a run entry's own `tasks` and a ticket branch's
    # `source` included; a transfer's source run is kept when one of its targets is asked for
    narrowed = tasks is not None
    tasks = _list(tasks if tasks is not None else raw.get("tasks"), [])
    unknown = [t for t in tasks if t not in TASK_INFO]
    if unknown or not tasks:
        raise ValueError(f"{source}: tasks {unknown or tasks} — expected some of {', '.join(TASK_NAMES)}")
    stack = [str(s) for s in raw.get("stack") or []]
    if not stack:
        raise ValueError(f"{source}: 'stack' must list the config files of a task's command ({{task}} substituted)")
    grid = _Grid(source, {"stack": stack, "args": [str(a) for a in raw.get("args") or []]},
                 seeds if seeds is not None else raw.get("seeds"), tasks, narrowed)
    run_entries = raw.get("runs") or []
    _check_runs(run_entries, source)
    for entry in run_entries:
        grid.add_runs(entry)
    for i, entry in enumerate(raw.get("branches") or []):
        grid.add_branches(entry, run_entries, f"{source}: branches[{i}]")
    ids = [c.id for c in grid.cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: two cells of the grid are the same command")
    return Study(str(raw["study"]), grid.cells, raw=raw)


def _run_name(entry: dict) -> str:
    """A run entry's name: its ``name``, else its method."""
    return str(entry.get("name") or entry["method"])


def _check_runs(run_entries: list, source: str) -> None:
    """Every run entry has known keys and a method, and a name of its own."""
    for i, entry in enumerate(run_entries):
        _check_keys(entry, RUN_KEYS, f"{source}: runs[{i}]")
        if "method" not in entry:
            raise ValueError(f"{source}: runs[{i}] needs a method")
    names = [_run_name(e) for e in run_entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{source}: runs named {twice} more than once; give each run of one method its own 'name'")


@dataclass
class _Grid:
    """The cells of a study as ``expand`` adds them; a run cell is made once, however many
    branches hang off it."""

    source: str
    common: dict  # stack and args, shared by every cell
    seed_spec: object  # a list of seeds, or per task: {nlvr2: [0, 1, 2], default: [0]}
    tasks: list[str]
    narrowed: bool  # --tasks was given
    cells: list[Cell] = field(default_factory=list)
    runs: dict[tuple, str] = field(default_factory=dict)  # (task, run name, seed, rewind) -> cell id

    def seeds_of(self, task: str) -> list[int]:
        if isinstance(self.seed_spec, dict):
            return [int(s) for s in _list(self.seed_spec.get(task, self.seed_spec.get("default")), [0])]
        return [int(s) for s in _list(self.seed_spec, [0])]

    def run_cell(self, task: str, seed: int, entry: dict, rewind: int) -> str:
        """The id of the run cell of ``entry`` on ``task``, made if it is not yet."""
        name = _run_name(entry)
        key = (task, name, seed, rewind)
        if key in self.runs:
            return self.runs[key]
        named = {"name": name} if name != entry["method"] else {}  # unnamed runs keep their cell ids
        spec = {**self.common, "kind": "run", "task": task, "seed": seed, **named, "method": entry["method"],
                "target_sparsity": float(entry.get("target_sparsity", IMP_DEFAULTS["target_sparsity"])),
                "rewind_step": int(rewind), "schedule": entry.get("schedule", IMP_DEFAULTS["schedule"]),
                "rate": float(entry.get("rate", IMP_DEFAULTS["rate"])),
                "extra": [str(a) for a in entry.get("args") or []]}
        cell = Cell(_cell_id(spec), "run", task, f"{task} {name} seed {seed}"
                    + (f" rewind {rewind}" if rewind else ""), spec)
        self.cells.append(cell)
        self.runs[key] = cell.id
        return cell.id

    def add_runs(self, entry: dict) -> None:
        """A run entry's cells: per task (its own ``tasks`` narrow the grid's), seed and rewind step."""
        for task in _list(entry.get("tasks"), self.tasks):
            if task not in TASK_INFO:
                raise ValueError(f"{self.source}: runs: task {task!r} is not a task")
            if self.narrowed and task not in self.tasks:
                continue  # a kept transfer's source run is still made, by its branch
            for seed in self.seeds_of(task):
                for rewind in _list(entry.get("rewind_steps"), [0]):
                    self.run_cell(task, seed, entry, int(rewind))

    def add_branches(self, entry: dict, run_entries: list, where: str) -> None:
        """A branch entry's cells: per source task, seed, level (``at``) and target, each hanging
        off the run cell it branches from (made here if the runs did not make it)."""
        _check_keys(entry, BRANCH_KEYS, where)
        if entry.get("kind") not in BRANCH_KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(BRANCH_KINDS)}")
        parent_name = entry.get("from", "imp")
        template = next((e for e in run_entries if _run_name(e) == parent_name), None)
        if template is None:
            names = [_run_name(e) for e in run_entries]
            raise ValueError(f"{where}: from: {parent_name!r} names no entry of 'runs' (their names: {names})")
        for src in _list(entry.get("source"), []) or self.tasks:
            if src not in TASK_INFO:
                raise ValueError(f"{where}: source {src!r} is not a task")
            targets = self.branch_targets(entry, src)
            if not targets:
                continue
            for seed in [int(s) for s in _list(entry.get("seeds"), self.seeds_of(src))]:
                parent = self.run_cell(src, seed, template, 0)
                for at in _list(entry.get("at"), []):
                    level = level_of(float(at), template)
                    for target in targets:
                        self.cells.append(self.branch_cell(entry, src, seed, level, float(at), parent, target))

    def branch_targets(self, entry: dict, src: str) -> list[Optional[str]]:
        """A transfer's target tasks (default: every other task of the grid); [None] for a branch
        that stays on its source task, [] when ``--tasks`` leaves the source out."""
        if entry["kind"] == "transfer":
            return [t for t in _list(entry.get("to"), self.tasks) if t != src]
        return [None] if not self.narrowed or src in self.tasks else []

    def branch_cell(self, entry: dict, src: str, seed: int, level: int, sparsity: float, parent: str,
                    target: Optional[str]) -> Cell:
        spec = {**self.common, "kind": "branch", "name": entry.get("name", entry["kind"]),
                "branch_kind": entry["kind"], "task": src, "seed": seed, "level": level,
                "sparsity": sparsity, "source_cell": parent, "init": entry.get("init"),
                "strategy": entry.get("strategy"), "to": target,
                "extra": [str(a) for a in entry.get("args") or []]}
        label = (f"{src} r{level:02d} {entry.get('name', entry['kind'])}"
                 + (f" → {target}" if target else "") + f" seed {seed}")
        return Cell(_cell_id(spec), "branch", src, label, spec, (parent,))


def level_of(sparsity: float, run: dict) -> int:
    """The round index whose sparsity is ``sparsity`` on the run's schedule (an error if none is)."""
    schedule, rate = run.get("schedule", IMP_DEFAULTS["schedule"]), float(run.get("rate", IMP_DEFAULTS["rate"]))
    target = float(run.get("target_sparsity", IMP_DEFAULTS["target_sparsity"]))
    for level in range(200):
        value = schedule_level(level, schedule, rate)
        if abs(value - sparsity) < 1e-6:
            if value > target + 1e-9:
                raise ValueError(f"branch at {sparsity:.0%}: past the run's target sparsity {run.get('target_sparsity', target)}")
            return level
        if value > sparsity:
            break
    raise ValueError(f"sparsity {sparsity} is not a level of the {schedule} schedule with rate {rate}")


def load(path: str | Path, tasks=None, seeds=None) -> Study:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    raw = yaml.safe_load(path.read_text())
    study = expand(raw, tasks, seeds, source=str(path))
    study.path = path
    return study
