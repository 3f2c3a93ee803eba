"""A task is described in one place: its ``TaskInfo`` in ``lightning_vl/tasks/names.py`` (torch-free)
and its ``TaskSpec`` in ``lightning_vl/tasks/specs.py`` (the model's half). Everything else asks them: the
Makefile, the demo world, the analysis and the study; the configs and ``lightning-vl data`` must
name the same tasks, and no other package file spells a task's name."""
import ast
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_modules.demo import TASKS as DEMO_PART_NAMES
from data_modules.demo import demo_generator, generate_demo
from data_modules.prepare import tasks as prepare_tasks
from lightning_vl.tasks import names as task_names
from lightning_vl.tasks.names import DEMO_PARTS, TASK_INFO, UnknownTaskError, task_info
from lightning_vl.tasks.specs import TASKS, get_task

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = set(TASKS)


def differences(where: str, names, what: str = "tasks") -> list[str]:
    """Messages for the tasks ``where`` lacks or has beyond the registry."""
    names = set(names)
    out = []
    if REGISTRY - names:
        out.append(f"{where} lacks the {what} {sorted(REGISTRY - names)} of lightning_vl/tasks/specs.py:TASKS")
    if names - REGISTRY:
        out.append(f"{where} has {what} {sorted(names - REGISTRY)} that lightning_vl/tasks/specs.py:TASKS does not define")
    return out


def test_the_registry_has_the_study_tasks():
    assert REGISTRY == {"vqa", "gqa", "vcr", "nlvr2", "snli-ve", "refcoco+", "flickr30k-ir", "flickr30k-tr",
                        "pretrain"}
    assert all(spec.name == name for name, spec in TASKS.items())
    from lightning_vl.tasks.specs import DOWNSTREAM

    assert set(DOWNSTREAM) == REGISTRY - {"pretrain"}  # the study's eight columns


def test_the_two_registries_list_the_same_tasks_in_the_same_order():
    assert tuple(TASKS) == task_names.TASK_NAMES == tuple(TASK_INFO)
    assert all(TASKS[name].info is TASK_INFO[name] for name in TASKS)
    assert task_names.STUDY_TASKS == ("vqa", "gqa", "vcr", "nlvr2", "snli-ve", "refcoco+", "flickr30k-ir",
                                      "flickr30k-tr")  # the paper's column order
    assert task_names.PRETRAINING_TASK == "pretrain"


@pytest.mark.parametrize("lookup", [task_info, get_task, task_names.demo_part])
def test_an_unknown_task_is_an_error_listing_the_known_ones(lookup):
    with pytest.raises(UnknownTaskError, match=r"unknown task 'vqa2'; known tasks: vqa, gqa, .*, pretrain"):
        lookup("vqa2")
    assert issubclass(UnknownTaskError, ValueError)
    with pytest.raises(UnknownTaskError, match=r"study: unknown task\(s\) 'x'; known tasks: vqa"):
        task_names.check_tasks(["nlvr2", "x"], where="study")


def test_adversarial_defaults_are_described_and_unknown_tasks_have_none():
    from lightning_vl.training.adversarial import AdversarialConfig

    with pytest.raises(UnknownTaskError, match="known tasks"):  # once a silent ("text", 1e-3, 1.5)
        AdversarialConfig(enabled=True).resolved("vqa2")
    with pytest.raises(ValueError, match="not for the pretrain task"):
        AdversarialConfig(enabled=True).resolved("pretrain")
    assert not AdversarialConfig().resolved("pretrain").active


def test_the_demo_parts_keep_their_order():
    """Parts are written in rank order and the feature store keeps it: a new part goes last."""
    assert DEMO_PART_NAMES == tuple(DEMO_PARTS) == ("nlvr2", "vqa", "gqa", "vcr", "snli-ve", "refcoco+", "flickr30k",
                                                    "pretrain")
    for part in DEMO_PARTS.values():
        module = importlib.import_module(part.generator)
        assert callable(module.generate) and module.DEFAULT_SIZES, part


def test_each_data_module_path_names_a_data_module():
    import pytorch_lightning as pl

    for info in TASK_INFO.values():
        module, _, name = info.data_module.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, pl.LightningDataModule), info
        config = yaml.safe_load((ROOT / "configs" / "task" / f"{info.name}.yaml").read_text())
        assert config["data"]["class_path"] == info.data_module, f"configs/task/{info.name}.yaml"


