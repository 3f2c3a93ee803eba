"""ViLT on the demo world: the pre-training corpus drawn into images.h5, pixel pre-training batches
(MLM + ITM, ``configs/demo/pretrain-vilt.yaml``) and one pre-training step of ViLT-tiny on them, and a
two-round lottery of ViLT-tiny on the drawn NLVR2 scenes through the CLI (``configs/demo/pixels/vilt.yaml``,
what ``make prune BACKBONE=vilt`` stacks)."""
import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from data_modules.demo import generate_demo
from data_modules.images import ImageStore
from data_modules.pretrain import PretrainDataModule
from lightning_vl.cli import main
from lightning_vl.model.vilt import ViltBackbone, ViltBackboneConfig, prunable_groups_for
from lightning_vl.pruning import Mask
from lightning_vl.tasks.pretraining import pretraining_loss
from lightning_vl.training.module import VLModule

ROOT = Path(__file__).resolve().parents[1]


def config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def tiny() -> ViltBackboneConfig:
    return ViltBackboneConfig(**config("model/vilt-tiny.yaml")["model"]["backbone"]["init_args"]["config"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The demo's pre-training corpus alone, small (48 + 16 scenes), drawn too."""
    out = tmp_path_factory.mktemp("vilt-corpus")
    return Path(generate_demo(out, seed=2, n_train=48, n_dev=16, tasks=("pretrain",), vocab_size=512)["features"]).parent


def pixel_pretrain_data(world: Path, **overrides) -> PretrainDataModule:
    """configs/demo/pretrain.yaml's data with configs/demo/pretrain-vilt.yaml's on top, at ``world``."""
    args = {**config("demo/pretrain.yaml")["data"]["init_args"], **config("demo/pretrain-vilt.yaml")["data"]["init_args"]}
    args = {k: (v.replace("data/demo/", f"{world}/") if isinstance(v, str) else v) for k, v in args.items()}
    args["train_files"] = [str(world / "pretrain/captions_train.jsonl")]
    args["val_files"] = [str(world / "pretrain/captions_val.jsonl")]
    args.update(batch_size=8, eval_batch_size=8, val_examples=None, **overrides)
    return PretrainDataModule(**args)


def test_the_corpus_scenes_are_drawn_keyed_as_its_store(corpus):
    store = ImageStore(corpus / "images.h5")
    with h5py.File(corpus / "pretrain/features.h5") as f:
        keys = list(f["img_ids"].asstr()[:])
    assert store.ids == keys and len(keys) == 48 + 16  # every scene, in the corpus's order
    assert tuple(store.get(keys[0]).shape) == (3, 128, 160)


def test_pixel_pretraining_batches_mlm_and_itm(corpus):
    data = pixel_pretrain_data(corpus)
    data.setup("fit")
    assert data.labels is None and data.active_objectives == ("mlm", "itm")
    batch = next(iter(data.train_dataloader()))
    rows = len(batch["ids"])
    assert batch["objective"] == "joint" and set(batch["parts"]) == {"mlm", "itm"} and rows == 8
    assert batch["pixel_values"].dtype == torch.float32 and tuple(batch["pixel_values"].shape) == (rows, 3, 128, 160)
    assert batch["pixel_mask"].dtype == torch.int64 and bool((batch["pixel_mask"] == 1).all())
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1  # mean = std = 0.5
    assert "img_feat" not in batch and "num_bbs" not in batch
    mlm, itm = batch["parts"]["mlm"], batch["parts"]["itm"]
    assert mlm["txt_labels"].shape == (len(mlm["rows"]), batch["input_ids"].size(1))
    assert (mlm["txt_labels"] != -1).any() and set(itm["targets"].tolist()) <= {0, 1}
    # validation: one objective per batch, every caption
    kinds = [b["objective"] for b in data.val_dataloader()]
    assert kinds == ["mlm", "mlm", "itm", "itm"]


def test_an_itm_mismatch_shows_another_examples_image(corpus):
    data = pixel_pretrain_data(corpus, itm_neg_prob=1.0, itm_hard_neg_prob=0.0)
    data.setup("fit")
    maker = data.batch_maker("train")
    batch = maker.build("itm", [0, 1], [np.random.default_rng(k) for k in range(2)])
    assert batch["targets"].tolist() == [0, 0]
    own = maker.build("mlm", [0, 1], [np.random.default_rng(k) for k in range(2)])
    for r in range(2):
        assert not torch.equal(batch["pixel_values"][r], own["pixel_values"][r])


def test_region_objectives_are_refused_on_images(corpus):
    for objectives in ({"mlm": 1, "mrfr": 1}, {"itm": 1, "summary": 1}, {"mrckl": 1}):
        with pytest.raises(ValueError, match="learn from regions"):
            pixel_pretrain_data(corpus, objectives=objectives)


def test_one_pretraining_step_of_vilt_on_pixel_batches(corpus):
    data = pixel_pretrain_data(corpus)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    options = config("demo/pretrain-vilt.yaml")["model"]
    model = VLModule(task="pretrain", backbone=ViltBackbone(tiny()), labels=data.labels, head=options["head"],
                     head_options=options["head_options"], lr=1e-3, warmup_steps=1)
    assert model.backbone.pretraining_ties() == {}
    assert model.head.feat_regress is None and model.head.region_classifier is None  # no regions: no region heads
    out = model(batch)
    assert set(out["parts"]) == {"mlm", "itm"}
    loss = pretraining_loss(out, batch)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    for name in ("vilt.embeddings.patch_embeddings.projection.weight", "vilt.encoder.layer.0.attention.attention.query.weight",
                 "head.cls.predictions.transform.dense.weight", "head.itm_output.weight"):
        assert grads[name].abs().sum() > 0, name
    metrics = model.val_metrics
    metrics.update(*model.spec.metric_inputs({k: v for k, v in out.items()}, batch))
    values = metrics.compute()
    assert {"val/mlm_acc", "val/itm_acc"} <= set(values) and "val/mrc_acc" not in values


def test_a_vilt_lottery_on_the_drawn_nlvr2_scenes(demo_world, tmp_path):
    """`make prune TASK=nlvr2 BACKBONE=vilt`'s stack on the test world, random init, two rounds."""
    pixels = (ROOT / "configs/demo/pixels/vilt.yaml").read_text().replace("data/demo/", f"{demo_world}/")
    (tmp_path / "pixels.yaml").write_text(pixels)
    main(["prune", "--config", str(ROOT / "configs/task/nlvr2.yaml"), "--config", str(ROOT / "configs/model/vilt-tiny.yaml"),
          "--config", str(ROOT / "configs/demo.yaml"), "--config", str(ROOT / "configs/demo/nlvr2.yaml"),
          "--config", str(tmp_path / "pixels.yaml"), "--model.init", "null",
          "--data.init_args.train_file", str(demo_world / "nlvr2/train.json"),
          "--data.init_args.val_file", str(demo_world / "nlvr2/dev.json"),
          "--data.init_args.test_file", str(demo_world / "nlvr2/test.json"),
          "--data.init_args.tokenizer", str(demo_world / "tokenizer"),
          "--data.init_args.batch_size", "8", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
          "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path / "logs"),
          "--imp.target_sparsity", "0.1", "--imp.root", str(tmp_path / "runs"), "--imp.wandb", "disabled"])
    (run,) = list((tmp_path / "runs" / "nlvr2").iterdir())
    with open(run / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [round(float(r["sparsity"]), 3) for r in rows] == [0.0, 0.1]
    assert all(0.0 <= float(r["val/acc"]) <= 1.0 for r in rows)
    expected = {f"vilt.{k}": tuple(g) for k, g in prunable_groups_for(tiny()).items()}
    mask = Mask.load(run / "round_01" / "mask.pt")
    assert mask.recorded_groups == expected and len(expected) == tiny().num_hidden_layers * 6
    assert mask.sparsity == pytest.approx(0.1, abs=1e-3)
