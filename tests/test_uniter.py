"""The UNITER core: released key names and shapes, checkpoint loading, and equality with an
independent reference implementation of UNITER's forward pass (tests/uniter_reference.py)."""
import pytest
import torch

from lightning_vl.model.checkpoints import read_state_dict
from lightning_vl.training.module import VLModule
from lightning_vl.model.uniter import UniterConfig, UniterModel, encoder_linear_names

from .uniter_reference import (
    make_batch,
    make_uniter_state_dict,
    reference_nlvr2_paired,
    reference_nlvr2_paired_attn,
    reference_pooler,
    reference_uniter_forward,
    released_checkpoint_extras,
)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64, img_dim=24, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


@pytest.fixture(scope="module")
def base_core():
    return UniterModel(UniterConfig())


def test_base_state_dict_has_uniters_names_shapes_and_counts(base_core):
    sd = base_core.state_dict()
    assert len(sd) == 210
    assert sum(v.numel() for v in sd.values()) == 109_898_752
    expected = {
        "embeddings.word_embeddings.weight": (28996, 768),
        "embeddings.position_embeddings.weight": (512, 768),
        "embeddings.token_type_embeddings.weight": (2, 768),
        "img_embeddings.img_linear.weight": (768, 2048),
        "img_embeddings.pos_linear.weight": (768, 7),
        "img_embeddings.mask_embedding.weight": (2, 2048),
        "img_embeddings.img_layer_norm.weight": (768,),
        "img_embeddings.pos_layer_norm.bias": (768,),
        "img_embeddings.LayerNorm.weight": (768,),
        "encoder.layer.11.attention.self.query.weight": (768, 768),
        "encoder.layer.0.attention.output.LayerNorm.bias": (768,),
        "encoder.layer.5.intermediate.dense.weight": (3072, 768),
        "encoder.layer.5.output.dense.weight": (768, 3072),
        "encoder.layer.5.output.LayerNorm.weight": (768,),
        "pooler.dense.weight": (768, 768),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not list(base_core.buffers())  # UNITER has no buffers (no position_ids buffer)


def test_prunable_set_is_the_72_encoder_linear_weights(base_core):
    names = encoder_linear_names(base_core.config)
    assert len(names) == 72
    total = sum(base_core.get_parameter(n[len("uniter."):]).numel() for n in names)
    assert total == 84_934_656


def test_reference_state_dict_matches_our_core_exactly_at_base_size(base_core):
    ref = make_uniter_state_dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=28996, img_dim=2048)
    ours = {f"uniter.{k}": v for k, v in base_core.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ref.items()} == {k: tuple(v.shape) for k, v in ours.items()}


@pytest.mark.parametrize("head", ["paired-attn", "paired"])
def test_forward_equals_independent_reference(head, tmp_path):
    torch.manual_seed(0)
    sd = make_uniter_state_dict(hidden=32, layers=3, heads=4, intermediate=64, vocab=99, img_dim=24,
                                type_vocab=3, nlvr2_head=head, seed=1)
    ckpt = tmp_path / "uniter.pt"
    torch.save({k: v.half() for k, v in sd.items()}, ckpt)  # released files may be fp16
    model = VLModule(uniter=UniterConfig(**TINY), head=head, init=str(ckpt)).eval()
    assert not model.init_report.missing and not model.init_report.unexpected
    sd32 = {k: v.half().float() for k, v in sd.items()}
    batch = make_batch(6, vocab=99, img_dim=24, seed=3, max_txt=9, max_boxes=7)
    batch["img_type_ids"] = batch["img_type_ids"] * 0 + torch.tensor([1, 2]).repeat(3)[:, None]
    with torch.no_grad():
        seq = model.uniter(batch["input_ids"], batch["position_ids"], batch["img_feat"], batch["img_pos_feat"],
                           batch["attn_masks"], batch["gather_index"], img_type_ids=batch["img_type_ids"])
        ref_seq = reference_uniter_forward(sd32, batch, num_heads=4)
        torch.testing.assert_close(seq, ref_seq, rtol=0, atol=2e-6)
        logits = model(batch)
        if head == "paired":
            ref_logits = reference_nlvr2_paired(sd32, reference_pooler(sd32, ref_seq))
        else:
            ref_logits = reference_nlvr2_paired_attn(sd32, ref_seq, batch["attn_masks"], num_heads=4)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=2e-6)