def test_the_makefile_asks_the_package_for_the_tasks():
    makefile = (ROOT / "Makefile").read_text()
    lines = re.findall(r"^TASK_NAMES\s*[:?]?=\s*(.*?)\s*$", makefile, re.MULTILINE)
    assert lines == ["$(shell $(PYTHON) -m lightning_vl.tasks.names)"], "the Makefile must not list the tasks itself"
    out = subprocess.run([sys.executable, "-m", "lightning_vl.tasks.names"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == list(TASK_INFO)
    if shutil.which("make") is None:
        pytest.skip("no make")
    run = subprocess.run(["make", "-s", "check-task", "TASK=vqa2", f"PYTHON={sys.executable}"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "unknown TASK=vqa2; one of: vqa gqa" in run.stdout, run
    run = subprocess.run(["make", "-s", "check-task", "TASK=refcoco+", f"PYTHON={sys.executable}"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run


def test_the_names_module_imports_nothing_but_the_standard_library():
    """In a fresh interpreter: the Makefile runs it with any python3, the data modules import it."""
    script = ("import json, sys\n"
              "before = set(sys.modules)\n"
              "import lightning_vl.tasks.names\n"
              "print(json.dumps(sorted(set(sys.modules) - before)))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = sorted(m for m in loaded if m.split(".")[0] in ("lightning_vl", "data_modules", "callbacks"))
    assert ours == ["lightning_vl", "lightning_vl.tasks", "lightning_vl.tasks.names"], ours
    third_party = sorted(m for m in loaded if m.split(".")[0] in ("torch", "numpy", "yaml", "pytorch_lightning",
                                                                  "transformers", "torchmetrics", "h5py"))
    assert not third_party, third_party
    stdlib = set(sys.stdlib_module_names)
    foreign = sorted({m.split(".")[0] for m in loaded} - stdlib - {"lightning_vl"})
    assert not foreign, f"lightning_vl.tasks.names loads non-standard-library modules: {foreign}"


# --- no stray task names ------------------------------------------------------------------------
PACKAGES = ("lightning_vl", "data_modules", "callbacks")
# Files that may spell any task name: the two registries themselves.
REGISTRIES = {
    "lightning_vl/tasks/names.py": "the torch-free registry: every task's TaskInfo",
    "lightning_vl/tasks/specs.py": "the model's registry: every task's TaskSpec, checked against task_names at import",
}
# Files that are one task's own code and may spell that task's name only. Besides these, a task's
# data module and demo generator (its TaskInfo.data_module and .demo.generator) may spell its name.
ONE_TASK_FILES = {
    # the pre-training task's heads, losses and metrics (as data_modules/pretrain.py is its data);
    # its metric collection is logged under the key "pretrain"
    "lightning_vl/tasks/pretraining.py": {"pretrain"},
}


def _file_of(module: str) -> str:
    return module.replace(".", "/") + ".py"


def allowed_names() -> dict[str, set[str]]:
    """file (relative to the project) -> the task names it may spell."""
    allowed = {path: set(TASK_INFO) for path in REGISTRIES}
    for path, names in ONE_TASK_FILES.items():
        allowed.setdefault(path, set()).update(names)
    for info in TASK_INFO.values():
        for module in (info.data_module.rpartition(".")[0], info.demo.generator):
            allowed.setdefault(_file_of(module), set()).add(info.name)
    return allowed


def task_literals(path: Path, names) -> list[tuple[int, str]]:
    """(line, name) of every string constant in ``path`` that is exactly a task name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]


def test_no_task_name_is_spelled_outside_the_registries():
    allowed = allowed_names()
    for path in list(REGISTRIES) + list(ONE_TASK_FILES):
        assert (ROOT / path).is_file(), f"the allow-list names {path}, which does not exist"
    sources = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(sources) > 50
    found = []
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        found += [f"{rel}:{line}: {name!r}" for line, name in task_literals(path, set(TASK_INFO))
                  if name not in allowed.get(rel, set())]
    assert not found, ("task names spelled outside lightning_vl/tasks/names.py and lightning_vl/tasks/specs.py (ask "
                       "lightning_vl.tasks.names, or describe the difference on the task's TaskInfo):\n"
                       + "\n".join(found))


def test_the_stray_name_scan_finds_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('X = 1\nif task == "vcr":\n    pass\nY = f"{task}-vcr"  # not exactly a name\n')
    assert task_literals(probe, set(TASK_INFO)) == [(2, "vcr")]


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
    assert {demo_generator(task) for task in TASK_INFO} == set(DEMO_PART_NAMES)
    with pytest.raises(ValueError, match="no demo data for task 'pretraining'"):
        demo_generator("pretraining")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Each generator alone, tiny: which files it writes."""
    root = tmp_path_factory.mktemp("registry_demo")
    for gen in DEMO_PART_NAMES:
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
                         f"(lightning_vl/tasks/names.py: TaskInfo({task!r}).demo)")


def test_prepare_knows_the_registry_tasks():
    problems = differences("data_modules/prepare.py:tasks() (configs/task/*.yaml)", prepare_tasks())
    assert not problems, "\n".join(problems)


def test_make_chooses_the_demo_backbone():
    """``BACKBONE=lxmert``: LXMERT-tiny's config and θ_0 (data/demo/lxmert-tiny.pt, built by
    pretrain-lxmert); the default keeps UNITER's command; an unknown backbone is refused."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    common = ["make", "-n", "prune", "TASK=nlvr2", f"PYTHON={sys.executable}"]
    lxmert = subprocess.run(common + ["BACKBONE=lxmert"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "--config configs/model/lxmert-tiny.yaml" in lxmert and "--model.init data/demo/lxmert-tiny.pt" in lxmert
    assert "--trainer.callbacks.path data/demo/lxmert-tiny.pt" in lxmert or (ROOT / "data/demo/lxmert-tiny.pt").exists()
    uniter = subprocess.run(common, cwd=ROOT, capture_output=True, text=True).stdout
    assert "--config configs/model/uniter-tiny.yaml" in uniter and "lxmert-tiny" not in uniter
    assert "configs/demo/pixels" not in lxmert + uniter  # region backbones read the task's features
    # ViLT: its config, θ_0 (pretrain-vilt) and the demo's drawn images after the task's demo data
    vilt = subprocess.run(common + ["BACKBONE=vilt"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "--config configs/model/vilt-tiny.yaml" in vilt and "--model.init data/demo/vilt-tiny.pt" in vilt
    assert "--config configs/demo/nlvr2.yaml \\\n  --config configs/demo/pixels/vilt.yaml" in vilt
    assert "--config configs/demo/pretrain-vilt.yaml" in vilt or (ROOT / "data/demo/vilt-tiny.pt").exists()
    bad = subprocess.run(["make", "-s", "prune", "BACKBONE=foo", f"PYTHON={sys.executable}"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown BACKBONE=foo" in bad.stdout + bad.stderr
    assert "one of: lxmert uniter vilt" in bad.stdout + bad.stderr
    # a pixel backbone on a task without images stops before anything is built
    for task in ("refcoco+", "pretrain"):
        bad = subprocess.run(["make", "-s", "prune", f"TASK={task}", "BACKBONE=vilt", f"PYTHON={sys.executable}"],
                             cwd=ROOT, capture_output=True, text=True)
        assert bad.returncode == 2 and "BACKBONE=vilt reads images" in bad.stdout, bad
        assert "TASK must be one of vqa gqa nlvr2" in bad.stdout and "pre-training" not in bad.stdout


def test_the_image_tasks_are_those_whose_data_modules_read_images():
    """``TaskInfo.reads_images`` says what each data module's ``supports_images`` does; the Makefile's
    pixel check reads ``python -m lightning_vl.tasks.names --images`` (the study's ones)."""
    for info in TASK_INFO.values():
        module, _, name = info.data_module.rpartition(".")
        assert getattr(importlib.import_module(module), name).supports_images == info.reads_images, info.name
    out = subprocess.run([sys.executable, "-m", "lightning_vl.tasks.names", "--images"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == list(task_names.IMAGE_TASKS) == ["vqa", "gqa", "nlvr2"]
    from data_modules.demo import IMAGE_PARTS

    assert IMAGE_PARTS == ("nlvr2", "vqa", "gqa", "pretrain")  # the demo draws their scenes
