"""ViLT behind the backbone seam (lightning_vl/model/vilt.py): equal to transformers' ``ViltModel``
with padded text and pixels, released-layout folders load with a report, θ'_0 (a ViT) / θ''_0,
the adversarial deltas on words and pixels, the prunable groups (counted at base size), embedding
growth (NLVR2's third modality type), the task module on pixel batches and the configs. Tiny random
models only; nothing is downloaded."""
import copy
from pathlib import Path

import pytest
import torch
import yaml
from transformers import ViltForMaskedLM, ViltForQuestionAnswering, ViltModel, ViTConfig, ViTModel

from lightning_vl.model.backbone import PrunableGroup
from lightning_vl.model.vilt import LAYER_PARTS, ViltBackbone, ViltBackboneConfig, prunable_groups_for

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=2,
            image_size=64, patch_size=16, max_position_embeddings=24)
SIX = set(LAYER_PARTS.values())


def tiny_config(**kw) -> ViltBackboneConfig:
    return ViltBackboneConfig(**{**TINY, **kw})


def make_batch(seed=0, txt_lens=(5, 3, 7), sizes=((64, 48), (32, 64), (64, 64)), vocab=40) -> dict:
    """Rows padded as ViLT's collate pads them: text to the longest (id 0), pixels right / bottom to
    the largest (pixel_mask 0 there)."""
    g = torch.Generator().manual_seed(seed)
    rows, lt = len(txt_lens), max(txt_lens)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    ids = torch.zeros(rows, lt, dtype=torch.long)
    pixels = torch.zeros(rows, 3, height, width)
    mask = torch.zeros(rows, height, width, dtype=torch.long)
    for r, (tl, (h, w)) in enumerate(zip(txt_lens, sizes)):
        ids[r, :tl] = torch.randint(5, vocab, (tl,), generator=g)
        ids[r, 0], ids[r, tl - 1] = 2, 3
        pixels[r, :, :h, :w] = torch.rand(3, h, w, generator=g) * 2 - 1
        mask[r, :h, :w] = 1
    return {"input_ids": ids, "txt_lens": list(txt_lens), "pixel_values": pixels, "pixel_mask": mask}


def backbone_and_reference(seed=0, **kw):
    torch.manual_seed(seed)
    backbone = ViltBackbone(tiny_config(**kw)).eval()
    with torch.no_grad():  # LayerNorms and zero-initialised tables away from their init, so a wrong mapping shows
        for name, p in backbone.named_parameters():
            if "LayerNorm" in name or "layernorm" in name or "cls_token" in name or "position_embeddings" in name:
                p.add_(torch.randn_like(p) * 0.1)
    reference = ViltModel(backbone.config.to_hf()).eval()
    reference.load_state_dict(backbone.state_dict(), strict=True)
    return backbone, reference


def reference_outputs(reference, batch, seed=0, image_token_type_idx=None):
    """``ViltModel`` on the batch, and its image tokens put in raster order: transformers draws the
    patch order with torch.multinomial, so the same seed replays it and gives the permutation."""
    ids = batch["input_ids"]
    text_mask = (torch.arange(ids.size(1))[None] < torch.tensor(batch["txt_lens"])[:, None]).long()
    torch.manual_seed(seed)
    out = reference(input_ids=ids, attention_mask=text_mask, pixel_values=batch["pixel_values"],
                    pixel_mask=batch["pixel_mask"], image_token_type_idx=image_token_type_idx)
    torch.manual_seed(seed)
    _, patch_mask, (patch_index, _) = reference.embeddings.visual_embed(
        batch["pixel_values"], batch["pixel_mask"], max_image_length=reference.config.max_image_length)
    grid = batch["pixel_values"].size(-1) // reference.config.patch_size
    key = patch_index[..., 0] * grid + patch_index[..., 1]
    order = torch.where(patch_mask[:, 1:].bool(), key, key + 10_000).argsort(dim=1, stable=True)
    lt = ids.size(1)
    text, cls, patches = out.last_hidden_state[:, :lt], out.last_hidden_state[:, lt:lt + 1], out.last_hidden_state[:, lt + 1:]
    patches = patches.gather(1, order[..., None].expand(-1, -1, patches.size(-1)))
    mask = torch.cat([text_mask, patch_mask[:, :1], patch_mask[:, 1:].gather(1, order)], dim=1)
    return torch.cat([text, cls, patches], dim=1), out.pooler_output, mask


