"""LXMERT behind the backbone seam (lightning_vl/model/lxmert.py): equal to transformers'
``LxmertModel``, released-layout folders load with a report, θ'_0 / θ''_0, the adversarial deltas,
the prunable groups (counted at base size), embedding growth and the tokenizer check. Tiny random
models only; nothing is downloaded."""
import copy
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel, LxmertForPreTraining, LxmertModel

from data_modules.batching import collate_rows
from lightning_vl.model.backbone import PrunableGroup
from lightning_vl.model.lxmert import (
    CROSS_PARTS, LAYER_PARTS, LxmertBackbone, LxmertBackboneConfig, check_tokenizer, prunable_groups_for,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=32, l_layers=2, x_layers=2,
            r_layers=1, visual_feat_dim=12, max_position_embeddings=64)
SIX = set(LAYER_PARTS.values())


def tiny_config(**kw) -> LxmertBackboneConfig:
    return LxmertBackboneConfig(**{**TINY, **kw})


def make_batch(seed=0, txt_lens=(5, 3, 7), num_bbs=(4, 2, 6), dim=12, type_ids=False) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for tl, nb in zip(txt_lens, num_bbs):
        ids = torch.randint(5, 40, (tl,), generator=g)
        ids[0], ids[-1] = 2, 3
        xy = torch.rand(nb, 2, generator=g) * 0.5
        wh = torch.rand(nb, 2, generator=g) * 0.5
        boxes = torch.cat([xy, xy + wh, wh, (wh[:, :1] * wh[:, 1:])], dim=1)  # x1 y1 x2 y2 w h area
        row = {"input_ids": ids, "img_feat": torch.rand(nb, dim, generator=g), "img_pos_feat": boxes}
        if type_ids:
            row["txt_type_ids"] = torch.randint(0, 2, (tl,), generator=g)
        rows.append(row)
    return collate_rows(rows)


def backbone_and_reference(seed=0, **kw):
    torch.manual_seed(seed)
    backbone = LxmertBackbone(tiny_config(**kw)).eval()
    with torch.no_grad():  # LayerNorms away from (1, 0), so a wrong parameter mapping would show
        for name, p in backbone.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    reference = LxmertModel(backbone.config.to_hf()).eval()
    reference.load_state_dict(backbone.state_dict(), strict=True)
    return backbone, reference


def reference_outputs(reference, batch, **extra):
    tl, nb = torch.tensor(batch["txt_lens"]), torch.tensor(batch["num_bbs"])
    text_mask = (torch.arange(batch["input_ids"].size(1))[None] < tl[:, None]).long()
    region_mask = (torch.arange(batch["img_feat"].size(1))[None] < nb[:, None]).long()
    return reference(input_ids=batch["input_ids"], visual_feats=batch["img_feat"],
                     visual_pos=batch["img_pos_feat"][..., :4], attention_mask=text_mask,
                     visual_attention_mask=region_mask, token_type_ids=batch.get("txt_type_ids"), **extra)


# -- equivalence with transformers' LxmertModel --------------------------------------------------------
def test_parameter_names_are_lxmert_models():
    backbone, reference = backbone_and_reference()
    assert list(backbone.state_dict()) == list(reference.state_dict())
    assert backbone.hf_model.encoder is backbone.encoder  # one set of modules, transformers' forward


@pytest.mark.parametrize("type_ids", [False, True])
def test_forward_equals_lxmert_model_with_padding(type_ids):
    backbone, reference = backbone_and_reference()
    batch = make_batch(type_ids=type_ids)
    with torch.no_grad():
        lang, vision, pooled, _, _ = backbone.encode(batch)
        ref = reference_outputs(reference, batch)
        out = backbone(batch)
    for ours, theirs in ((lang, ref.language_output), (vision, ref.vision_output), (pooled, ref.pooled_output)):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.pooled, ref.pooled_output, atol=1e-6, rtol=0)
    # the joined layout: row r's tokens, then its regions, then padding; the mask is attn_masks
    assert torch.equal(out.sequence_mask, batch["attn_masks"])
    for r, (tl, nb) in enumerate(zip(batch["txt_lens"], batch["num_bbs"])):
        torch.testing.assert_close(out.sequence[r, :tl], ref.language_output[r, :tl], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.sequence[r, tl:tl + nb], ref.vision_output[r, :nb], atol=1e-6, rtol=0)


