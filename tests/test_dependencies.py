"""Dependencies run one way: ``lightning_vl`` imports ``data_modules``, never the reverse — except
the tasks' names: ``lightning_vl.tasks.names`` imports only the standard library (tests/test_task_registry.py
checks), so the data modules and the demo may read the task descriptions without importing the model."""
import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import data_modules

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "data_modules"
FORBIDDEN = "lightning_vl"
ALLOWED = {"lightning_vl.tasks.names"}  # stdlib-only; importing it also loads the (empty) packages above it
EMPTY_PACKAGES = {"lightning_vl", "lightning_vl.tasks"}  # docstrings only


def data_module_names() -> list[str]:
    """Every module of the package (``__main__`` modules run their command on import: the source
    scan below covers them)."""
    names = ["data_modules"]
    for info in pkgutil.walk_packages(data_modules.__path__, prefix="data_modules."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return names


def test_the_walk_finds_the_task_modules():
    names = set(data_module_names())
    assert {"data_modules.refcoco", "data_modules.vcr", "data_modules.demo.vcr", "data_modules.convert.features",
            "data_modules.boxes", "data_modules.jsonl"} <= names


def test_importing_every_data_module_loads_no_lightning_vl():
    """In a fresh interpreter (this test session has imported lightning_vl long ago)."""
    script = (
        "import importlib, json, sys\n"
        f"names = {data_module_names()!r}\n"
        "culprits = {}\n"
        "for name in names:\n"
        "    before = {m for m in sys.modules if m == 'lightning_vl' or m.startswith('lightning_vl.')}\n"
        "    importlib.import_module(name)\n"
        "    after = {m for m in sys.modules if m == 'lightning_vl' or m.startswith('lightning_vl.')}\n"
        f"    after -= set({sorted(ALLOWED | EMPTY_PACKAGES)!r})\n"
        "    if after - before:\n"
        "        culprits[name] = sorted(after - before)\n"
        "print(json.dumps(culprits))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    culprits = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not culprits, "importing these data_modules loads lightning_vl: " + "; ".join(
        f"{name} -> {', '.join(mods)}" for name, mods in culprits.items())


def lightning_vl_imports(path: Path) -> list[str]:
    """``file:line: statement`` for every import of lightning_vl in ``path`` (nested ones included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            if (module == FORBIDDEN or module.startswith(FORBIDDEN + ".")) and module not in ALLOWED:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {module}")
    return found


def test_no_data_module_source_imports_lightning_vl():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20
    found = [hit for path in sources for hit in lightning_vl_imports(path)]
    assert not found, "data_modules must not import lightning_vl:\n" + "\n".join(found)


def test_the_scan_names_file_and_line(tmp_path, monkeypatch):
    """The scan itself, on a file that does import lightning_vl (inside a function too)."""
    source = "import os\n\ndef f():\n    from lightning_vl.tasks.metrics import box_iou\n    import lightning_vl\n"
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert lightning_vl_imports(probe) == ["probe.py:4: imports lightning_vl.tasks.metrics", "probe.py:5: imports lightning_vl"]


def test_box_iou_is_one_function():
    from data_modules.boxes import box_iou
    from lightning_vl.tasks.metrics import box_iou as metrics_box_iou

    assert metrics_box_iou is box_iou