# -- equivalence with transformers' ViltModel ---------------------------------------------------------
def test_parameter_names_are_vilt_models():
    backbone, reference = backbone_and_reference()
    assert list(backbone.state_dict()) == list(reference.state_dict())
    assert backbone.hf_model.encoder is backbone.encoder  # one set of modules, transformers' forward


def test_forward_equals_vilt_model_with_padded_text_and_pixels():
    backbone, reference = backbone_and_reference()
    batch = make_batch()
    with torch.no_grad():
        out = backbone(batch)
        sequence, pooled, mask = reference_outputs(reference, batch)
    assert out.sequence.dtype == torch.float32 and out.sequence.shape == sequence.shape
    assert torch.equal(out.sequence_mask, mask)
    real = mask.bool()
    torch.testing.assert_close(out.sequence[real], sequence[real], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.pooled, pooled, atol=1e-6, rtol=0)
    # the layout: Lt text positions (row 1's padding masked), the image [CLS], 4 x 4 patches
    assert out.sequence.shape[1] == 7 + 1 + 16
    assert out.sequence_mask[1].tolist() == [1] * 3 + [0] * 4 + [1] + [1] * 8 + [0] * 8  # 32 x 64 px: 2 x 4 patches
    assert out.sequence_mask[0, 8:].tolist() == [1] * 12 + [0] * 4  # 64 x 48 px: 4 x 3 patches, then padding


def test_the_patch_order_is_fixed_and_padding_does_not_change_a_rows_outputs():
    backbone, _ = backbone_and_reference()
    batch = make_batch()
    with torch.no_grad():
        first, second = backbone(batch), backbone(batch)
        alone = backbone({"input_ids": batch["input_ids"][1:2, :3], "txt_lens": [3],
                          "pixel_values": batch["pixel_values"][1:2, :, :32, :], "pixel_mask": batch["pixel_mask"][1:2, :32, :]})
    real = first.sequence_mask.bool()
    torch.testing.assert_close(first.sequence[real], second.sequence[real], atol=1e-6, rtol=0)
    torch.testing.assert_close(first.pooled[1], alone.pooled[0], atol=1e-5, rtol=0)
    row = first.sequence[1][first.sequence_mask[1].bool()]
    torch.testing.assert_close(row, alone.sequence[0], atol=1e-5, rtol=0)


def test_without_txt_lens_the_text_mask_is_nonzero_ids_and_pool_false_drops_pooled():
    backbone, _ = backbone_and_reference()
    batch = make_batch()
    plain = {k: v for k, v in batch.items() if k != "txt_lens"}
    with torch.no_grad():
        out, ref = backbone(plain, pool=False), backbone(batch)
    assert out.pooled is None
    assert torch.equal(out.sequence_mask[:, :7], (batch["input_ids"] != 0).long())
    torch.testing.assert_close(out.sequence, ref.sequence, atol=0, rtol=0)


def test_a_batch_without_pixels_is_refused_with_what_is_expected():
    backbone, _ = backbone_and_reference()
    batch = make_batch()
    regions = {"input_ids": batch["input_ids"], "img_feat": torch.rand(3, 4, 12), "img_pos_feat": torch.rand(3, 4, 7)}
    with pytest.raises(ValueError, match=r"no 'pixel_values' \(expected \(R, 3, H, W\).*pixel_mask.*img_feat"):
        backbone(regions)
    with pytest.raises(ValueError, match="multiples of patch_size 16"):
        backbone({**batch, "pixel_values": batch["pixel_values"][..., :40], "pixel_mask": batch["pixel_mask"][..., :40]})


