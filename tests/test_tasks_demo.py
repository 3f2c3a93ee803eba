"""Every task end to end on a small demo world, through the same configs `make finetune` uses:
the data module reads its public-schema demo files, a few training steps run forward and
backward, and validation logs the task's monitor metric."""
import json
from pathlib import Path

import pytest
import yaml

from lightning_vl.cli import main
from lightning_vl.tasks.specs import TASKS

ROOT = Path(__file__).resolve().parents[1]


def demo_config(task: str, world: Path, tmp_path: Path) -> Path:
    """``configs/demo/<task>.yaml`` with ``data/demo/`` pointing at the test's world."""
    text = (ROOT / "configs" / "demo" / f"{task}.yaml").read_text()
    path = tmp_path / f"{task}.yaml"
    path.write_text(text.replace("data/demo/", f"{world}/"))
    return path


def nlvr2_world_args(world: Path) -> list[str]:
    """CLI overrides pointing NLVR2's demo config and ``model.init`` at a test's world."""
    return ["--model.init", str(world / "uniter-tiny.pt"),
            "--data.init_args.train_file", str(world / "nlvr2/train.json"),
            "--data.init_args.val_file", str(world / "nlvr2/dev.json"),
            "--data.init_args.test_file", str(world / "nlvr2/test.json"),
            "--data.init_args.features", str(world / "features.h5"),
            "--data.init_args.tokenizer", str(world / "tokenizer")]


def fit_and_check(task: str, model_args: list[str], world: Path, tmp_path: Path) -> dict:
    """A few training steps and one validation of ``task`` on ``world`` with ``model_args`` (the
    model config and its init); checks the monitor, the loss and data_ids.json; returns the metrics."""
    cfg = yaml.safe_load((ROOT / "configs" / "task" / f"{task}.yaml").read_text())
    assert cfg["model"]["task"] == task
    main([
        "fit",
        "--config", str(ROOT / "configs" / "task" / f"{task}.yaml"),
        *model_args[:2],
        "--config", str(ROOT / "configs" / "demo.yaml"),
        "--config", str(demo_config(task, world, tmp_path)),
        *model_args[2:],
        "--data.init_args.batch_size", "4",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "logs"),
    ])
    metrics = (tmp_path / "logs").rglob("metrics.csv")
    rows = [line for f in metrics for line in f.read_text().splitlines()]
    header = rows[0].split(",")
    monitor = TASKS[task].monitor
    assert monitor in header, f"{monitor} not logged: {header}"
    values = [r.split(",")[header.index(monitor)] for r in rows[1:]]
    logged = [float(v) for v in values if v]
    assert logged and all(0.0 <= v <= 1.0 for v in logged)
    assert "train/loss" in header
    ids = json.loads(next((tmp_path / "logs").rglob("data_ids.json")).read_text())
    assert ids["task"] == task and ids["tokenizer"]["size"] > 5
    return {"header": header, "rows": rows[1:]}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_trains_and_validates_on_the_demo(task, demo_all, tmp_path):
    fit_and_check(task, ["--config", str(ROOT / "configs" / "model" / "uniter-tiny.yaml"),
                         "--model.init", str(demo_all / "uniter-tiny.pt")], demo_all, tmp_path)


LXMERT_TASKS = [(task, None) for task in sorted(TASKS)] + [("nlvr2", "paired"), ("nlvr2", "paired-mlp")]


@pytest.mark.parametrize("task,head", LXMERT_TASKS)
def test_task_trains_and_validates_on_lxmert(task, head, demo_all, tmp_path):
    """Every task through LXMERT-tiny from a random init (the demo's sizes: same vocabulary and
    region features); NLVR2 with each of its heads (``paired-mlp``: LXMERT's own classifier)."""
    args = ["--config", str(ROOT / "configs" / "model" / "lxmert-tiny.yaml"), "--model.init", "null"]
    fit_and_check(task, args + (["--model.head", head] if head else []), demo_all, tmp_path)


@pytest.mark.parametrize("task,vocab", [("nlvr2", 100), ("vcr", 600)])
def test_lxmerts_word_table_is_checked_against_the_tokenizer(task, vocab, demo_all, tmp_path):
    """``VLModule.setup`` refuses a tokenizer the LXMERT word table cannot hold (NLVR2: fewer rows
    than tokens) and, for a task with its own word rows (VCR), a table that is not exactly the tokenizer."""
    with pytest.raises(ValueError, match=r"model\.backbone\.init_args\.config\.vocab_size"):
        fit_and_check(task, ["--config", str(ROOT / "configs" / "model" / "lxmert-tiny.yaml"), "--model.init", "null",
                             "--model.backbone.init_args.config.vocab_size", str(vocab)], demo_all, tmp_path)