def test_padding_does_not_change_a_rows_outputs():
    backbone, _ = backbone_and_reference()
    batch = make_batch()
    alone = collate_rows([{"input_ids": batch["input_ids"][1, :3], "img_feat": batch["img_feat"][1, :2],
                           "img_pos_feat": batch["img_pos_feat"][1, :2]}])
    with torch.no_grad():
        full, single = backbone.encode(batch), backbone.encode(alone)
    torch.testing.assert_close(full[0][1, :3], single[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(full[1][1, :2], single[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(full[2][1], single[2][0], atol=1e-5, rtol=0)


def test_without_gather_index_the_streams_are_concatenated_and_pool_false_drops_pooled():
    backbone, _ = backbone_and_reference()
    batch = make_batch()
    plain = {k: v for k, v in batch.items() if k not in ("gather_index", "attn_masks")}
    with torch.no_grad():
        lang, vision, _, text_mask, region_mask = backbone.encode(batch)
        out = backbone(plain, pool=False)
    assert out.pooled is None
    assert torch.equal(out.sequence, torch.cat([lang, vision], 1))
    assert torch.equal(out.sequence_mask, torch.cat([text_mask, region_mask], 1))


def test_a_text_only_batch_is_refused():
    backbone, _ = backbone_and_reference()
    batch = {**make_batch(), "img_feat": None, "img_pos_feat": None}
    with pytest.raises(ValueError, match="no img_feat"):
        backbone(batch)


def test_copies_and_dtype_moves_keep_one_set_of_modules():
    backbone, reference = backbone_and_reference()
    twin = copy.deepcopy(backbone).double()
    assert twin.hf_model.encoder is twin.encoder and twin.encoder is not backbone.encoder
    batch = make_batch()
    batch64 = {**batch, "img_feat": batch["img_feat"].double(), "img_pos_feat": batch["img_pos_feat"].double()}
    with torch.no_grad():
        torch.testing.assert_close(twin(batch64).pooled.float(), reference_outputs(reference, batch).pooled_output,
                                   atol=1e-5, rtol=0)
    assert twin.train().hf_model.training and not twin.eval().hf_model.training


# -- the adversarial seam ------------------------------------------------------------------------
def test_zero_deltas_change_nothing_and_nonzero_deltas_get_gradients():
    backbone, _ = backbone_and_reference()
    batch = make_batch()
    h, (r, lt), img = backbone.hidden_size, batch["input_ids"].shape, batch["img_feat"]
    with torch.no_grad():
        clean = backbone(batch)
        zero = backbone(batch, txt_delta=torch.zeros(r, lt, h), img_delta=torch.zeros_like(img))
    assert torch.equal(clean.sequence, zero.sequence) and torch.equal(clean.pooled, zero.pooled)
    for side in ("txt_delta", "img_delta"):
        shape = (r, lt, h) if side == "txt_delta" else img.shape
        delta = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.5).requires_grad_(True)
        out = backbone(batch, **{side: delta})
        assert not torch.allclose(out.sequence, clean.sequence, atol=1e-4)
        (out.sequence * batch["attn_masks"][..., None]).sum().add(out.pooled.sum()).backward()
        assert delta.grad is not None and delta.grad.abs().sum() > 0, side


# -- prunable groups -----------------------------------------------------------------------------------
def test_prunable_groups_at_base_size():
    groups = prunable_groups_for(LxmertBackboneConfig(), ("encoder",))
    by_stream = {s: sum(g.stream == s for g in groups.values()) for s in ("text", "image", "cross")}
    assert by_stream == {"text": 9 * 6, "image": 5 * 6, "cross": 5 * 16}
    assert len(groups) == 164
    extra = prunable_groups_for(LxmertBackboneConfig(), ("visual_fc", "pooler"))
    assert [(g.stream, g.layer, g.part) for g in extra.values()] == [
        ("image", -1, "visual_fc"), ("image", -1, "visual_fc"), ("text", -1, "pooler")]
    # the weights' count, from the shapes alone (meta tensors: nothing allocated)
    with torch.device("meta"):
        base = LxmertBackbone(LxmertBackboneConfig())
    params = dict(base.named_parameters())
    assert sum(params[n].numel() for n in groups) == 181_665_792
    assert base.prunable_groups() == groups


def test_prunable_groups_are_every_linear_weight():
    backbone, _ = backbone_and_reference()
    groups = backbone.prunable_groups(("encoder", "visual_fc", "pooler"))
    linears = [f"{n}.weight" for n, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(groups) == sorted(linears)
    encoder = backbone.prunable_groups()
    assert all(".layer." in n or ".x_layers." in n or ".r_layers." in n for n in encoder)
    assert {g.part for g in encoder.values() if g.stream != "cross"} == SIX
    cross = {g.part for g in encoder.values() if g.stream == "cross"}
    assert cross == set(CROSS_PARTS.values()) and len(cross) == 16
    assert {p.split("_", 1)[0] for p in cross} == {"cross", "lang", "visn"}
    assert {p.split("_", 1)[1] for p in cross} == SIX
    assert encoder["encoder.x_layers.1.visual_attention.att.key.weight"] == PrunableGroup("cross", 1, "cross_key")
    assert encoder["encoder.x_layers.0.visn_output.dense.weight"] == PrunableGroup("cross", 0, "visn_ffn_out")
    assert encoder["encoder.r_layers.0.intermediate.dense.weight"] == PrunableGroup("image", 0, "ffn_in")
    with pytest.raises(ValueError, match="visual_fc"):
        backbone.prunable_groups(("img_linear",))


# -- released weights, θ'_0 and θ''_0 -----------------------------------------------------------------
def test_a_saved_lxmert_model_loads_with_nothing_missing(tmp_path):
    torch.manual_seed(3)
    saved = LxmertModel(tiny_config().to_hf())
    saved.save_pretrained(tmp_path)
    assert LxmertBackboneConfig.from_folder(tmp_path) == tiny_config()
    backbone = LxmertBackbone(tiny_config())
    report = backbone.load(str(tmp_path))
    assert not report.missing and not report.unexpected
    assert report.path.endswith("model.safetensors")
    for k, v in saved.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    assert all(k.startswith("lxmert.") for k in LxmertBackbone.read_init(str(tmp_path)))


@pytest.mark.parametrize("as_bin", [False, True])
def test_a_pretraining_checkpoint_loads_and_reports_its_heads(tmp_path, as_bin):
    torch.manual_seed(4)
    hf = tiny_config().to_hf()
    hf.num_qa_labels, hf.num_object_labels, hf.num_attr_labels = 7, 5, 3
    saved = LxmertForPreTraining(hf)
    if as_bin:
        saved.config.save_pretrained(tmp_path)
        torch.save(saved.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        saved.save_pretrained(tmp_path)
    backbone = LxmertBackbone(tiny_config())
    report = backbone.load(str(tmp_path))
    assert not report.missing
    assert report.unexpected and all(k.startswith(("cls.", "obj_predict_head.", "answer_head.")) for k in report.unexpected)
    assert any(k.startswith("answer_head.") for k in report.unexpected)
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, saved.lxmert.state_dict()[k]), k


def test_a_shape_mismatch_names_the_file_the_key_and_the_shapes(tmp_path):
    LxmertModel(tiny_config(intermediate_size=24).to_hf()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.safetensors: '[^']*intermediate\.dense\.(weight|bias)' has shape \(24.*\), the model expects \(32"):
        LxmertBackbone(tiny_config()).load(str(tmp_path))


def test_bert_weights_fill_the_language_layers_and_the_rest_stays_at_init(tmp_path):
    torch.manual_seed(5)
    bert = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=64), add_pooling_layer=True)
    bert.save_pretrained(tmp_path)
    backbone = LxmertBackbone(tiny_config())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    report = backbone.load(str(tmp_path))
    own = backbone.state_dict()
    for key in ("encoder.layer.1.attention.self.query.weight", "encoder.layer.0.output.LayerNorm.bias",
                "embeddings.word_embeddings.weight", "pooler.dense.weight"):
        assert torch.equal(own[key], bert.state_dict()[key]), key
    assert "lxmert.encoder.layer.2.attention.self.query.weight" in report.unexpected  # BERT's 3rd layer
    assert report.missing and all(k.startswith(("lxmert.encoder.x_layers.", "lxmert.encoder.r_layers.",
                                                "lxmert.encoder.visn_fc.")) for k in report.missing)
    assert any(k.startswith("lxmert.encoder.x_layers.") for k in report.missing)
    for k in report.missing:
        assert torch.equal(own[k[len("lxmert."):]], before[k[len("lxmert."):]]), k
    assert "missing (left at init)" in report.summary()


def test_shuffled_weights_keep_each_tensors_values_and_change_their_order(tmp_path):
    torch.manual_seed(6)
    LxmertForPreTraining(tiny_config().to_hf()).save_pretrained(tmp_path)
    plain = LxmertBackbone.read_init(str(tmp_path))
    shuffled = LxmertBackbone.read_init(f"shuffled:{tmp_path}", seed=0)
    assert shuffled.keys() == plain.keys()
    moved = varied = 0
    for k, v in plain.items():
        if not k.startswith("lxmert."):
            assert torch.equal(shuffled[k], v), k  # heads untouched
            continue
        assert shuffled[k].shape == v.shape
        assert torch.equal(shuffled[k].flatten().sort().values, v.flatten().sort().values), k
        if v.unique().numel() > 1:  # constant tensors (zero biases, unit LayerNorms) cannot move
            varied += 1
            moved += not torch.equal(shuffled[k], v)
    assert varied > 50 and moved == varied
    again = LxmertBackbone.read_init(f"shuffled:{tmp_path}", seed=0)
    other = LxmertBackbone.read_init(f"shuffled:{tmp_path}", seed=1)
    key = "lxmert.encoder.x_layers.0.visual_attention.att.query.weight"
    assert torch.equal(again[key], shuffled[key]) and not torch.equal(other[key], shuffled[key])
    backbone = LxmertBackbone(tiny_config())
    report = backbone.load(f"shuffled:{tmp_path}", seed=0)
    assert not report.missing and torch.equal(backbone.state_dict()["encoder.x_layers.0.visual_attention.att.query.weight"],
                                              shuffled[key])


def test_a_state_dict_file_loads(tmp_path):
    source, _ = backbone_and_reference(seed=7)
    torch.save({"state_dict": {f"lxmert.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ckpt.pt")
    backbone = LxmertBackbone(tiny_config())
    report = backbone.load(str(tmp_path / "ckpt.pt"))
    assert not report.missing and not report.unexpected
    with pytest.raises(FileNotFoundError):
        backbone.load(str(tmp_path / "absent.pt"))


# -- embedding growth -----------------------------------------------------------------------------------
def test_type_and_word_tables_grow_like_uniters():
    backbone, _ = backbone_and_reference()
    types = backbone.embeddings.token_type_embeddings.weight.detach().clone()
    words = backbone.word_embeddings.weight.detach().clone()
    backbone.grow_embeddings([1], 5)
    backbone.grow_embeddings([1], 5)  # idempotent
    table = backbone.embeddings.token_type_embeddings
    assert table.num_embeddings == 3 and table.padding_idx == 0
    assert torch.equal(table.weight[:2], types) and torch.equal(table.weight[2], types[1])
    assert backbone.word_embeddings.num_embeddings == 45 and torch.equal(backbone.word_embeddings.weight[:40], words)
    assert backbone.config.type_vocab_size == 3 and backbone.config.vocab_size == 45
    batch = make_batch()
    batch["txt_type_ids"] = torch.full_like(batch["input_ids"], 2)
    batch["input_ids"][0, 1] = 44
    assert torch.isfinite(backbone(batch).sequence).all()
    # a checkpoint with the built sizes: no growth
    fresh = LxmertBackbone(tiny_config())
    fresh.grow_embeddings([1], 0, state={f"lxmert.{k}": v for k, v in fresh.state_dict().items()})
    assert fresh.embeddings.token_type_embeddings.num_embeddings == 2


# -- tokenizer ------------------------------------------------------------------------------------------
def write_vocab(folder: Path, words) -> Path:
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return folder


def test_tokenizer_check(tmp_path):
    from data_modules.tokenization import load_tokenizer

    folder = write_vocab(tmp_path / "uncased", ["a", "dog", "##s", "red", "cat"])
    tokenizer = load_tokenizer(folder, do_lower_case=True)
    check_tokenizer(tokenizer, 10)
    check_tokenizer(tokenizer, 13, extra_word_rows=3)
    with pytest.raises(ValueError, match="10 tokens.*12 word rows"):
        check_tokenizer(tokenizer, 12)
    with pytest.raises(ValueError, match="do_lower_case=True"):
        check_tokenizer(load_tokenizer(folder, do_lower_case=False), 10)
    check_tokenizer(load_tokenizer(write_vocab(tmp_path / "cased", ["A", "dog"]), do_lower_case=False), 7)


def test_the_task_module_checks_the_datas_tokenizer_against_the_backbone(tmp_path):
    """VLModule.setup hands the data's tokenizer to the backbone: LXMERT refuses an uncased
    vocabulary read cased (every capitalised word would be [UNK]) and a vocabulary of another size."""
    from types import SimpleNamespace

    from data_modules.tokenization import load_tokenizer
    from lightning_vl.training.module import VLModule

    folder = write_vocab(tmp_path / "uncased", [f"w{i}" for i in range(35)])  # 40 tokens: TINY's vocab_size
    module = VLModule(task="nlvr2", backbone=LxmertBackbone(tiny_config()))

    def setup_with(tokenizer):
        datamodule = SimpleNamespace(tokenizer=tokenizer, tokenizer_path=str(folder), img_dim=12)
        module._trainer = SimpleNamespace(datamodule=datamodule)
        module.setup("fit")

    setup_with(load_tokenizer(folder, do_lower_case=True))
    with pytest.raises(ValueError, match=f"tokenizer {folder}.*do_lower_case=True"):
        setup_with(load_tokenizer(folder, do_lower_case=False))
    small = write_vocab(tmp_path / "small", ["w0"])
    with pytest.raises(ValueError, match="6 tokens.*40 word rows"):
        setup_with(load_tokenizer(small, do_lower_case=True))


def test_an_lxmert_exports_as_a_checkpoint_that_inits_the_next_model_and_not_as_bert(tmp_path):
    from lightning_vl.model.export import export
    from lightning_vl.training.module import VLModule

    module = VLModule(task="nlvr2", backbone=LxmertBackbone(tiny_config()))
    written = export(module, tmp_path / "lxmert.pt", "checkpoint")
    again = VLModule(task="nlvr2", backbone=LxmertBackbone(tiny_config()), init=str(written))
    for name, value in module.backbone.state_dict().items():
        assert torch.equal(again.backbone.state_dict()[name], value), name
    with pytest.raises(ValueError, match="UNITER's text part.*LxmertBackbone.*layout checkpoint"):
        export(module, tmp_path / "bert", "bert")


# -- configs ----------------------------------------------------------------------------------------------
def sizes(name: str) -> dict:
    model = yaml.safe_load((ROOT / "configs/model" / name).read_text())["model"]["backbone"]
    assert model["class_path"] == "lightning_vl.model.lxmert.LxmertBackbone"
    return model["init_args"]["config"]


def test_base_config_is_lxmert_base_uncaseds_sizes():
    base = LxmertBackboneConfig(**sizes("lxmert-base.yaml"))
    assert base == LxmertBackboneConfig()
    assert (base.l_layers, base.x_layers, base.r_layers, base.hidden_size, base.visual_feat_dim) == (9, 5, 5, 768, 2048)
    hf = base.to_hf()
    assert (hf.vocab_size, hf.num_attention_heads, hf.intermediate_size) == (30522, 12, 3072)


def test_tiny_config_fits_the_demo_world():
    uniter = yaml.safe_load((ROOT / "configs/model/uniter-tiny.yaml").read_text())["model"]["uniter"]
    tiny = LxmertBackboneConfig(**sizes("lxmert-tiny.yaml"))
    assert (tiny.vocab_size, tiny.visual_feat_dim) == (uniter["vocab_size"], uniter["img_dim"])
    backbone = LxmertBackbone(tiny).eval()
    out = backbone(make_batch(dim=tiny.visual_feat_dim))
    assert out.sequence.shape[-1] == tiny.hidden_size == backbone.hidden_size


# -- the merged contract ---------------------------------------------------------------------------------
def test_head_sizes_are_the_built_sizes():
    backbone, _ = backbone_and_reference()
    sizes = backbone.head_sizes()
    assert (sizes.hidden_size, sizes.num_attention_heads, sizes.vocab_size, sizes.img_dim) == (16, 2, 40, 12)
    assert sizes.layer_norm_eps == 1e-12 and sizes.initializer_range == 0.02
    backbone.grow_embeddings([1], 5)
    assert backbone.head_sizes().vocab_size == 40 and backbone.hidden_size == 16  # the rows before the task's


def test_the_cli_reads_the_lxmert_configs(capsys):
    from lightning_vl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(ROOT / "configs/task/nlvr2.yaml"), "--config", str(ROOT / "configs/model/lxmert-tiny.yaml"),
              "--config", str(ROOT / "configs/demo.yaml"), "--config", str(ROOT / "configs/demo/nlvr2.yaml"),
              "--print_config"])
    assert exit_.value.code in (0, None)
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["backbone"]["class_path"] == "lightning_vl.model.lxmert.LxmertBackbone"
    assert LxmertBackboneConfig(**model["backbone"]["init_args"]["config"]) == LxmertBackboneConfig(**sizes("lxmert-tiny.yaml"))


def test_a_uniter_checkpoint_is_refused(tmp_path):
    torch.save({"uniter.encoder.layer.0.output.dense.weight": torch.zeros(2, 2), "cls.bias": torch.zeros(2)},
               tmp_path / "uniter-tiny.pt")
    with pytest.raises(ValueError, match="holds no LXMERT weights.*uniter"):
        LxmertBackbone.read_init(str(tmp_path / "uniter-tiny.pt"))


@pytest.mark.parametrize("head", ["paired-mlp", "paired", "paired-attn"])
@pytest.mark.parametrize("backbone", ["uniter", "lxmert"])
def test_every_trainable_parameter_gets_a_gradient_so_ddp_needs_no_unused_search(backbone, head):
    """What DDP (find_unused_parameters=False) requires of a training step: the parameters the
    head's loss does not reach are frozen. LXMERT under a pooled-only head: its last cross layer's
    vision side is unread (it failed under ddp_spawn before it was frozen)."""
    from tests.ddp_scripts import tiny_model
    from tests.synthetic import TINY, RandomPairs, collate_pairs

    torch.manual_seed(0)
    module = tiny_model(backbone)
    if head != module.hparams.head:
        module = type(module)(**{**module.hparams, "head": head,
                                 "backbone": None if backbone == "uniter" else module.backbone})
    batch = collate_pairs([RandomPairs(4, TINY, seed=0)[i] for i in range(4)])
    module.spec.loss(module(batch), batch).backward()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    missing = sorted(n for n, p in module.named_parameters() if p.requires_grad and p.grad is None)
    assert trainable and not missing, missing
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    if backbone == "lxmert" and head != "paired-attn":
        assert any(".x_layers.1.visn_output." in n for n in frozen) and not any(".x_layers.0." in n for n in frozen)