def test_image_types_per_row_follow_vilts_nlvr2_way():
    """NLVR2: left images modality type 1, right images type 2 (a grown third row), one ViltModel
    call per type as transformers' ViltForImagesAndTextClassification makes them."""
    backbone, reference = backbone_and_reference()
    backbone.grow_embeddings([1], 0)
    with torch.no_grad():  # the right-image row moved away from its copy (not by a constant: LayerNorm removes that)
        backbone.embeddings.token_type_embeddings.weight[2] += torch.randn(16)
    reference.embeddings.token_type_embeddings = copy.deepcopy(backbone.embeddings.token_type_embeddings)
    batch = {**make_batch(txt_lens=(5, 5, 4, 4), sizes=((64, 48), (32, 64), (64, 64), (48, 32))),
             "img_type_ids": torch.tensor([1, 2, 1, 2])}
    with torch.no_grad():
        out = backbone(batch)
        for kind, rows in ((1, [0, 2]), (2, [1, 3])):
            part = {k: (v[rows] if torch.is_tensor(v) else [v[r] for r in rows]) for k, v in batch.items()}
            _, pooled, _ = reference_outputs(reference, part, image_token_type_idx=kind)
            torch.testing.assert_close(out.pooled[rows], pooled, atol=1e-6, rtol=0)
        same = backbone({**batch, "img_type_ids": torch.ones(4, dtype=torch.long)})
    torch.testing.assert_close(same.pooled[[0, 2]], out.pooled[[0, 2]], atol=1e-6, rtol=0)
    assert not torch.allclose(same.sequence[[1, 3], 5:], out.sequence[[1, 3], 5:], atol=1e-2)  # the image tokens
    with pytest.raises(ValueError, match="one modality type per row"):
        backbone({**batch, "img_type_ids": torch.tensor([[1, 2], [1, 1], [2, 2], [1, 1]])})


def test_copies_and_dtype_moves_keep_one_set_of_modules():
    backbone, _ = backbone_and_reference()
    twin = copy.deepcopy(backbone).double()
    assert twin.hf_model.encoder is twin.encoder and twin.encoder is not backbone.encoder
    batch = make_batch()
    with torch.no_grad():
        ours = backbone(batch).pooled
        theirs = twin({**batch, "pixel_values": batch["pixel_values"].double()}).pooled.float()
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert twin.train().hf_model.training and not twin.eval().hf_model.training


def test_patch_sampling_is_an_option():
    backbone, _ = backbone_and_reference(max_image_length=5)
    with torch.no_grad():
        out = backbone(make_batch())
    assert out.sequence.shape[1] == 7 + 1 + 5 and backbone.hf_model.config.max_image_length == 5
    with pytest.raises(ValueError, match="max_image_length"):
        tiny_config(max_image_length=0)


# -- the adversarial seam ------------------------------------------------------------------------
def test_zero_deltas_change_nothing_and_nonzero_deltas_get_gradients():
    backbone, _ = backbone_and_reference()
    batch = make_batch()
    h, (r, lt), pixels = backbone.hidden_size, batch["input_ids"].shape, batch["pixel_values"]
    with torch.no_grad():
        clean = backbone(batch)
        zero = backbone(batch, txt_delta=torch.zeros(r, lt, h), img_delta=torch.zeros_like(pixels))
    assert torch.equal(clean.sequence, zero.sequence) and torch.equal(clean.pooled, zero.pooled)
    valid = backbone.image_delta_mask(batch)
    assert valid.shape == (r, 1, *pixels.shape[2:]) and torch.equal(valid[:, 0].long(), batch["pixel_mask"])
    for side in ("txt_delta", "img_delta"):
        shape = (r, lt, h) if side == "txt_delta" else pixels.shape
        delta = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.5).requires_grad_(True)
        out = backbone(batch, **{side: delta})
        assert not torch.allclose(out.pooled, clean.pooled, atol=1e-4)
        (out.sequence * out.sequence_mask[..., None]).sum().add(out.pooled.sum()).backward()
        assert delta.grad is not None and delta.grad.abs().sum() > 0, side