def test_released_checkpoint_loads_and_reports_pretraining_heads(tmp_path):
    sd = make_uniter_state_dict(hidden=32, layers=3, heads=4, intermediate=64, vocab=99, img_dim=24)
    sd = released_checkpoint_extras(sd)
    torch.save(sd, tmp_path / "uniter-tiny.pt")
    model = VLModule(uniter=UniterConfig(**TINY), init=str(tmp_path / "uniter-tiny.pt"))
    report = model.init_report
    assert any(k.startswith("cls.") for k in report.unexpected)
    assert any(k.startswith("itm_output") for k in report.unexpected)
    assert all(k.startswith("head.") for k in report.missing)
    # 2-row type table loaded, then extended as UNITER's init_type_embedding: row 2 = row 1
    types = model.uniter.embeddings.token_type_embeddings.weight
    assert types.shape[0] == 3
    torch.testing.assert_close(types[:2], sd["uniter.embeddings.token_type_embeddings.weight"])
    torch.testing.assert_close(types[2], types[1])
    torch.testing.assert_close(model.get_parameter("uniter.encoder.layer.2.output.dense.weight"),
                               sd["uniter.encoder.layer.2.output.dense.weight"])


def test_own_checkpoint_roundtrip(tmp_path):
    model = VLModule(uniter=UniterConfig(**TINY))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "own.ckpt")
    again = VLModule(uniter=UniterConfig(**TINY), init=str(tmp_path / "own.ckpt"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_shape_mismatch_is_a_clear_error(tmp_path):
    sd = make_uniter_state_dict(hidden=32, layers=3, heads=4, intermediate=64, vocab=99, img_dim=24)
    sd["uniter.img_embeddings.img_linear.weight"] = torch.zeros(32, 2048)
    torch.save(sd, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"wrong.pt.*img_linear.weight.*\(32, 2048\).*\(32, 24\)"):
        VLModule(uniter=UniterConfig(**TINY), init=str(tmp_path / "wrong.pt"))


def test_checkpoints_with_code_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"uniter.x": Evil()}, f)
    with pytest.raises(ValueError, match="evil.pt"):
        read_state_dict(tmp_path / "evil.pt")


def test_bert_directory_initialises_the_core_as_theta_prime_0(tmp_path):
    from transformers import BertConfig, BertForPreTraining

    bert = BertForPreTraining(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3,
                                         num_attention_heads=4, intermediate_size=64))
    bert.save_pretrained(tmp_path / "bert")
    model = VLModule(uniter=UniterConfig(**TINY), init=str(tmp_path / "bert"))
    bsd = bert.state_dict()
    for ours, theirs in [("uniter.encoder.layer.1.attention.self.key.weight", "bert.encoder.layer.1.attention.self.key.weight"),
                         ("uniter.embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight"),
                         ("uniter.pooler.dense.weight", "bert.pooler.dense.weight")]:
        torch.testing.assert_close(model.get_parameter(ours), bsd[theirs])
    report = model.init_report
    assert any(k.startswith("uniter.img_embeddings.") for k in report.missing)  # fresh image embedder
    assert any(k.startswith("cls.") for k in report.unexpected)


def test_shuffled_init_permutes_values_within_each_tensor(tmp_path):
    sd = make_uniter_state_dict(hidden=32, layers=3, heads=4, intermediate=64, vocab=99, img_dim=24)
    torch.save(sd, tmp_path / "u.pt")
    a = VLModule(uniter=UniterConfig(**TINY), init=f"shuffled:{tmp_path / 'u.pt'}", init_seed=1)
    b = VLModule(uniter=UniterConfig(**TINY), init=f"shuffled:{tmp_path / 'u.pt'}", init_seed=1)
    name = "uniter.encoder.layer.0.intermediate.dense.weight"
    shuffled, original = a.get_parameter(name).detach(), sd[name]
    assert not torch.equal(shuffled, original)
    assert torch.equal(shuffled.flatten().sort().values, original.flatten().sort().values)
    assert torch.equal(shuffled, b.get_parameter(name).detach())  # seeded
