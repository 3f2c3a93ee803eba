"""A task is defined in one place, ``lightning_vl.tasks.TASKS``; every other list of tasks — the
Makefile's, the configs, the demo generators', ``lightning-vl data``'s — must name the same ones."""
import re
from pathlib import Path

import pytest
import yaml

from data_modules.demo import DEMO_TASKS, TASK_MODULES, demo_generator, generate_demo
from data_modules.prepare import tasks as prepare_tasks
from lightning_vl.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = set(TASKS)


def differences(where: str, names, what: str = "tasks") -> list[str]:
    """Messages for the tasks ``where`` lacks or has beyond the registry."""
    names = set(names)
    out = []
    if REGISTRY - names:
        out.append(f"{where} lacks the {what} {sorted(REGISTRY - names)} of lightning_vl/tasks.py:TASKS")
    if names - REGISTRY:
        out.append(f"{where} has {what} {sorted(names - REGISTRY)} that lightning_vl/tasks.py:TASKS does not define")
    return out


def test_the_registry_has_the_study_tasks():
    assert REGISTRY == {"vqa", "gqa", "vcr", "nlvr2", "snli-ve", "refcoco+", "flickr30k-ir", "flickr30k-tr",
                        "pretrain"}
    assert all(spec.name == name for name, spec in TASKS.items())
    from lightning_vl.tasks import DOWNSTREAM

    assert set(DOWNSTREAM) == REGISTRY - {"pretrain"}  # the study's eight columns


def test_makefile_tasks_line():
    makefile = ROOT / "Makefile"
    lines = [m.group(1) for m in re.finditer(r"^TASK_NAMES\s*[:?]?=\s*(.*?)\s*$", makefile.read_text(), re.MULTILINE)]
    assert len(lines) == 1, f"{makefile}: expected one 'TASK_NAMES := ...' line, found {len(lines)}"
    names = lines[0].split()
    assert len(names) == len(set(names)), f"{makefile}: TASK_NAMES lists a task twice: {names}"
    problems = differences(f"{makefile}: TASK_NAMES", names)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", ["task", "demo"])
def test_every_task_has_its_configs_and_no_config_lacks_a_task(folder):
    configs = ROOT / "configs" / folder
    stems = [p.stem for p in configs.glob("*.yaml")]
    # a variant of a task's config is <task>-<variant>.yaml (configs/demo/pretrain-text.yaml)
    variants = [s for s in stems if s not in REGISTRY and s.rsplit("-", 1)[0] in REGISTRY]
    problems = differences(f"{configs}/", [s for s in stems if s not in variants], what="<task>.yaml files")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_config_names_its_task(task):
    path = ROOT / "configs" / "task" / f"{task}.yaml"
    assert path.is_file(), f"{path} does not exist: task {task!r} has no config"
    config = yaml.safe_load(path.read_text())
    named = (config.get("model") or {}).get("task")
    assert named == task, f"{path}: model.task is {named!r}, expected {task!r}"


def test_demo_generators_cover_the_registry():
    where = "data_modules/demo/__init__.py:DEMO_TASKS"
    problems = differences(where, DEMO_TASKS)
    unknown = {task: gen for task, gen in DEMO_TASKS.items() if gen not in TASK_MODULES}
    if unknown:
        problems.append(f"{where} maps to generators {unknown} that TASK_MODULES lacks ({sorted(TASK_MODULES)})")
    unused = sorted(set(TASK_MODULES) - set(DEMO_TASKS.values()))
    if unused:
        problems.append(f"data_modules/demo/__init__.py:TASK_MODULES has generators {unused} that make no task's files")
    assert not problems, "\n".join(problems)
    with pytest.raises(ValueError, match="no demo data for task 'pretraining'"):
        demo_generator("pretraining")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Each generator alone, tiny: which files it writes."""
    root = tmp_path_factory.mktemp("registry_demo")
    for gen in sorted(set(DEMO_TASKS.values())):
        generate_demo(root / gen, feat_dim=8, n_train=8, n_dev=4, n_test=4, tasks=(gen,))
    return root


def _demo_paths(value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and v.startswith("data/demo/")]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_demo_data_is_written_by_its_generator(task, generated):
    """Every data/demo/ path of configs/demo/<task>.yaml is a file the task's generator writes."""
    path = ROOT / "configs" / "demo" / f"{task}.yaml"
    assert path.is_file(), f"{path} does not exist: task {task!r} has no demo config"
    init = yaml.safe_load(path.read_text())["data"]["init_args"]
    gen = demo_generator(task)
    wanted = {key: p for key, value in init.items() for p in _demo_paths(value)}
    assert "features" in wanted and "tokenizer" in wanted, f"{path}: expected the demo store and tokenizer"
    missing = {key: p for key, p in wanted.items() if not (generated / gen / p[len("data/demo/"):]).exists()}
    assert not missing, (f"{path}: {missing} are not written by the demo generator {gen!r} "
                         f"(data_modules/demo/__init__.py:DEMO_TASKS[{task!r}])")


def test_prepare_knows_the_registry_tasks():
    problems = differences("data_modules/prepare.py:tasks() (configs/task/*.yaml)", prepare_tasks())
    assert not problems, "\n".join(problems)