def test_adversarial_training_perturbs_the_pixels():
    from lightning_vl.training.adversarial import AdversarialConfig, adversarial_loss
    from lightning_vl.training.module import VLModule

    torch.manual_seed(0)
    module = VLModule(task="vqa", backbone=ViltBackbone(tiny_config()), labels=["a", "b", "c"])
    batch = {**make_batch(), "targets": torch.rand(3, 3)}
    for modality in ("image", "image+text"):
        cfg = AdversarialConfig(enabled=True, modality=modality, steps=2).resolved("vqa")
        loss, parts = adversarial_loss(module, batch, cfg)
        assert torch.isfinite(loss) and parts["kl"] > 0
    assert module.backbone.image_input_key == "pixel_values"


# -- prunable groups -----------------------------------------------------------------------------------
def test_prunable_groups_at_base_size():
    groups = prunable_groups_for(ViltBackboneConfig(), ("encoder",))
    assert len(groups) == 72 and {g.stream for g in groups.values()} == {"joint"}
    assert sorted({g.layer for g in groups.values()}) == list(range(12))
    extra = prunable_groups_for(ViltBackboneConfig(), ("patch_projection", "pooler"))
    assert list(extra.values()) == [PrunableGroup("joint", -1, "patch_projection"), PrunableGroup("joint", -1, "pooler")]
    with torch.device("meta"):
        base = ViltBackbone(ViltBackboneConfig())
    params = dict(base.named_parameters())
    assert sum(params[n].numel() for n in groups) == 84_934_656
    assert params["embeddings.patch_embeddings.projection.weight"].shape == (768, 3, 32, 32)
    assert base.prunable_groups() == groups


def test_prunable_groups_are_every_linear_weight_of_the_blocks():
    from lightning_vl.analysis.overlap import PART_TYPES

    backbone, _ = backbone_and_reference()
    encoder = backbone.prunable_groups()
    linears = [f"{n}.weight" for n, m in backbone.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("encoder.layer.")]
    assert sorted(encoder) == sorted(linears) and len(encoder) == 2 * 6
    assert {g.part for g in encoder.values()} == SIX == set(PART_TYPES)
    assert encoder["encoder.layer.1.attention.attention.key.weight"] == PrunableGroup("joint", 1, "key")
    assert encoder["encoder.layer.0.output.dense.weight"] == PrunableGroup("joint", 0, "ffn_out")
    everything = backbone.prunable_groups(("encoder", "patch_projection", "pooler"))
    assert list(everything)[-2:] == ["embeddings.patch_embeddings.projection.weight", "pooler.dense.weight"]
    assert all(n in dict(backbone.named_parameters()) for n in everything)
    with pytest.raises(ValueError, match="encoder, patch_projection, pooler"):
        backbone.prunable_groups(("visual_fc",))


# -- released weights, θ'_0 and θ''_0 -----------------------------------------------------------------
def test_a_saved_vilt_model_loads_with_nothing_missing(tmp_path):
    torch.manual_seed(3)
    saved = ViltModel(tiny_config().to_hf())
    saved.save_pretrained(tmp_path)
    assert ViltBackboneConfig.from_folder(tmp_path) == tiny_config()
    backbone = ViltBackbone(tiny_config())
    report = backbone.load(str(tmp_path))
    assert not report.missing and not report.unexpected
    assert report.path.endswith("model.safetensors")
    for k, v in saved.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    assert all(k.startswith("vilt.") for k in ViltBackbone.read_init(str(tmp_path)))


@pytest.mark.parametrize("head_class", [ViltForMaskedLM, ViltForQuestionAnswering])
@pytest.mark.parametrize("as_bin", [False, True])
def test_a_task_model_folder_loads_and_reports_its_heads(tmp_path, head_class, as_bin):
    torch.manual_seed(4)
    hf = tiny_config().to_hf()
    hf.num_labels = 5
    saved = head_class(hf)
    if as_bin:
        saved.config.save_pretrained(tmp_path)
        torch.save(saved.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        saved.save_pretrained(tmp_path)
    backbone = ViltBackbone(tiny_config())
    report = backbone.load(str(tmp_path))
    assert not report.missing
    heads = ("mlm_score.",) if head_class is ViltForMaskedLM else ("classifier.",)
    assert report.unexpected and all(k.startswith(heads) for k in report.unexpected)
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, saved.vilt.state_dict()[k]), k


