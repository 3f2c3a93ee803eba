"""``lightning-vl data --task <t> --src <folder>`` (``make data``): from downloaded public files to
what ``configs/task/<t>.yaml`` reads.

The data modules read the public schemas directly, so preparing a task means:

1. find every annotation file the task config names (by its public file name, anywhere under
   ``--src``) and link it (or copy it, ``--copy``) to the configured path under ``data/<task>/``;
2. build the derived files that are missing: VQA's ``ans2label.json`` by the standard recipe
   (normalised ``multiple_choice_answer`` of train2014 + val2014, kept when >= 9 distinct
   questions give it: 3,129 answers), GQA's from the train + val balanced answers (1,842);
   ``--minidev`` copies UNITER's held-out VQA id list into place;
3. if the config's feature store and tokenizer exist, read every split through the data module and
   report what does not fit — images missing from the store, by id — without stopping at the
   first problem;
4. write ``data/<task>/prepared.json``: what was linked, built and checked.

Nothing is downloaded; RefCOCO+'s pickle is only ever read with a class-refusing unpickler.

The default config is the project's own ``configs/task/<t>.yaml``, found from this file, so the
command works from any working directory; an explicit ``--config`` is relative to the working
directory, as are the data paths inside a config (``data/<task>/...``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]  # the project: configs/ lives beside data_modules/
NOT_FILES = {"features", "eval_features", "tokenizer"}
OPTIONAL = {"test_file", "test_questions", "test_annotations"}
ID_LISTS = {"val_ids", "train_exclude_ids"}  # VQA's mini-dev question ids


def task_config_dir() -> Path:
    """``configs/task`` of the project (found from this file, not from the working directory);
    ``./configs/task`` only where the package was installed without its configs."""
    bundled = ROOT / "configs" / "task"
    return bundled if bundled.is_dir() else Path("configs") / "task"


def tasks() -> list[str]:
    """The tasks ``lightning-vl data`` prepares: one per ``configs/task/<task>.yaml``."""
    return sorted(p.stem for p in task_config_dir().glob("*.yaml"))


def task_config_path(task: str, config: Optional[str | Path] = None) -> Path:
    """``config`` as given (relative to the working directory), else the project's
    ``configs/task/<task>.yaml`` (an unknown task is an error listing the known ones)."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"task config {path} does not exist (relative to the working directory "
                                    f"{Path.cwd()})")
        return path
    path = task_config_dir() / f"{task}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no task config {path}: unknown task {task!r}; the tasks are {', '.join(tasks())} "
                                f"(one per {task_config_dir()}/<task>.yaml)")
    return path


def _paths(value) -> list[str]:
    """The file paths of a config value: a path, a list of paths, or of ``{path: ...}`` entries
    (the pre-training module's caption files)."""
    values = value if isinstance(value, list) else [value]
    values = [v.get("path") if isinstance(v, dict) else v for v in values]
    return list(dict.fromkeys(v for v in values if isinstance(v, str) and "/" in v and Path(v).suffix))


def derived_files(data: dict) -> dict:
    """What the config's data module can build when missing: ``DERIVED_FILES`` of its module
    (``{init_args key: build(init_args, min_count) -> (path, what)}``; VQA's and GQA's
    ``ans2label``)."""
    module_name = str(data.get("class_path", "")).rpartition(".")[0]
    return getattr(importlib.import_module(module_name), "DERIVED_FILES", {}) if module_name else {}


