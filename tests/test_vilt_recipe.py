"""ViLT's released fine-tuning recipe (configs/vilt/<task>.yaml, from dandelin/ViLT vilt/config.py
task_finetune_<task>_randaug, vilt/modules/vilt_utils.py set_schedule, run.py) resolved through the
CLI on the real stack, the Table 4 study (configs/study/table4.yaml) that runs it, and ViLT's VQA
mini-dev split (data_modules.vqa.vilt_minival). Parsing only: no model is built."""
import json
from pathlib import Path

import pytest
import yaml

from data_modules.vqa import main as vqa_split_main
from data_modules.vqa import read_question_ids, vilt_minival
from lightning_vl.cli import main
from lightning_vl.study.grid import load
from lightning_vl.study.runner import stack_args

ROOT = Path(__file__).resolve().parents[1]
GPUS = 4  # configs/study/table4.yaml: --trainer.devices 4
# task: (head, head lr x, ViLT's batch, training examples, warm-up steps, validations per epoch):
# warm-up = 10% of 10 epochs of floor(examples / batch) optimizer steps
RECIPES = {
    # train2014 + val2014 minus the mini-dev (1,000 images x ~5.29 questions)
    "vqa": ("mlp", 10.0, 256, 443_757 + 214_354 - 5_300, 2550, 0.1),
    "nlvr2": ("paired-mlp", 1.0, 128, 86_373, 675, 1.0),
}


