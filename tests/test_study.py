"""Studies: grid expansion, skip/resume, dependencies and failures (with a stand-in for the
commands), and two real worker processes sharing one study (claims, a dead worker's claim)."""
import contextlib
import re
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_vl.study import StudyRunner, expand, load
from lightning_vl.study.runner import StudyState

from .test_tasks_demo import nlvr2_world_args

ROOT = Path(__file__).resolve().parents[1]
GRID = {
    "study": "t", "tasks": ["nlvr2", "refcoco+"], "seeds": [0, 1],
    "stack": ["configs/task/{task}.yaml", "configs/demo/{task}.yaml"],
    "runs": [{"method": "imp", "target_sparsity": 0.7}, {"method": "random", "target_sparsity": 0.7}],
    "branches": [{"name": "bert", "from": "imp", "kind": "reinit", "init": "data/demo/bert-tiny", "at": [0.5, 0.7]},
                 {"name": "transfer", "from": "imp", "kind": "transfer", "at": [0.7]}],
}


def test_grid_expands_into_content_addressed_cells():
    study = expand(GRID)
    runs = [c for c in study.cells if c.kind == "run"]
    branches = [c for c in study.cells if c.kind == "branch"]
    assert len(runs) == 2 * 2 * 2  # tasks × seeds × methods
    assert len(branches) == 2 * 2 * 2 + 2 * 2 * 1  # bert at 2 sparsities; transfer to the other task
    assert {c.spec["level"] for c in branches} == {5, 7}
    transfer = [c for c in branches if c.spec["branch_kind"] == "transfer"]
    assert {(c.task, c.spec["to"]) for c in transfer} == {("nlvr2", "refcoco+"), ("refcoco+", "nlvr2")}
    for c in branches:  # every branch hangs off its task's IMP run of the same seed
        parent = study.cell(c.depends[0])
        assert parent.spec["method"] == "imp" and parent.task == c.task and parent.spec["seed"] == c.spec["seed"]
    assert [c.id for c in expand(GRID).cells] == [c.id for c in study.cells]  # stable ids
    fewer = expand(GRID, tasks=["nlvr2"], seeds=[1])
    assert {c.id for c in fewer.cells} < {c.id for c in study.cells}
    per_task = expand({**GRID, "seeds": {"nlvr2": [0, 1, 2], "default": [0]}})
    assert sum(c.kind == "run" and c.task == "nlvr2" for c in per_task.cells) == 6
    assert sum(c.kind == "run" and c.task == "refcoco+" for c in per_task.cells) == 2


def test_tasks_narrow_every_cell_but_keep_the_runs_a_kept_branch_needs():
    """--tasks nlvr2 snli-ve on the adversarial study must not run RefCOCO+'s and VQA's IMP runs."""
    study = load(Path(__file__).resolve().parents[1] / "configs/study/adversarial-demo.yaml",
                 tasks=["nlvr2", "snli-ve"])
    assert {c.task for c in study.cells} == {"pretrain"}  # RefCOCO+'s ticket branches left out too
    assert {c.spec.get("to") or c.task for c in study.cells if c.kind == "branch"} == {"nlvr2", "snli-ve"}
    assert [c.label for c in study.cells if c.kind == "run"] == ["pretrain imp seed 0"]
    assert len([c for c in study.cells if c.kind == "branch"]) == 8  # 2 tasks x 2 sparsities x std/adv
    whole = load(Path(__file__).resolve().parents[1] / "configs/study/adversarial-demo.yaml")
    assert {c.id for c in study.cells} < {c.id for c in whole.cells}  # the same cells, fewer of them


