"""UNITER's pre-training task, model side: heads with UNITER's keys (a released checkpoint loads
with no missing or unexpected key), tied weights, each objective's loss by hand, WRA by IPOT, and
the layouts our pre-trained models are exported in."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from lightning_vl.model.export import export
from lightning_vl.training.module import VLModule
from lightning_vl.tasks.optimal_transport import cosine_cost, ipot_plan, ot_distance
from lightning_vl.tasks.pretraining import MAX_COUNT, hard_region_labels, mrc_kl, objective_loss
from lightning_vl.tasks.specs import DOWNSTREAM, TASKS

from .synthetic import TINY, RandomPairs, collate_pairs
from .uniter_reference import make_uniter_state_dict, released_checkpoint_extras

CLASSES = [f"class {i}" for i in range(9)]


def pretrain_model(**kw):
    torch.manual_seed(0)
    return VLModule(task="pretrain", uniter=TINY, labels=CLASSES, lr=1e-3, warmup_steps=1, **kw)


def base_batch(rows=4, seed=0):
    """UNITER inputs of ``rows`` image-text rows (tests.synthetic's pairs, one row per image)."""
    items = RandomPairs(rows, TINY, seed=seed).items
    batch = collate_pairs(items)
    batch["txt_lens"] = [int((r != 0).sum()) for r in batch["input_ids"]]
    batch["num_bbs"] = [int(m.sum()) - t for m, t in zip(batch["attn_masks"], batch["txt_lens"])]
    batch["ids"] = [str(i) for i in range(len(batch["input_ids"]))]
    batch.pop("img_type_ids")
    return batch


def with_objective(objective, seed=0):
    batch = base_batch(seed=seed)
    g = torch.Generator().manual_seed(seed)
    rows, lt = batch["input_ids"].shape
    batch["objective"] = objective
    if objective == "mlm":
        labels = torch.full_like(batch["input_ids"], -1)
        labels[:, 1] = batch["input_ids"][:, 1]
        batch["txt_labels"] = labels
        batch["input_ids"] = batch["input_ids"].clone()
        batch["input_ids"][:, 1] = 3
    elif objective in ("mrfr", "mrc", "mrckl"):
        masks = torch.zeros(batch["img_feat"].shape[:2], dtype=torch.bool)
        masks[:, 0] = True
        batch["feat_targets"] = batch["img_feat"][masks].clone()
        batch["img_feat"] = batch["img_feat"].masked_fill(masks[..., None], 0.0)
        batch["img_masks"] = masks
        tgt = torch.zeros_like(batch["attn_masks"], dtype=torch.bool)
        for i, t in enumerate(batch["txt_lens"]):
            tgt[i, t] = True  # the first region of each row follows its text
        batch["img_mask_tgt"] = tgt
        batch["label_targets"] = torch.softmax(torch.randn(int(masks.sum()), len(CLASSES), generator=g), -1)
    elif objective == "itm":
        batch["targets"] = torch.tensor([1, 0] * (rows // 2))
    return batch


@pytest.mark.parametrize("objective", ["mlm", "mrfr", "mrc", "mrckl", "itm"])
def test_every_objective_trains_every_head_parameter_under_ddp_rules(objective):
    """One objective per step, yet every trainable parameter receives a gradient (zero where unused),
    so DDP needs no unused-parameter search; the loss is finite and moves the used head."""
    model = pretrain_model()
    loss = model.training_loss(with_objective(objective))
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    used = {"mlm": "cls", "mrfr": "feat_regress", "mrc": "region_classifier", "mrckl": "region_classifier",
            "itm": "itm_output"}[objective]
    assert not missing, missing
    assert any(p.grad.abs().sum() > 0 for n, p in model.head.named_parameters() if n.startswith(used))


def test_tied_weights_are_one_tensor_through_training_and_rewinding():
    model = pretrain_model()
    words, img_linear = model.uniter.embeddings.word_embeddings.weight, model.uniter.img_embeddings.img_linear.weight
    assert model.head.cls.predictions.decoder.weight is words and model.head.feat_regress.weight is img_linear
    assert model.head.cls.predictions.decoder.weight.data_ptr() == words.data_ptr()
    names = [n for n, _ in model.named_parameters()]
    assert "head.cls.predictions.decoder.weight" not in names and "head.feat_regress.weight" not in names
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(state["head.cls.predictions.decoder.weight"], state["uniter.embeddings.word_embeddings.weight"])
    with torch.no_grad():
        words.add_(1.0)
    model.load_state_dict(state)  # an IMP rewind: both keys are written into the one tensor
    assert model.head.cls.predictions.decoder.weight is words and torch.equal(words, state["uniter.embeddings.word_embeddings.weight"])
    assert not model.is_head_parameter("head.cls.predictions.decoder.weight")  # rewinds with the core
    assert model.is_head_parameter("head.itm_output.weight")


def test_untied_word_embeddings_are_a_separate_decoder():
    """``tie_word_embeddings: false`` (the demo): the MLM decoder is its own parameter, a head
    parameter, and an MLM step leaves the rows of words that never appear untouched."""
    model = pretrain_model(head_options={"tie_word_embeddings": False})
    words, decoder = model.uniter.embeddings.word_embeddings.weight, model.head.cls.predictions.decoder.weight
    assert decoder is not words and decoder.data_ptr() != words.data_ptr()
    assert model.head.feat_regress.weight is model.uniter.img_embeddings.img_linear.weight  # MRFR stays tied
    assert model.is_head_parameter("head.cls.predictions.decoder.weight")
    batch = with_objective("mlm")
    model.training_loss(batch).backward()
    unseen = torch.ones(words.size(0), dtype=torch.bool)
    unseen[batch["input_ids"].unique()] = False
    assert decoder.grad.abs().sum() > 0 and words.grad[unseen].abs().sum() == 0


def test_mrc_kl_by_hand():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    p = torch.softmax(logits, -1)
    hand = (soft * (soft.log() - p.log())).sum() / soft.numel()  # KL(soft || p), element mean
    assert float(mrc_kl(logits, soft)) == pytest.approx(float(hand), rel=1e-6)
    assert hard_region_labels(torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])).tolist() == [1, 2]  # 0 excluded
    out = {"objective": "mrckl", "logits": logits, "targets": soft}
    assert float(objective_loss(out)) == pytest.approx(float(hand), rel=1e-6)


def test_ipot_plan_has_uniform_marginals_and_the_distance_flows_through_the_cost_only():
    g = torch.Generator().manual_seed(0)
    txt = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    img = torch.randn(3, 5, 16, generator=g, requires_grad=True)
    txt_pad = torch.zeros(3, 7, dtype=torch.bool)
    txt_pad[1, 4:] = True
    img_pad = torch.zeros(3, 5, dtype=torch.bool)
    img_pad[2, 2:] = True
    plan = ipot_plan(cosine_cost(txt, img, txt_pad, img_pad), txt_pad, img_pad)
    assert not plan.requires_grad
    for b in range(3):
        m, n = int((~txt_pad[b]).sum()), int((~img_pad[b]).sum())
        torch.testing.assert_close(plan[b].sum(1)[:m], torch.full((m,), 1 / m), atol=1e-3, rtol=0)
        torch.testing.assert_close(plan[b].sum(0)[:n], torch.full((n,), 1 / n), atol=1e-3, rtol=0)
        assert float(plan[b][txt_pad[b]].abs().sum() + plan[b][:, img_pad[b]].abs().sum()) == 0.0
    distance = ot_distance(txt, img, txt_pad, img_pad)
    grad_txt, = torch.autograd.grad(distance.sum(), txt)
    fixed = (cosine_cost(txt, img, txt_pad, img_pad) * plan).sum()  # the plan as a constant
    expected, = torch.autograd.grad(fixed, txt)
    torch.testing.assert_close(grad_txt, expected)


def test_a_released_base_checkpoint_loads_with_its_pretraining_heads(tmp_path):
    """UNITER's 230-tensor uniter-base.pt: no missing and no unexpected key."""
    sd = released_checkpoint_extras(make_uniter_state_dict())
    assert len(sd) == 230
    torch.save(sd, tmp_path / "uniter-base.pt")
    from lightning_vl.model.uniter import UniterConfig

    model = VLModule(task="pretrain", uniter=UniterConfig(), labels=[str(i) for i in range(1601)],
                     init=str(tmp_path / "uniter-base.pt"))
    report = model.init_report
    assert report.missing == [] and report.unexpected == []
    state = model.state_dict()
    assert torch.equal(state["head.region_classifier.net.3.weight"], sd["region_classifier.net.3.weight"])
    assert torch.equal(state["head.cls.predictions.decoder.weight"], sd["uniter.embeddings.word_embeddings.weight"])
    assert set(model.released_state_dict()) == set(sd)


def test_our_pretrained_model_loads_into_every_task_as_a_released_file_does(tmp_path):
    model = pretrain_model()
    path = export(model, tmp_path / "pretrained.pt", "uniter")
    saved = torch.load(path, weights_only=True)
    assert "itm_output.weight" in saved and "cls.predictions.bias" in saved
    for task in DOWNSTREAM:
        labels = None if TASKS[task].labels else ["a", "b", "c"]
        target = VLModule(task=task, uniter=TINY, labels=labels, init=str(path))
        assert not [k for k in target.init_report.missing if k.startswith("uniter.")], task
        if task.startswith("flickr30k"):  # UNITER's init_output: rank head from the ITM match row
            assert torch.equal(target.head.rank_output.weight.detach(), saved["itm_output.weight"][1:2])


def test_a_text_only_model_exports_as_a_bert_folder_that_loads_as_theta_prime(tmp_path):
    model = pretrain_model()
    folder = export(model, tmp_path / "bert-tiny", "bert")
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    target = VLModule(task="nlvr2", uniter=TINY, init=str(folder))
    ours, theirs = model.state_dict(), target.state_dict()
    for k in ("uniter.encoder.layer.1.output.dense.weight", "uniter.embeddings.position_embeddings.weight",
              "uniter.pooler.dense.weight"):
        assert torch.equal(ours[k], theirs[k]), k
    assert not torch.equal(ours["uniter.img_embeddings.img_linear.weight"],
                           theirs["uniter.img_embeddings.img_linear.weight"])  # BERT has no image embeddings
    from transformers import BertConfig

    assert BertConfig.from_pretrained(folder).hidden_size == TINY.hidden_size


def test_text_only_batches_run_the_core_without_images():
    model = pretrain_model()
    batch = with_objective("mlm")
    for k in ("img_feat", "img_pos_feat", "gather_index"):
        batch.pop(k)
    lt = batch["input_ids"].shape[1]
    batch["attn_masks"] = (batch["input_ids"] != 0).long()[:, :lt]
    assert torch.isfinite(model.training_loss(batch))


def test_summaries_head_variant_adds_the_demo_objectives():
    model = pretrain_model(head="uniter+summaries")
    batch = with_objective("itm")
    batch["objective"] = "summary"
    batch["presence"] = torch.zeros(len(batch["ids"]), len(CLASSES))
    batch["counts"] = torch.tensor([1, 2, 30, 0] * 2)
    assert torch.isfinite(model.training_loss(batch))
    assert model.head.summary_output.out_features == len(CLASSES) + MAX_COUNT + 1
    plain = pretrain_model()
    assert not hasattr(plain.head, "bow_output")


# ---- end to end on the demo world ---------------------------------------------------------------
def pretrain_args(world, tmp_path):
    from pathlib import Path

    from .test_tasks_demo import ROOT, demo_config

    return ["--config", str(ROOT / "configs/task/pretrain.yaml"), "--config", str(ROOT / "configs/model/uniter-tiny.yaml"),
            "--config", str(ROOT / "configs/demo.yaml"), "--config", str(demo_config("pretrain", world, tmp_path)),
            "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "8",
            "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.enable_progress_bar", "false",
            "--model.init", "null"]  # configs/demo.yaml's data/demo/uniter-tiny.pt is not there on a fresh clone


@pytest.mark.slow
def test_make_pretrain_path_text_only_then_vl_export_loads(demo_all, tmp_path):
    """The two stages of `make pretrain`: text-only MLM → a BERT folder (θ'_0), then UNITER's
    objectives from it → a released-layout θ_0 with a training record."""
    from lightning_vl.cli import main

    from .test_tasks_demo import ROOT

    args = pretrain_args(demo_all, tmp_path)
    main(["fit", *args, "--config", str(ROOT / "configs/demo/pretrain-text.yaml"), "--model.init", "null",
          "--trainer.callbacks+=lightning_vl.model.export.ExportWeights", "--trainer.callbacks.path", str(tmp_path / "bert"),
          "--trainer.callbacks.layout", "bert"])
    assert (tmp_path / "bert" / "model.safetensors").exists() and (tmp_path / "bert" / "training.json").exists()
    main(["fit", *args, "--model.init", str(tmp_path / "bert"),
          "--trainer.callbacks+=lightning_vl.model.export.ExportWeights", "--trainer.callbacks.path", str(tmp_path / "u.pt")])
    record = json.loads((tmp_path / "u.json").read_text())
    for key in ("val/mlm_acc", "val/itm_acc", "val/score"):  # the demo recipe's objectives (no region ones)
        assert key in record["metrics"], key
    state = torch.load(tmp_path / "u.pt", weights_only=True)
    assert "itm_output.weight" in state and "region_classifier.net.3.weight" in state


@pytest.mark.slow
def test_prune_pretrain_and_transfer_its_ticket_to_a_task(demo_all, tmp_path):
    """make prune TASK=pretrain SPARSITY=0.3 on the demo; its round-3 mask fine-tunes NLVR2."""
    from lightning_vl.cli import main

    from .test_branches import task_args

    main(["prune", *pretrain_args(demo_all, tmp_path), "--imp.target_sparsity", "0.3",
          "--imp.root", str(tmp_path / "runs"), "--imp.wandb", "disabled"])
    (run,) = list((tmp_path / "runs" / "pretrain").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert [round(r["sparsity"], 2) for r in summary] == [0.0, 0.1, 0.2, 0.3]
    assert all(r["monitor"] == "val/score" and 0 <= r["metric"] <= 1 for r in summary)
    main(["branch", *task_args("nlvr2", demo_all, tmp_path), "--from", str(run / "round_03"), "--kind", "transfer",
          "--branch.wandb", "disabled"])
    (branch,) = list((run / "round_03" / "branches").iterdir())
    result = json.loads((branch / "metrics.json").read_text())
    assert result["task"] == "nlvr2" and result["source_task"] == "pretrain" and result["metric"] is not None
    assert abs(result["sparsity"] - 0.3) < 1e-3
