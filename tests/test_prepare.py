"""`lightning-vl data`: public files found under --src, linked where the task config reads them,
derived vocabularies built, every split read against the store."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from data_modules.prepare import prepare_task
from lightning_vl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def task_config(task: str, world: Path, tmp_path: Path) -> Path:
    """The real-data config with data/ under tmp_path and the demo's store and tokenizer."""
    cfg = yaml.safe_load((ROOT / "configs" / "task" / f"{task}.yaml").read_text())
    init = cfg["data"]["init_args"]
    for key, value in init.items():
        if isinstance(value, str) and value.startswith("data/"):
            init[key] = str(tmp_path / value)
        elif isinstance(value, list):
            init[key] = [str(tmp_path / v) for v in value]
    init.update(features=str(world / "features.h5"), tokenizer=str(world / "tokenizer"), img_dim=128)
    init.pop("eval_features", None)
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_gqa_files_are_linked_vocabulary_built_and_splits_checked(demo_all, tmp_path):
    src = tmp_path / "downloads"
    src.mkdir()
    for name in ("train", "val", "testdev"):
        shutil.copy(demo_all / "gqa" / f"{name}_balanced_questions.json", src)
    report = prepare_task("gqa", src, task_config("gqa", demo_all, tmp_path))
    ans2label = json.loads((tmp_path / "data/gqa/ans2label.json").read_text())
    assert sorted(ans2label, key=ans2label.get) == sorted(ans2label)  # sorted answers, indices 0..A-1
    assert (tmp_path / "data/gqa/train_balanced_questions.json").is_symlink()
    assert set(report["checks"]) == {"train", "val", "test"}
    assert all("examples" in r for r in report["checks"].values()), report["checks"]
    assert json.loads((tmp_path / "data/gqa/prepared.json").read_text())["built"]


def test_vqa_needs_the_minidev_ids_and_missing_files_are_named(demo_all, tmp_path):
    src = tmp_path / "downloads"
    src.mkdir()
    config = task_config("vqa", demo_all, tmp_path)
    with pytest.raises(FileNotFoundError, match="v2_mscoco_train2014_annotations.json"):
        prepare_task("vqa", src, config)
    demo_vqa = demo_all / "vqa"
    for f in demo_vqa.glob("v2_*"):
        shutil.copy(f, src)
    with pytest.raises(FileNotFoundError, match="--minidev"):
        prepare_task("vqa", src, config)
    val = json.loads((demo_vqa / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    minidev = tmp_path / "minidev.txt"
    minidev.write_text("\n".join(str(q["question_id"]) for q in val[: len(val) // 2]) + "\n")
    report = prepare_task("vqa", src, config, minidev=str(minidev), min_count=1)
    assert report["checks"]["val"]["examples"] == len(val) // 2
    assert report["checks"]["train"]["examples"] > 0 and "test" in report["checks"]


def test_missing_images_are_reported_per_split_with_exit_code(demo_all, tmp_path, capsys):
    src = tmp_path / "downloads"
    src.mkdir()
    for name in ("snli_ve_train", "snli_ve_dev", "snli_ve_test"):
        shutil.copy(demo_all / "snli_ve" / f"{name}.jsonl", src)
    with open(src / "snli_ve_dev.jsonl", "a") as f:
        f.write(json.dumps({"Flickr30K_ID": "999", "pairID": "999.jpg#0r1e", "sentence2": "A cube.",
                            "gold_label": "entailment"}) + "\n")
    config = task_config("snli-ve", demo_all, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--task", "snli-ve", "--src", str(src), "--config", str(config)])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "check   val: PROBLEM" in out and "'999'" in out and "check   train: {'examples'" in out


def test_the_default_config_is_found_from_any_working_directory(demo_all, tmp_path, monkeypatch):
    """The project's configs/task/<task>.yaml, not ./configs: run from a folder without one. Data
    paths inside the config (data/gqa/...) stay relative to the working directory."""
    from data_modules.prepare import task_config_path, tasks

    src = tmp_path / "downloads"
    src.mkdir()
    for name in ("train", "val", "testdev"):
        shutil.copy(demo_all / "gqa" / f"{name}_balanced_questions.json", src)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    assert task_config_path("gqa") == ROOT / "configs" / "task" / "gqa.yaml"
    assert "gqa" in tasks() and "vcr" in tasks()
    report = prepare_task("gqa", src)
    assert report["config"] == str(ROOT / "configs" / "task" / "gqa.yaml")
    assert (work / "data/gqa/train_balanced_questions.json").is_symlink() and (work / "data/gqa/ans2label.json").is_file()
    assert "skipped" in report["checks"]  # the config's store data/features/gqa.h5 is not here
    with pytest.raises(FileNotFoundError, match=r"unknown task 'gqb'; the tasks are flickr30k-ir, .*vqa"):
        prepare_task("gqb", src)


def test_an_explicit_config_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    from data_modules.prepare import task_config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("data: {}\n")
    assert task_config_path("gqa", "mine.yaml") == Path("mine.yaml") and Path("mine.yaml").resolve().is_file()
    with pytest.raises(FileNotFoundError, match=r"task config other.yaml does not exist \(relative to the working directory"):
        task_config_path("gqa", "other.yaml")
