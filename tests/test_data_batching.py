"""UNITER batching: gather_index and the joined sequence."""
import random

import pytest
import torch

from data_modules.batching import collate_rows, get_gather_index
from lightning_vl.model.uniter import UniterConfig, UniterModel

from .uniter_reference import build_gather_index


def test_gather_index_reproduces_the_verified_example():
    expected = torch.tensor([
        [0, 1, 2, 3, 4, 8, 9, 10, 8, 9, 10, 11, 12, 13],
        list(range(14)),
        [0, 1, 2, 3, 8, 9, 6, 7, 8, 9, 10, 11, 12, 13],
    ])
    assert torch.equal(get_gather_index([5, 8, 4], [3, 6, 2], 8, 14), expected)


def test_gather_index_matches_a_loop_on_random_batches():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        rows = int(torch.randint(1, 7, (1,), generator=g))
        tl = torch.randint(2, 12, (rows,), generator=g).tolist()
        nb = torch.randint(1, 10, (rows,), generator=g).tolist()
        out = max(t + n for t, n in zip(tl, nb))
        assert torch.equal(get_gather_index(tl, nb, max(tl), out), build_gather_index(tl, nb, max(tl), out))


def rows(lengths):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(5, 50, (t,), generator=g), "img_feat": torch.randn(n, 6, generator=g),
             "img_pos_feat": torch.rand(n, 7, generator=g), "img_type_ids": torch.full((n,), 1 + i % 2)}
            for i, (t, n) in enumerate(lengths)]


def test_collate_pads_and_masks():
    batch = collate_rows(rows([(4, 3), (6, 1), (2, 5)]))
    assert batch["input_ids"].shape == (3, 6) and batch["img_feat"].shape == (3, 5, 6)
    # Ltot = max(tl + nb) = 7 for all three rows (UNITER's data/data.py:get_gather_index): no padding column.
    assert batch["attn_masks"].tolist() == [[1] * 7, [1] * 7, [1] * 7]
    assert batch["input_ids"][2, 2:].eq(0).all() and batch["img_feat"][1, 1:].eq(0).all()
    assert batch["img_type_ids"].tolist() == [[1, 1, 1, 0, 0], [2, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [list(range(6))]


def _capture_into(store: dict):
    """Pre-hook keeping the encoder's input; returns None (a returned value would replace it)."""
    def hook(module, args):
        store.setdefault("x", args[0])
    return hook


def test_joined_sequence_is_text_then_regions_per_row():
    """Through the model's own join: row i's embeddings = its text tokens then its regions."""
    cfg = UniterConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, img_dim=6, hidden_dropout_prob=0.0,
                       type_vocab_size=3)  # NLVR2's image types 1 and 2
    core = UniterModel(cfg).eval()
    rs = rows([(4, 3), (6, 1), (2, 5)])
    batch = collate_rows(rs)
    captured = {}
    h = core.encoder.register_forward_pre_hook(_capture_into(captured))
    core(batch["input_ids"], batch["position_ids"], batch["img_feat"], batch["img_pos_feat"],
         batch["attn_masks"], batch["gather_index"], img_type_ids=batch["img_type_ids"])
    h.remove()
    for i, r in enumerate(rs):
        single = collate_rows([r])
        one = {}
        h = core.encoder.register_forward_pre_hook(_capture_into(one))
        core(single["input_ids"], single["position_ids"], single["img_feat"], single["img_pos_feat"],
             single["attn_masks"], single["gather_index"], img_type_ids=single["img_type_ids"])
        h.remove()
        n = len(r["input_ids"]) + len(r["img_feat"])
        torch.testing.assert_close(captured["x"][i, :n], one["x"][0, :n])


def _tagged_rows(rng, count, dim=5):
    out = []
    for r in range(count):
        tl, nb = rng.randint(3, 9), rng.randint(0 if r else 1, 6)
        out.append({"input_ids": torch.randint(1, 100, (tl,)), "img_feat": torch.randn(nb, dim) + 10 * r,
                    "img_pos_feat": torch.rand(nb, 7), "img_type_ids": torch.full((nb,), 1 + r % 2),
                    "txt_type_ids": torch.zeros(tl, dtype=torch.long)})
    return out


def test_collate_random_rows_masks_padding_and_gather_without_holes():
    """Random rows (one without regions): masks, padding, and a gather over cat([text, image])
    that reads each row's own tokens, then its own regions, nothing in between."""
    rng = random.Random(1)
    for _ in range(20):
        rs = _tagged_rows(rng, rng.randint(1, 7))
        batch = collate_rows(rs)
        tls, nbs = [len(r["input_ids"]) for r in rs], [len(r["img_feat"]) for r in rs]
        lt, nb, ltot = max(tls), max(nbs), max(t + n for t, n in zip(tls, nbs))
        assert batch["txt_lens"] == tls and batch["num_bbs"] == nbs
        assert batch["attn_masks"].shape == batch["gather_index"].shape == (len(rs), ltot)
        assert batch["attn_masks"].dtype == batch["gather_index"].dtype == torch.long
        assert batch["txt_type_ids"].shape == (len(rs), lt) and batch["img_pos_feat"].shape == (len(rs), nb, 7)
        text = batch["input_ids"].float().unsqueeze(-1)
        image = batch["img_feat"][:, :, :1]
        joint = torch.gather(torch.cat([text, image], 1), 1, batch["gather_index"].unsqueeze(-1)).squeeze(-1)
        for i, r in enumerate(rs):
            tl, n = tls[i], nbs[i]
            assert batch["attn_masks"][i].tolist() == [1] * (tl + n) + [0] * (ltot - tl - n)
            assert batch["img_pos_feat"][i, n:].eq(0).all() and batch["img_type_ids"][i, n:].eq(0).all()
            assert torch.equal(joint[i, :tl], r["input_ids"].float())
            assert torch.equal(joint[i, tl:tl + n], r["img_feat"][:, 0])


def test_type_ids_are_optional_but_all_or_none():
    rs = _tagged_rows(random.Random(2), 3)
    plain = [{k: v for k, v in r.items() if not k.endswith("type_ids")} for r in rs]
    batch = collate_rows(plain)
    assert "img_type_ids" not in batch and "txt_type_ids" not in batch
    del rs[1]["img_type_ids"]
    with pytest.raises(ValueError, match="img_type_ids given for 2 of 3 rows"):
        collate_rows(rs)
    with pytest.raises(ValueError, match="empty"):
        collate_rows([])
