"""LXMERT's released fine-tuning recipe (configs/lxmert/<task>.yaml, from airsplay/lxmert
run/<task>_finetune.bash, src/tasks/<task>.py, src/lxrt/optimization.py) resolved through the CLI on
the real stack, and the Table 3 study (configs/study/table3.yaml) that runs it. Parsing only: no
model is built."""
from pathlib import Path

import pytest
import yaml

from lightning_vl.cli import main
from lightning_vl.study.grid import load
from lightning_vl.study.runner import stack_args

ROOT = Path(__file__).resolve().parents[1]
GPUS = 4  # configs/study/table3.yaml: --trainer.devices 4
# task: (lr, head, training examples, warm-up steps): 10% of 4 epochs of floor(examples / 32) batches
RECIPES = {
    "vqa": (5e-5, "mlp", 443_757 + 214_354 - 26_500, 7900),  # minus LXMERT's minival (≈ 26.5k, 5,000 images)
    "gqa": (1e-5, "mlp", 943_000 + 132_062, 13438),  # train + val balanced
    "nlvr2": (5e-5, "paired-mlp", 86_373, 1080),
}


def resolved(task: str, capsys) -> dict:
    stack = stack_args(["configs/task/{task}.yaml", "configs/model/lxmert-base.yaml", "configs/lxmert/{task}.yaml"], task)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *[str(ROOT / a) if a.endswith(".yaml") else a for a in stack], "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_the_lxmert_recipe_resolves_on_the_real_stack(task, capsys):
    lr, head, examples, warmup = RECIPES[task]
    config = resolved(task, capsys)
    model, trainer, data = config["model"], config["trainer"], config["data"]["init_args"]
    assert model["backbone"]["class_path"] == "lightning_vl.model.lxmert.LxmertBackbone"
    assert model["backbone"]["init_args"]["config"]["l_layers"] == 9  # lxmert-base, not the task's UNITER
    assert (model["task"], model["head"], model["lr"], model["head_lr_mult"]) == (task, head, lr, 1.0)
    # BertAdam's b1, b2, e and weight decay (src/lxrt/optimization.py)
    assert (model["betas"], model["eps"], model["weight_decay"]) == ([0.9, 0.999], 1e-6, 0.01)
    assert (trainer["max_epochs"], trainer["max_steps"], trainer["accumulate_grad_batches"]) == (4, -1, 1)
    assert trainer["gradient_clip_val"] == 5.0  # clip_grad_norm_(…, 5.) in src/tasks/<task>.py
    assert (trainer["val_check_interval"], trainer["check_val_every_n_epoch"]) == (1.0, 1)  # once per epoch
    assert data["batch_size"] * GPUS == 32
    assert data["max_txt_len"] + 2 == 20  # LXMERT's max_seq_length counts [CLS] and [SEP]
    assert data["tokenizer"].endswith("bert-base-uncased") and data["do_lower_case"] is True
    assert data["max_boxes"] == 36 and config["seed_everything"] == 9595
    # warmup=0.1 of t_total = 4 epochs x floor(examples / 32) batches (drop_last)
    assert model["warmup_steps"] == pytest.approx(0.1 * 4 * (examples // 32), abs=10)


def test_the_lxmert_splits_are_lxmerts(capsys):
    vqa = resolved("vqa", capsys)["data"]["init_args"]  # train + nominival -> minival
    assert vqa["val_ids"] == vqa["train_exclude_ids"] == "data/vqa/lxmert_minival_question_ids.txt"
    assert [Path(p).name for p in vqa["train_questions"]] == [
        "v2_OpenEnded_mscoco_train2014_questions.json", "v2_OpenEnded_mscoco_val2014_questions.json"]
    gqa = resolved("gqa", capsys)["data"]["init_args"]  # train + valid -> testdev
    assert gqa["train_file"] == ["data/gqa/train_balanced_questions.json", "data/gqa/val_balanced_questions.json"]
    assert gqa["val_file"] == gqa["test_file"] == "data/gqa/testdev_balanced_questions.json"
    nlvr2 = resolved("nlvr2", capsys)["data"]["init_args"]  # train -> valid (dev)
    assert (nlvr2["train_file"], nlvr2["val_file"]) == ("data/nlvr2/train.json", "data/nlvr2/dev.json")


def test_table3_is_imp_and_random_on_the_lxmert_stack():
    study = load(ROOT / "configs/study/table3.yaml")
    assert study.name == "table3" and len(study.cells) == 18
    assert {c.kind for c in study.cells} == {"run"}  # no branches: random pruning is the only control
    assert sorted((c.task, c.spec["method"], c.spec["seed"]) for c in study.cells) == sorted(
        (t, m, s) for t in ("vqa", "gqa", "nlvr2") for m in ("imp", "random") for s in (0, 1, 2))
    for cell in study.cells:
        assert cell.spec["target_sparsity"] == 0.9
        assert stack_args(cell.spec["stack"], cell.task) == [
            "--config", f"configs/task/{cell.task}.yaml", "--config", "configs/model/lxmert-base.yaml",
            "--config", f"configs/lxmert/{cell.task}.yaml"]
        args = cell.spec["args"]
        assert args[args.index("--model.init") + 1] == "pretrained/lxmert-base-uncased"
        assert args[args.index("--trainer.devices") + 1] == str(GPUS)