def test_named_runs_of_one_method_are_separate_cells_and_branches_name_theirs():
    """Two IMP runs (standard and adversarial) side by side; unnamed runs keep their cell ids."""
    adv = {"name": "imp-adv", "method": "imp", "target_sparsity": 0.7, "args": ["--model.adversarial.enabled", "true"]}
    grid = {**GRID, "tasks": ["refcoco+"], "seeds": [0], "runs": [GRID["runs"][0], adv],
            "branches": [{"name": "ticket-adv", "from": "imp", "kind": "ticket", "at": [0.6]},
                         {"name": "bert", "from": "imp-adv", "kind": "reinit", "init": "x", "at": [0.5]}]}
    study = expand(grid)
    runs = {c.label: c for c in study.cells if c.kind == "run"}
    assert set(runs) == {"refcoco+ imp seed 0", "refcoco+ imp-adv seed 0"}
    assert runs["refcoco+ imp-adv seed 0"].spec["extra"] == ["--model.adversarial.enabled", "true"]
    plain = next(c for c in expand({**GRID, "tasks": ["refcoco+"], "seeds": [0]}).cells if c.label == "refcoco+ imp seed 0")
    assert runs["refcoco+ imp seed 0"].id == plain.id and "name" not in plain.spec
    parents = {c.spec["name"]: study.cell(c.depends[0]).label for c in study.cells if c.kind == "branch"}
    assert parents == {"ticket-adv": "refcoco+ imp seed 0", "bert": "refcoco+ imp-adv seed 0"}
    with pytest.raises(ValueError, match="more than once"):
        expand({**grid, "runs": [GRID["runs"][0], {**adv, "name": "imp"}]})


@pytest.mark.parametrize("bad, message", [
    ({"tasks": ["nope"]}, "expected some of"), ({"runs": [{"method": "imp", "colour": 1}]}, "unknown keys"),
    ({"branches": [{"from": "imp", "kind": "reinit", "at": [0.75]}]}, "not a level"),
    ({"branches": [{"from": "omp", "kind": "reinit", "at": [0.5]}]}, "names no entry"),
    ({"branches": [{"from": "imp", "kind": "reinit", "at": [0.9]}]}, "past the run's target"),
])
def test_bad_grids_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        expand({**GRID, **bad})


def test_shipped_studies_expand():
    for path in sorted((ROOT / "configs" / "study").glob("*.yaml")):
        study = load(path)
        assert study.cells, path


@pytest.mark.parametrize("name, backbone, tasks, init, needs", [
    ("table3", "lxmert", ["vqa", "gqa", "nlvr2"], "data/demo/lxmert-tiny.pt", "lxmert-tiny.pt"),
    ("table4", "vilt", ["vqa", "nlvr2"], "data/demo/vilt-tiny.pt", "vilt-tiny.pt"),
])
def test_the_other_backbones_demo_studies_run_their_backbone_from_its_demo_theta0(name, backbone, tasks, init, needs):
    study = load(ROOT / "configs" / "study" / f"{name}-demo.yaml")
    assert len(study.cells) == 2 * 3 * len(tasks) and {c.task for c in study.cells} == set(tasks)
    for cell in study.cells:
        command = " ".join(StudyRunner(study).command(cell))
        assert f"configs/model/{backbone}-tiny.yaml" in command and f"--model.init {init}" in command, command
        for path in re.findall(r"--config (\S+)", command):
            assert (ROOT / path).is_file(), path
    plan = subprocess.run(["make", "-n", "-B", "study", f"STUDY={name}"], cwd=ROOT, capture_output=True,
                          text=True).stdout  # -B: the whole plan, whatever is built already
    assert f"--trainer.callbacks.path data/demo/{needs}" in plan  # the backbone's θ_0 is built first
    assert "--trainer.callbacks.path data/demo/uniter-tiny.pt" not in plan  # and UNITER's is not needed


class FakeCommands:
    """Stands in for lightning-vl prune/branch: records what ran, 'writes' a run folder."""

    def __init__(self, tmp_path, fail=()):
        self.ran, self.tmp, self.fail = [], tmp_path, set(fail)

    def __call__(self, command, log, result_file):
        self.ran.append(command)
        log.write_text("ran\n")
        verb = command[3]
        key = " ".join(command)
        if any(f in key for f in self.fail):
            return 1
        run_dir = self.tmp / "runs" / f"run{len(self.ran)}"
        result_file.write_text(json.dumps({"run_dir": str(run_dir), "verb": verb}))
        return 0


def test_a_study_runs_dependencies_first_skips_done_cells_and_retries_failed_ones(tmp_path):
    study = expand(GRID, tasks=["nlvr2"], seeds=[0])
    fake = FakeCommands(tmp_path, fail=["--kind reinit"])
    runner = StudyRunner(study, runs=tmp_path / "runs", root=tmp_path / "studies", execute=fake, poll=0.01,
                         echo=lambda s: None)
    assert runner.run() == 1  # the bert branches failed
    verbs = [c[3] for c in fake.ran]
    assert verbs[:2] == ["prune", "prune"] and verbs.count("branch") == 2
    state = StudyState(tmp_path / "studies", study)
    assert sum(state.is_done(c) for c in study.cells) == 2
    assert all(state.failed_path(c).exists() for c in study.cells if c.kind == "branch")
    branch = next(c for c in fake.ran if c[3] == "branch")
    assert branch[branch.index("--from") + 1].endswith(("round_05", "round_07"))
    fake.fail.clear()
    fake.ran.clear()
    assert runner.run() == 0  # re-running retries the failed cells only
    assert [c[3] for c in fake.ran] == ["branch", "branch"]
    fake.ran.clear()
    assert runner.run() == 0 and fake.ran == []  # everything done: nothing runs


