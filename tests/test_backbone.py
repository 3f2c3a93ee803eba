"""The backbone seam: a fake two-stream backbone through VLModule, the lottery and adversarial
training; masks' group records (round trip, old masks' fallback, what overlap reads); UNITER's
unchanged configuration dumps."""
from dataclasses import dataclass
from typing import Optional

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_vl.analysis.overlap import OverlapAnalysis
from lightning_vl.lottery import ImpConfig, LotteryRunner, RunFolder
from lightning_vl.model.backbone import Backbone, BackboneOutput, HeadSizes, PrunableGroup
from lightning_vl.pruning import Mask, PackedMask
from lightning_vl.training.adversarial import AdversarialConfig, adversarial_loss
from lightning_vl.training.module import VLModule

from .synthetic import TINY, RandomPairsDataModule, collate_pairs, RandomPairs, tiny_trainer


@dataclass
class FakeConfig:
    vocab_size: int = 64
    hidden_size: int = 16
    img_dim: int = 16
    layers: int = 2


class FakeBackbone(Backbone):
    """Two streams (text and image Linear stacks), joined in the batch's ``gather_index`` layout."""

    prefix = "fake"
    config_class = FakeConfig

    def __init__(self, config: FakeConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.words = nn.Embedding(config.vocab_size, h)
        self.regions = nn.Linear(config.img_dim, h)
        self.text = nn.ModuleList(nn.Linear(h, h) for _ in range(config.layers))
        self.image = nn.ModuleList(nn.Linear(h, h) for _ in range(config.layers))
        self.pool = nn.Linear(h, h)

    def head_sizes(self) -> HeadSizes:
        return HeadSizes(self.config.hidden_size, 2, 0.0, 0.0, vocab_size=self.config.vocab_size,
                         img_dim=self.config.img_dim)

    def forward(self, batch, txt_delta=None, img_delta=None, pool=True) -> BackboneOutput:
        txt = self.words(batch["input_ids"])
        if txt_delta is not None:
            txt = txt + txt_delta
        feat = batch["img_feat"] if img_delta is None else batch["img_feat"] + img_delta
        img = self.regions(feat)
        for t, i in zip(self.text, self.image):
            txt, img = torch.tanh(t(txt)), torch.tanh(i(img))
        joint = torch.cat([txt, img], 1)
        seq = joint.gather(1, batch["gather_index"].unsqueeze(-1).expand(-1, -1, joint.size(-1)))
        return BackboneOutput(seq, batch["attn_masks"], torch.tanh(self.pool(seq[:, 0])) if pool else None)

    def prunable_groups(self, parts=("encoder",)) -> dict[str, PrunableGroup]:
        out = {}
        for part in parts:
            if part != "encoder":
                raise ValueError(f"unknown prunable part {part!r}; expected encoder")
            for i in range(self.config.layers):
                out[f"text.{i}.weight"] = PrunableGroup("text", i, "ffn_in")
                out[f"image.{i}.weight"] = PrunableGroup("image", i, "ffn_in")
        return out

    @classmethod
    def read_init(cls, spec: str, seed: int = 0):
        return torch.load(spec, weights_only=True)

    def grow_embeddings(self, type_rows_from, extra_word_rows, state=None) -> None:
        pass  # no type table: NLVR2's third type is nothing to this backbone

    def freeze_unused(self, pooled: bool, region_masks: bool, sequence: bool = True) -> None:
        self.pool.requires_grad_(pooled)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.words

    @property
    def img_dim(self) -> int:
        return self.config.img_dim


def fake_module(**kwargs) -> VLModule:
    return VLModule(backbone=FakeBackbone(FakeConfig()), lr=1e-3, warmup_steps=1, **kwargs)


def a_batch():
    return collate_pairs([RandomPairs(2, TINY)[i] for i in range(2)])


def test_a_fake_backbone_runs_every_head_input_and_names_its_parameters():
    model = fake_module()
    assert model.backbone is model.fake and all(k.startswith(("fake.", "head.")) for k in model.state_dict())
    logits = model(a_batch())
    assert logits.shape == (2, 2)
    assert model.prunable_parameter_names() == list(model.prunable_groups())
    assert model.prunable_groups()["fake.image.1.weight"] == ("image", 1, "ffn_in")
    assert not model.fake.pool.weight.requires_grad  # paired-attn reads no pooled output
    # the checkpoint's hyper-parameters hold the backbone as plain data, and rebuild it
    spec = model.hparams["backbone"]
    assert spec["class_path"].endswith("test_backbone.FakeBackbone") and spec["init_args"]["config"]["layers"] == 2
    again = VLModule(backbone=spec)
    assert type(again.backbone) is FakeBackbone and again.backbone.config == FakeConfig()


def test_adversarial_training_reaches_a_fake_backbone_through_its_deltas():
    model = fake_module(adversarial=AdversarialConfig(enabled=True, modality="image+text", steps=2))
    loss, parts = adversarial_loss(model, a_batch(), model.adversarial)
    loss.backward()
    assert parts["kl"] > 0 and model.fake.words.weight.grad is not None and model.fake.regions.weight.grad is not None


def test_the_lottery_records_the_backbones_groups_in_every_mask(tmp_path):
    pl.seed_everything(0, verbose=False)
    runner = LotteryRunner(ImpConfig(wandb="disabled", target_sparsity=0.2), fake_module(), RandomPairsDataModule(),
                           lambda d, cb: tiny_trainer(2, callbacks=cb), RunFolder(tmp_path / "run"), seed=7)
    runner.run()
    mask = Mask.load(runner.folder.mask_path(2))
    assert mask.recorded_groups == {k: tuple(g) for k, g in runner.module.prunable_groups().items()}
    assert set(mask.group_sparsity()) == {"text.0", "text.1", "image.0", "image.1"}
    analysis = OverlapAnalysis.compute({"a": mask, "b": Mask.load(runner.folder.mask_path(1))})
    assert analysis.groups("layer") == ["image.0", "image.1", "text.0", "text.1"]
    assert analysis.groups("type") == ["FFN-in"]


def test_groups_round_trip_and_old_masks_fall_back_to_uniters_names(tmp_path):
    names = ["uniter.encoder.layer.0.attention.self.query.weight", "uniter.encoder.layer.1.output.dense.weight",
             "uniter.pooler.dense.weight"]
    g = torch.Generator().manual_seed(0)
    tensors = {n: torch.rand(4, 8, generator=g) > 0.5 for n in names}
    groups = {names[0]: ("text", 0, "query"), names[1]: ("cross", 1, "ffn_out"), names[2]: ("text", -1, "pooler")}
    Mask(tensors, groups).save(tmp_path / "grouped.pt")
    Mask(tensors).save(tmp_path / "old.pt")
    assert Mask.load(tmp_path / "grouped.pt").groups == groups == PackedMask.load(tmp_path / "grouped.pt").groups
    old = torch.load(tmp_path / "old.pt", weights_only=True)
    new = torch.load(tmp_path / "grouped.pt", weights_only=True)
    assert "groups" not in old and {k: v.numpy().tobytes() for k, v in old["packed"].items()} == {
        k: v.numpy().tobytes() for k, v in new["packed"].items()}  # only the groups entry is new
    legacy = Mask.load(tmp_path / "old.pt")
    assert legacy.recorded_groups is None
    assert legacy.groups == {names[0]: ("joint", 0, "query"), names[1]: ("joint", 1, "ffn_out"),
                             names[2]: ("joint", -1, "pooler")}
    assert set(legacy.group_sparsity()) == {0, 1, "other"}
    assert OverlapAnalysis.compute({"a": PackedMask.load(tmp_path / "grouped.pt")}).groups("layer") == [
        "cross.1", "text.0", "other"]
    with pytest.raises(ValueError, match="groups do not match"):
        Mask(tensors, {names[0]: ("joint", 0, "query")})
    bad = dict(new, groups={**new["groups"], names[0]: ["joint", "zero", "query"]})
    with pytest.raises(ValueError, match="expected \\(stream, layer, part\\)"):
        Mask.from_state_dict(bad)


def test_uniter_groups_match_the_names_old_masks_derive_them_from():
    model = VLModule(uniter=TINY)
    groups = model.prunable_groups(("encoder", "pooler", "img_linear"))
    from lightning_vl.pruning.mask import legacy_group
    assert {n: legacy_group(n) for n in groups} == {n: tuple(g) for n, g in groups.items()}
    assert len(groups) == 6 * TINY.num_hidden_layers + 2


def test_backbone_is_left_out_of_uniter_dumps_and_selects_a_class(tmp_path):
    from lightning_vl.cli import VLCli
    from pytorch_lightning import LightningDataModule

    class NoInit(VLCli):
        def instantiate_classes(self):
            pass

    base = ["--model.uniter.hidden_size", "32", "--model.uniter.num_attention_heads", "4",
            "--data", "tests.synthetic.RandomPairsDataModule"]
    cli = NoInit(VLModule, LightningDataModule, subclass_mode_data=True, run=False, command="prune", args=base)
    text, config, _ = cli._resolved()
    assert "backbone" not in text and "backbone" not in config["model"]
    chosen = base + ["--model.backbone", "lightning_vl.model.uniter.UniterModel",
                     "--model.backbone.init_args.config.hidden_size", "48",
                     "--model.backbone.init_args.config.num_attention_heads", "4"]
    cli = NoInit(VLModule, LightningDataModule, subclass_mode_data=True, run=False, command="prune", args=chosen)
    _, config, _ = cli._resolved()
    assert config["model"]["backbone"]["class_path"] == "lightning_vl.model.uniter.UniterModel"
    assert config["model"]["backbone"]["init_args"]["config"]["hidden_size"] == 48