def _place(source: Path, dest: Path, copy: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        if dest.resolve() == source.resolve():
            return
        dest.unlink()
    if copy:
        shutil.copyfile(source, dest)
    else:
        os.symlink(source.resolve(), dest)


def prepare_task(task: str, src: str | Path, config: Optional[str | Path] = None, copy: bool = False,
                 minidev: Optional[str] = None, min_count: int = 9, force: bool = False, check: bool = True) -> dict:
    """Link, build and check one task's files (see the module docstring); returns the report."""
    config = task_config_path(task, config)
    data = yaml.safe_load(config.read_text())["data"]
    init = data["init_args"]
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder; give the folder holding the downloaded annotation files")
    found: dict[str, Path] = {}
    for path in sorted(src.rglob("*")):
        if path.is_file():
            found.setdefault(path.name, path)
    report: dict = {"task": task, "config": str(config), "src": str(src.resolve()), "linked": {}, "built": {},
                    "absent_optional": [], "checks": {}}
    missing, to_build, targets = [], [], []
    derived = derived_files(data)
    for key, value in init.items():
        if key in NOT_FILES:
            continue
        for target in _paths(value):
            targets.append(target)
            dest = Path(target)
            name = dest.name
            if key in ID_LISTS:
                if minidev:
                    _place(Path(minidev), dest, copy=True)
                    report["linked"][target] = str(Path(minidev).resolve())
                elif not dest.exists():
                    missing.append(f"{key}: {target} — UNITER's held-out VQA mini-dev question ids; pass --minidev FILE, "
                                   f"or set data.init_args.{key}: null to train on train2014 + val2014 and validate on val")
            elif name in found and key not in derived:
                _place(found[name], dest, copy)
                report["linked"][target] = str(found[name].resolve())
            elif key in derived:
                if name in found and not force:
                    _place(found[name], dest, copy)
                    report["linked"][target] = str(found[name].resolve())
                elif force or not dest.exists():
                    to_build.append(key)
            elif key in OPTIONAL:
                report["absent_optional"].append(target)
            elif not dest.exists():
                missing.append(f"{key}: {name} (for {target})")
    if missing:
        raise FileNotFoundError(f"{task}: not found under {src}:\n  " + "\n  ".join(missing))
    for key in to_build:
        path, what = derived[key](init, min_count)
        report["built"][str(path)] = what
    if check:
        report["checks"] = check_task(data, report["absent_optional"])
    out = Path(targets[0]).parent  # the task's annotation folder, e.g. data/vqa
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepared.json").write_text(json.dumps(report, indent=1) + "\n")
    report["report"] = str(out / "prepared.json")
    return report


def check_task(data: dict, absent: list[str]) -> dict:
    """Read every configured split through the task's data module; record, per split, the number
    of examples or the error (missing images by id, schema problems) instead of stopping."""
    init = dict(data["init_args"])
    for key in ("features", "tokenizer"):
        if not Path(str(init.get(key))).exists():
            return {"skipped": f"{key} {init.get(key)} does not exist yet (make features ... OUT={init.get(key)})"}
    for key, value in list(init.items()):
        if value in absent:
            init[key] = None
    module_name, class_name = data["class_path"].rsplit(".", 1)
    datamodule = getattr(importlib.import_module(module_name), class_name)(**init)
    checks = {}
    for split, path in datamodule.split_files().items():
        if not path:
            continue
        try:
            checks[split] = {"examples": len(datamodule.build_dataset(split, path))}
        except (KeyError, ValueError, FileNotFoundError) as err:
            checks[split] = {"error": str(err)}
    return checks


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="lightning-vl data", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--task", required=True, help=f"one of {', '.join(tasks())}")
    ap.add_argument("--src", required=True, help="folder with the downloaded public annotation files")
    ap.add_argument("--config", default=None,
                    help="task config, relative to the working directory (default: the project's configs/task/<task>.yaml)")
    ap.add_argument("--copy", action="store_true", help="copy files instead of symlinking them")
    ap.add_argument("--minidev", default=None, help="VQA: UNITER's held-out val2014 question ids (text or JSON)")
    ap.add_argument("--min-count", type=int, default=9, help="VQA answer vocabulary: questions per kept answer")
    ap.add_argument("--force", action="store_true", help="rebuild derived files that exist")
    ap.add_argument("--no-check", action="store_true", help="skip reading the splits against the feature store")
    args = ap.parse_args(argv)
    report = prepare_task(args.task, args.src, args.config, args.copy, args.minidev, args.min_count, args.force,
                          not args.no_check)
    for target, source in report["linked"].items():
        print(f"linked  {target} <- {source}")
    for target, what in report["built"].items():
        print(f"built   {target}: {what}")
    for target in report["absent_optional"]:
        print(f"absent  {target} (optional)")
    failed = False
    for split, result in report["checks"].items():
        if isinstance(result, dict) and "error" in result:
            failed = True
            print(f"check   {split}: PROBLEM: {result['error']}")
        else:
            print(f"check   {split}: {result}")
    print(f"report  {report['report']}")
    return 1 if failed else 0