def test_a_cell_waiting_on_a_failed_one_is_reported_not_run(tmp_path):
    study = expand(GRID, tasks=["nlvr2"], seeds=[0])
    fake = FakeCommands(tmp_path, fail=["--imp.method imp"])
    lines = []
    runner = StudyRunner(study, runs=tmp_path / "runs", root=tmp_path / "studies", execute=fake, poll=0.01,
                         echo=lines.append)
    assert runner.run() == 1
    assert all(c[3] == "prune" for c in fake.ran)  # no branch of the failed run was attempted
    assert "failed or blocked" in lines[-1] and "nlvr2 r05 bert seed 0" in lines[-1]


def test_time_left_is_estimated_per_kind_and_task_and_shared_by_the_workers_holding_cells(tmp_path):
    """A study's first cells are long lottery runs and its last short branches: a plain mean over
    finished cells once said ~14 h left of a transfer study that had ~1 h to go."""
    study = expand(GRID, tasks=["nlvr2", "refcoco+"], seeds=[0])
    runner = StudyRunner(study, runs=tmp_path / "runs", root=tmp_path / "studies", execute=FakeCommands(tmp_path),
                         poll=0.01, echo=lambda s: None)
    state = runner.state

    def finish(cell, seconds):
        state.done_path(cell).write_text(json.dumps({"id": cell.id, "seconds": seconds}))

    cells = {c.label: c for c in study.cells}
    finish(cells["nlvr2 imp seed 0"], 600.0)
    finish(cells["nlvr2 random seed 0"], 400.0)
    finish(cells["nlvr2 r05 bert seed 0"], 30.0)
    finish(cells["refcoco+ r07 transfer → nlvr2 seed 0"], 10.0)  # trains on NLVR2: a branch on nlvr2
    pending = [c for c in study.cells if not state.is_done(c)]
    runs_left = [c for c in pending if c.kind == "run"]
    on_nlvr2 = [c for c in pending if c.kind == "branch" and (c.spec.get("to") or c.task) == "nlvr2"]
    elsewhere = [c for c in pending if c.kind == "branch" and c not in on_nlvr2]
    assert len(runs_left) == 2 and on_nlvr2 and elsewhere
    expected = len(runs_left) * 500.0 + len(on_nlvr2) * 20.0 + len(elsewhere) * 20.0
    left, workers = runner.estimate_left()
    assert workers == 1 and left == pytest.approx(expected)
    with state.claim(runs_left[0]) as mine:  # another worker holds a cell: two share what is left
        assert mine
        left, workers = runner.estimate_left()
    assert workers == 2 and left == pytest.approx(expected / 2)
    finish(cells["refcoco+ r05 bert seed 0"], 90.0)  # refcoco+'s own branches now have a peer
    expected = len(runs_left) * 500.0 + (len(on_nlvr2)) * 20.0 + (len(elsewhere) - 1) * 90.0
    assert runner.estimate_left() == (pytest.approx(expected), 1)