def test_a_shape_mismatch_names_the_file_the_key_and_the_shapes(tmp_path):
    ViltModel(tiny_config(intermediate_size=24).to_hf()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.safetensors: '[^']*intermediate\.dense\.(weight|bias)' has shape "
                                         r"\(24.*\), the model expects \(32"):
        ViltBackbone(tiny_config()).load(str(tmp_path))


def test_vit_weights_fill_the_image_side_and_the_rest_stays_at_init(tmp_path):
    """θ'_0: ViLT's own pre-VLP starting point, a ViT (same names for the blocks and the patch side)."""
    torch.manual_seed(5)
    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                             image_size=64, patch_size=16), add_pooling_layer=True)
    vit.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model.safetensors"))  # saved in the hub's layout: ViLT's names
    backbone = ViltBackbone(tiny_config())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    report = backbone.load(str(tmp_path))
    own = backbone.state_dict()
    for key in ("encoder.layer.1.attention.attention.query.weight", "encoder.layer.0.layernorm_before.bias",
                "embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings",
                "embeddings.cls_token", "layernorm.weight"):
        assert torch.equal(own[key], saved[key]), key
    assert "vilt.encoder.layer.2.attention.attention.query.weight" in report.unexpected  # the ViT's 3rd block
    assert "pooler.dense.weight" in report.unexpected  # ViLT's pooler starts fresh, as in ViLT
    assert report.missing and all(k.startswith(("vilt.embeddings.text_embeddings.", "vilt.embeddings.token_type_",
                                                "vilt.pooler.")) for k in report.missing)
    for k in report.missing:
        assert torch.equal(own[k[len("vilt."):]], before[k[len("vilt."):]]), k


def test_other_models_are_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert'.*ViT folder.*trained from scratch"):
        ViltBackbone.read_init(str(tmp_path / "bert"))
    torch.save({"uniter.encoder.layer.0.output.dense.weight": torch.zeros(2, 2), "cls.bias": torch.zeros(2)},
               tmp_path / "uniter-tiny.pt")
    with pytest.raises(ValueError, match="holds no ViLT weights.*uniter"):
        ViltBackbone.read_init(str(tmp_path / "uniter-tiny.pt"))
    torch.save({"state_dict": {"lxmert.encoder.x_layers.0.visn_output.dense.weight": torch.zeros(2, 2)}},
               tmp_path / "lxmert.ckpt")
    with pytest.raises(ValueError, match="holds no ViLT weights.*lxmert"):
        ViltBackbone.read_init(str(tmp_path / "lxmert.ckpt"))


def test_shuffled_weights_keep_each_tensors_values_and_change_their_order(tmp_path):
    torch.manual_seed(6)
    ViltForMaskedLM(tiny_config().to_hf()).save_pretrained(tmp_path)
    plain = ViltBackbone.read_init(str(tmp_path))
    shuffled = ViltBackbone.read_init(f"shuffled:{tmp_path}", seed=0)
    assert shuffled.keys() == plain.keys()
    moved = varied = 0
    for k, v in plain.items():
        if not k.startswith("vilt."):
            assert torch.equal(shuffled[k], v), k  # heads untouched
            continue
        assert shuffled[k].shape == v.shape
        assert torch.equal(shuffled[k].flatten().sort().values, v.flatten().sort().values), k
        if v.unique().numel() > 1:  # constant tensors (zero biases, unit LayerNorms, the zero [CLS]) cannot move
            varied += 1
            moved += not torch.equal(shuffled[k], v)
    assert varied > 15 and moved == varied
    key = "vilt.encoder.layer.0.attention.attention.query.weight"
    other = ViltBackbone.read_init(f"shuffled:{tmp_path}", seed=1)
    assert torch.equal(ViltBackbone.read_init(f"shuffled:{tmp_path}", seed=0)[key], shuffled[key])
    assert not torch.equal(other[key], shuffled[key])


