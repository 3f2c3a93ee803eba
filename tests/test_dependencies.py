"""Dependencies run one way: ``lightning_vl`` imports ``data_modules``, never the reverse — except
the tasks' names: ``lightning_vl.tasks.names`` imports only the standard library (tests/test_task_registry.py
checks), so the data modules and the demo may read the task descriptions without importing the model.

Between the layers (``LAYERS``: the folders of ``lightning_vl``, its top-level modules, ``callbacks``
and ``data_modules``) every import follows an allow-list whose graph has no cycle."""
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
EMPTY_PACKAGES = {"lightning_vl", "lightning_vl.tasks"}  # docstrings only (checked below)


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


# --- layers ---------------------------------------------------------------------------------------
# What each layer may import of the project. The names module is a layer of its own (the bottom one:
# the standard library only), so that ``data_modules`` may read it while ``tasks`` imports ``data_modules``.
LAYERS = {
    "tasks.names": set(),
    "io": set(),
    "console": set(),
    "launchers": set(),
    "pruning": {"io"},                                   # pure: no Lightning, no model (tests/test_pruning.py)
    "model": {"io"},                                     # one file per backbone, no training or lottery
    "callbacks": {"io", "pruning"},
    "data_modules": {"tasks.names"},
    "tasks": {"tasks.names", "model", "data_modules"},
    "training": {"tasks.names", "tasks", "model", "pruning", "callbacks"},
    "lottery": {"io", "pruning", "launchers", "callbacks"},  # models only through the Prunable protocol
    "analysis": {"io", "pruning", "tasks.names"},           # reads run folders and masks, never a model
    "study": {"tasks.names", "pruning", "lottery", "analysis"},
    "export": {"model"},                                 # the old path of model/export.py (saved configs)
    "tools": {"model", "tasks", "training", "pruning"},
    "cli": {"tasks.names", "io", "console", "launchers", "pruning", "model", "tasks", "training", "lottery",
            "data_modules"},
}
TOP = ("lightning_vl", "callbacks", "data_modules")


def layer_of(module: str):
    """The layer a dotted module belongs to (None: the empty package ``lightning_vl`` itself)."""
    parts = module.split(".")
    if parts[0] != "lightning_vl":
        return parts[0]
    if parts[1:3] == ["tasks", "names"]:
        return "tasks.names"
    return parts[1] if len(parts) > 1 else None


def module_name(path: Path) -> tuple[str, bool]:
    """``path``'s dotted module name, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def project_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of the project in ``path``, relative ones resolved."""
    name, is_package = module_name(path)
    here = name.split(".") if is_package else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            modules = [".".join(base + ([node.module] if node.module else []))]
        else:
            continue
        out += [(node.lineno, m) for m in modules if m.split(".")[0] in TOP]
    return out


def layer_violations() -> list[str]:
    found = []
    for top in TOP:
        for path in sorted((ROOT / top).rglob("*.py")):
            source = layer_of(module_name(path)[0])
            if source is None:
                continue
            for line, module in project_imports(path):
                target = layer_of(module)
                if target is not None and target != source and target not in LAYERS.get(source, ()):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {source} imports {module} ({target})")
    return found


def test_every_layer_imports_only_what_it_may():
    found = layer_violations()
    assert not found, ("imports against the layering (tests/test_dependencies.py:LAYERS; move the code "
                       "down a layer or pass it in):\n" + "\n".join(found))


def test_the_layers_have_no_cycle():
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle between layers: " + " -> ".join(trail + [node])
        state[node] = "open"
        for target in sorted(LAYERS[node]):
            visit(target, trail + [node])
        state[node] = "done"

    assert all(t in LAYERS for targets in LAYERS.values() for t in targets)
    for node in LAYERS:
        visit(node, [])


def test_every_layer_of_the_tree_is_placed():
    """A new folder or top-level module of lightning_vl needs its line in LAYERS."""
    package = ROOT / "lightning_vl"
    present = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.stem for p in package.glob("*.py") if not p.name.startswith("__")}
    assert present | {"tasks.names", "callbacks", "data_modules"} == set(LAYERS)


def test_the_packages_above_the_names_module_import_nothing():
    for name in sorted(EMPTY_PACKAGES):
        init = ROOT.joinpath(*name.split("."), "__init__.py")
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in tree.body), \
            f"{init.relative_to(ROOT)} must hold a docstring only: importing lightning_vl.tasks.names loads it"


def test_the_layer_scan_resolves_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "lightning_vl" / "model"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .uniter import X\n")
    (pkg / "heads.py").write_text("import os\nfrom . import uniter\nfrom ..training.module import M\n"
                                  "from lightning_vl.tasks.names import N\nimport data_modules.boxes\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert project_imports(pkg / "__init__.py") == [(1, "lightning_vl.model.uniter")]
    assert project_imports(pkg / "heads.py") == [(2, "lightning_vl.model"), (3, "lightning_vl.training.module"),
                                                 (4, "lightning_vl.tasks.names"), (5, "data_modules.boxes")]
    assert [layer_of(m) for _, m in project_imports(pkg / "heads.py")] == ["model", "training", "tasks.names",
                                                                           "data_modules"]