# ---- real worker processes ----------------------------------------------------------------------
def tiny_study(world: Path, tmp_path: Path, steps: int = 4, seeds: tuple[int, ...] = (0, 1)) -> Path:
    study = {
        "study": "tiny", "tasks": ["nlvr2"], "seeds": list(seeds),
        "stack": [str(ROOT / "configs/task/{task}.yaml"), str(ROOT / "configs/model/uniter-tiny.yaml"),
                  str(ROOT / "configs/demo.yaml"), str(ROOT / "configs/demo/{task}.yaml")],
        "args": [*nlvr2_world_args(world),
                 "--data.init_args.batch_size", "8", "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "4",
                 "--trainer.enable_progress_bar", "false"],
        "runs": [{"method": "imp", "target_sparsity": 0.1, "args": ["--imp.wandb", "disabled"]}],
        "branches": [{"name": "shuffle", "from": "imp", "kind": "shuffle", "at": [0.1],
                      "args": ["--branch.wandb", "disabled"]}],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def worker(commands, study: Path, tmp_path: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return commands.start([sys.executable, "-m", "lightning_vl.cli", "study", str(study), "--runs",
                           str(tmp_path / "runs"), "--root", str(tmp_path / "studies"), "--poll", "0.5"],
                          tmp_path / f"{name}.log", cwd=tmp_path, env=env)


def cells_done(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (tmp_path / "studies" / "tiny" / "cells").glob("*.json")]


@pytest.mark.slow
def test_two_workers_share_a_study_and_never_run_the_same_cell(demo_world, tmp_path, commands):
    study = tiny_study(demo_world, tmp_path)
    workers = [worker(commands, study, tmp_path, f"w{i}") for i in range(2)]
    ended = [commands.wait(w, tmp_path / f"w{i}.log", 300) for i, w in enumerate(workers)]
    assert [e.returncode for e in ended] == [0, 0], ended[0].output[-2000:]
    done = cells_done(tmp_path)
    assert len(done) == 4  # 2 runs + 2 branches, each exactly once
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    ran = [line for log in logs for line in log.splitlines() if line.strip().startswith("✓")]
    assert len(ran) == 4 and len({line.split(" in ")[0] for line in ran}) == 4
    assert all(log.count("✓") >= 1 for log in logs)  # both workers did some of the work
    runs = list((tmp_path / "runs" / "nlvr2").iterdir())
    assert len(runs) == 2 and all((r / "round_01" / "branches").is_dir() for r in runs)
    index = (tmp_path / "studies" / "tiny" / "report" / "index.md").read_text()  # the study's own report
    assert "Table 1" in index and "accuracy" in index
    found = json.loads((tmp_path / "studies" / "tiny" / "report" / "records.json").read_text())
    assert sorted(r["row"] for r in found) == ["imp"] * 4 + ["shuffle"] * 2  # its branches too, not only rounds


def stat_fields(stat: Path) -> list[str]:
    """A /proc/<pid>/stat line after the command name: state, parent pid, …"""
    return stat.read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet reaped, is not)."""
    try:
        return stat_fields(Path(f"/proc/{pid}/stat"))[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The pids ``pid`` started (Linux /proc), waiting until there is one."""
    deadline = time.time() + 60
    while time.time() < deadline:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat_fields(stat)[1]) == pid:
                    found.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} started no command")


@pytest.mark.slow
def test_a_dead_workers_claim_is_taken_over(demo_world, tmp_path, commands):
    study = tiny_study(demo_world, tmp_path, seeds=(0,))  # one run and its branch
    first = worker(commands, study, tmp_path, "first")
    deadline = time.time() + 300
    while not list((tmp_path / "studies" / "tiny" / "cells").glob("*.log")):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its command, mid-cell
    first.wait()
    assert len(cells_done(tmp_path)) == 0  # killed inside the run, which its branch waits for
    second = commands.wait(worker(commands, study, tmp_path, "second"), tmp_path / "second.log", 300)
    assert second.returncode == 0, second.output[-2000:]
    assert len(cells_done(tmp_path)) == 2


@pytest.mark.slow
def test_a_killed_worker_leaves_no_command_running(demo_world, tmp_path, commands):
    """SIGKILL to the worker alone (as a scheduler's kill or the OOM killer sends it): the cell's
    command, which would train for a long time, ends with it."""
    first = worker(commands, tiny_study(demo_world, tmp_path, steps=100_000), tmp_path, "first")
    cell_commands = []
    try:
        cell_commands = children(first.pid)
        time.sleep(3)  # into the fit
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        deadline = time.time() + 60
        while any(alive(pid) for pid in cell_commands):
            assert time.time() < deadline, f"the dead worker's command {cell_commands} still runs"
            time.sleep(0.2)
    finally:
        for pid in cell_commands:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(first.pid, signal.SIGKILL)


def test_records_name_the_backbone_of_their_run():
    from lightning_vl.study.index import backbone_name

    assert backbone_name({"model": {"backbone": {"class_path": "lightning_vl.model.lxmert.LxmertBackbone"}}}) == "lxmert"
    assert backbone_name({"model": {"backbone": "my_lab.models.ViltBackbone"}}) == "vilt"
    assert backbone_name({"model": {"task": "vqa"}}) == backbone_name({}) == "uniter"  # run folders from before the seam