def test_a_state_dict_file_loads(tmp_path):
    source, _ = backbone_and_reference(seed=7)
    torch.save({"state_dict": {f"vilt.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ckpt.pt")
    report = ViltBackbone(tiny_config()).load(str(tmp_path / "ckpt.pt"))
    assert not report.missing and not report.unexpected
    with pytest.raises(FileNotFoundError):
        ViltBackbone(tiny_config()).load(str(tmp_path / "absent.pt"))


# -- embedding growth -----------------------------------------------------------------------------------
def test_nlvr2_grows_the_modality_table_and_vcr_the_text_types():
    backbone, _ = backbone_and_reference()
    modality = backbone.embeddings.token_type_embeddings.weight.detach().clone()
    words = backbone.word_embeddings.weight.detach().clone()
    backbone.grow_embeddings([1], 5)
    backbone.grow_embeddings([1], 5)  # idempotent
    table = backbone.embeddings.token_type_embeddings
    assert table.num_embeddings == 3 and torch.equal(table.weight[:2], modality) and torch.equal(table.weight[2], modality[1])
    assert backbone.embeddings.text_embeddings.token_type_embeddings.num_embeddings == 2
    assert backbone.word_embeddings.num_embeddings == 45 and torch.equal(backbone.word_embeddings.weight[:40], words)
    assert (backbone.config.modality_type_vocab_size, backbone.config.vocab_size) == (3, 45)
    assert backbone.hf_model.config.modality_type_vocab_size == 3
    vcr, _ = backbone_and_reference()
    vcr.grow_embeddings([0, 0], 0)
    types = vcr.embeddings.text_embeddings.token_type_embeddings
    assert types.num_embeddings == 4 and torch.equal(types.weight[3], types.weight[0])
    assert vcr.embeddings.token_type_embeddings.num_embeddings == 2
    with pytest.raises(ValueError, match="one of them per task"):
        vcr.grow_embeddings([0, 1], 0)
    # a checkpoint: each table grows only to the size the checkpoint has (a ViLT fine-tuned on NLVR2)
    fresh = ViltBackbone(tiny_config())
    state = {f"vilt.{k}": v for k, v in fresh.state_dict().items()}
    fresh.grow_embeddings([1], 0, state=state)
    assert fresh.embeddings.token_type_embeddings.num_embeddings == 2
    state["vilt.embeddings.token_type_embeddings.weight"] = torch.zeros(3, 16)
    fresh.grow_embeddings([1], 0, state=state)
    assert fresh.embeddings.token_type_embeddings.num_embeddings == 3


# -- tokenizer ------------------------------------------------------------------------------------------
def test_the_tokenizer_check_is_lxmerts(tmp_path):
    from data_modules.tokenization import load_tokenizer

    folder = tmp_path / "uncased"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(35)]]))
    backbone = ViltBackbone(tiny_config())
    backbone.check_tokenizer(load_tokenizer(folder, do_lower_case=True), 40)
    with pytest.raises(ValueError, match="40 tokens.*the ViLT has 41 word rows"):
        backbone.check_tokenizer(load_tokenizer(folder, do_lower_case=True), 41)
    with pytest.raises(ValueError, match="do_lower_case=True"):
        backbone.check_tokenizer(load_tokenizer(folder, do_lower_case=False), 40)


# -- the task module ------------------------------------------------------------------------------------
def test_head_sizes_and_setup_skip_the_region_size_check():
    from types import SimpleNamespace

    from lightning_vl.training.module import VLModule

    module = VLModule(task="vqa", backbone=ViltBackbone(tiny_config()), labels=["a", "b", "c"])
    sizes = module.backbone.head_sizes()
    assert (sizes.hidden_size, sizes.vocab_size, sizes.img_dim) == (16, 40, 0)
    # a pixel backbone: the region-feature size check is skipped (the data's img_dim is regions')
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=None, img_dim=2048))
    module.setup("fit")


@pytest.mark.parametrize("task,head", [("vqa", "mlp"), ("nlvr2", "paired-mlp"), ("nlvr2", "paired"),
                                       ("nlvr2", "paired-attn")])