def resolved(task: str, capsys) -> dict:
    stack = stack_args(["configs/task/{task}.yaml", "configs/model/vilt-b32.yaml", "configs/vilt/{task}.yaml"], task)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *[str(ROOT / a) if a.endswith(".yaml") else a for a in stack], "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_the_vilt_recipe_resolves_on_the_real_stack(task, capsys):
    head, head_mult, batch, examples, warmup, val_interval = RECIPES[task]
    config = resolved(task, capsys)
    model, trainer, data = config["model"], config["trainer"], config["data"]["init_args"]
    backbone = model["backbone"]
    assert backbone["class_path"] == "lightning_vl.model.vilt.ViltBackbone"
    sizes = backbone["init_args"]["config"]
    assert (sizes["hidden_size"], sizes["patch_size"], sizes["image_size"]) == (768, 32, 384)  # ViLT-B/32 kept
    assert (sizes["hidden_dropout_prob"], sizes["attention_probs_dropout_prob"]) == (0.1, 0.0)  # drop_rate 0.1
    # learning_rate 1e-4; lr_mult 10 for VQA's classifier, the default 1 for NLVR2's
    assert (model["task"], model["head"], model["lr"], model["head_lr_mult"]) == (task, head, 1e-4, head_mult)
    # set_schedule: AdamW(betas=(0.9, 0.98), eps=1e-8), weight_decay 0.01
    assert (model["betas"], model["eps"], model["weight_decay"]) == ([0.9, 0.98], 1e-8, 0.01)
    assert (trainer["max_epochs"], trainer["max_steps"], trainer["accumulate_grad_batches"]) == (10, -1, 1)
    assert trainer["gradient_clip_val"] is None  # run.py's Trainer clips nothing
    assert (trainer["val_check_interval"], trainer["check_val_every_n_epoch"]) == (val_interval, 1)
    assert data["batch_size"] * GPUS * trainer["accumulate_grad_batches"] == batch
    assert data["max_txt_len"] + 2 == 40 == sizes["max_position_embeddings"]  # max_text_len counts [CLS]/[SEP]
    assert data["tokenizer"].endswith("bert-base-uncased") and data["do_lower_case"] is True
    assert data["features"] is None and data["images"] and data["image_size"] == 384
    assert data["max_boxes"] is None and config["seed_everything"] == 0
    # warmup_steps 0.1 of max_epoch x steps per epoch
    assert model["warmup_steps"] == pytest.approx(0.1 * 10 * (examples // batch), abs=2)


def test_the_vilt_splits_are_vilts(capsys):
    vqa = resolved("vqa", capsys)["data"]["init_args"]  # train + trainable_val -> rest_val
    assert vqa["val_ids"] == "data/vqa/vilt_minival_question_ids.txt"
    assert vqa["train_exclude_ids"] == "data/vqa/vilt_train_exclude_question_ids.txt"
    assert [Path(p).name for p in vqa["train_questions"]] == [
        "v2_OpenEnded_mscoco_train2014_questions.json", "v2_OpenEnded_mscoco_val2014_questions.json"]
    assert vqa["images"] == "data/coco"
    nlvr2 = resolved("nlvr2", capsys)["data"]["init_args"]  # train -> dev
    assert (nlvr2["train_file"], nlvr2["val_file"]) == ("data/nlvr2/train.json", "data/nlvr2/dev.json")
    assert nlvr2["images"] == "data/nlvr2/images"


def test_table4_is_imp_and_random_on_the_vilt_stack():
    study = load(ROOT / "configs/study/table4.yaml")
    assert study.name == "table4" and len(study.cells) == 12
    assert {c.kind for c in study.cells} == {"run"}  # no branches: random pruning is the only control
    assert sorted((c.task, c.spec["method"], c.spec["seed"]) for c in study.cells) == sorted(
        (t, m, s) for t in ("vqa", "nlvr2") for m in ("imp", "random") for s in (0, 1, 2))
    for cell in study.cells:
        assert cell.spec["target_sparsity"] == 0.9
        assert stack_args(cell.spec["stack"], cell.task) == [
            "--config", f"configs/task/{cell.task}.yaml", "--config", "configs/model/vilt-b32.yaml",
            "--config", f"configs/vilt/{cell.task}.yaml"]
        args = cell.spec["args"]
        assert args[args.index("--model.init") + 1] == "pretrained/vilt-b32-mlm"
        assert args[args.index("--trainer.devices") + 1] == str(GPUS)
        assert args[args.index("--trainer.precision") + 1] == "16-mixed"  # ViLT's precision 16


def _vqa_files(folder: Path, split: str, n_images: int, first_id: int) -> tuple[str, str]:
    """Three questions per image: one answerable ("yes"), one outside the vocabulary, one "no"."""
    questions, annotations = [], []
    for image in range(first_id, first_id + n_images):
        for k, answer in enumerate(("yes", "zebra crossing light", "no")):
            qid = image * 10 + k
            questions.append({"question_id": qid, "image_id": image, "question": "is it?"})
            annotations.append({"question_id": qid, "image_id": image, "multiple_choice_answer": answer,
                                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                                            for i in range(10)]})
    q, a = folder / f"{split}_questions.json", folder / f"{split}_annotations.json"
    q.write_text(json.dumps({"questions": questions}))
    a.write_text(json.dumps({"annotations": annotations}))
    return str(q), str(a)


def test_the_vilt_minival_holds_answerable_questions_of_drawn_val_images(tmp_path):
    ans2label = tmp_path / "ans2label.json"
    ans2label.write_text(json.dumps({"yes": 0, "no": 1}))
    val = _vqa_files(tmp_path, "val", 20, 100)
    train = _vqa_files(tmp_path, "train", 5, 500)
    minival, exclude = vilt_minival(val, str(ans2label), [train], images=4, seed=0)
    held = {qid // 10 for qid in minival}
    assert len(held) == 4 and held <= set(range(100, 120))
    assert minival == sorted(i * 10 + k for i in held for k in (0, 2))  # the unanswerable k = 1 is not scored
    unanswerable = {i * 10 + 1 for i in [*range(100, 120), *range(500, 505)]}
    assert set(exclude) == set(minival) | unanswerable
    assert vilt_minival(val, str(ans2label), images=4, seed=0)[0] == minival  # the seed fixes the draw
    assert vilt_minival(val, str(ans2label), images=4, seed=1)[0] != minival
    with pytest.raises(ValueError, match="fewer than 21"):
        vilt_minival(val, str(ans2label), images=21)
    out, excl = tmp_path / "ids" / "minival.txt", tmp_path / "ids" / "exclude.txt"
    vqa_split_main(["--val", *val, "--train", *train, "--ans2label", str(ans2label), "--images", "4",
                    "--out", str(out), "--exclude-out", str(excl)])
    assert read_question_ids(out) == set(minival) and read_question_ids(excl) == set(exclude)