def test_a_task_module_trains_a_step_on_pixels(task, head):
    """Loss finite, gradients on every prunable weight, and on every trainable parameter (what DDP
    without the unused-parameter search needs; the pooler is frozen under paired-attn)."""
    from lightning_vl.training.module import VLModule

    torch.manual_seed(0)
    labels = ["a", "b", "c"] if task == "vqa" else None
    module = VLModule(task=task, backbone=ViltBackbone(tiny_config(hidden_dropout_prob=0.1)), head=head, labels=labels)
    module.train()
    if task == "vqa":
        batch = {**make_batch(), "targets": torch.rand(3, 3)}
    else:  # two rows per pair, same statement, left image type 1 and right image type 2
        assert module.backbone.embeddings.token_type_embeddings.num_embeddings == 3
        batch = make_batch(txt_lens=(5, 5, 4, 4), sizes=((64, 48), (32, 64), (64, 64), (48, 32)))
        batch["input_ids"][1], batch["input_ids"][3] = batch["input_ids"][0], batch["input_ids"][2]
        batch.update(img_type_ids=torch.tensor([1, 2, 1, 2]), targets=torch.tensor([0, 1]))
    loss = module.training_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    params = dict(module.named_parameters())
    for name in module.prunable_parameter_names():
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    missing = sorted(n for n, p in params.items() if p.requires_grad and p.grad is None)
    assert not missing, missing
    assert params["vilt.pooler.dense.weight"].requires_grad == (head != "paired-attn")
    if head == "paired-mlp":
        # the paired-mlp head: the two rows' pooled outputs side by side, ViLT's NLVR2 "pair" input
        out = module.backbone(batch)
        first = module.head.logit_fc[0]
        torch.testing.assert_close(first(out.pooled.reshape(2, -1))[0], first(torch.cat([out.pooled[0], out.pooled[1]])))
        assert module.backbone.embeddings.token_type_embeddings.weight.grad[2].abs().sum() > 0


# -- configs ----------------------------------------------------------------------------------------------
def sizes(name: str) -> dict:
    model = yaml.safe_load((ROOT / "configs/model" / name).read_text())["model"]["backbone"]
    assert model["class_path"] == "lightning_vl.model.vilt.ViltBackbone"
    return model["init_args"]["config"]


def test_base_config_is_vilt_b32s():
    base = ViltBackboneConfig(**sizes("vilt-b32.yaml"))
    assert base == ViltBackboneConfig()
    hf = base.to_hf()
    defaults = type(hf)()
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "image_size", "patch_size", "max_position_embeddings", "modality_type_vocab_size", "max_image_length"):
        assert getattr(hf, field) == getattr(defaults, field), field  # transformers' defaults: dandelin/vilt-b32-mlm
    assert (hf.hidden_size, hf.num_hidden_layers, hf.patch_size, hf.image_size, hf.vocab_size) == (768, 12, 32, 384, 30522)


def test_tiny_config_fits_the_demo_world():
    uniter = yaml.safe_load((ROOT / "configs/model/uniter-tiny.yaml").read_text())["model"]["uniter"]
    tiny = ViltBackboneConfig(**sizes("vilt-tiny.yaml"))
    assert tiny.vocab_size == uniter["vocab_size"] and tiny.max_image_length == -1
    backbone = ViltBackbone(tiny).eval()
    side = tiny.image_size
    batch = make_batch(sizes=((side, side), (side, side - tiny.patch_size), (side - tiny.patch_size, side)),
                       vocab=tiny.vocab_size)
    out = backbone(batch)
    assert out.sequence.shape == (3, 7 + 1 + (side // tiny.patch_size) ** 2, tiny.hidden_size)


def test_the_cli_reads_the_vilt_configs(capsys):
    from lightning_vl.cli import main

    for name in ("vilt-tiny.yaml", "vilt-b32.yaml"):
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config", str(ROOT / "configs/task/nlvr2.yaml"), "--config", str(ROOT / "configs/model" / name),
                  "--config", str(ROOT / "configs/demo.yaml"), "--config", str(ROOT / "configs/demo/nlvr2.yaml"),
                  "--print_config"])
        assert exit_.value.code in (0, None)
        model = yaml.safe_load(capsys.readouterr().out)["model"]
        assert model["backbone"]["class_path"] == "lightning_vl.model.vilt.ViltBackbone"
        assert ViltBackboneConfig(**model["backbone"]["init_args"]["config"]) == ViltBackboneConfig(**sizes(name))
