"""An independent, deliberately plain re-implementation of UNITER's forward pass, for tests only.

Written from the specification (shared/reference/uniter-reference.md §1, §2.3) with explicit
tensor maths — no transformers, no project code — so that comparing it with ``lightning_vl``
catches mistakes in either. Eval mode only (no dropout).
"""
from __future__ import annotations

import math

import torch


def _ln(x, sd, prefix, eps=1e-12):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, eps inside the sqrt (§7)
    return (x - mean) / torch.sqrt(var + eps) * sd[f"{prefix}.weight"] + sd[f"{prefix}.bias"]


def _lin(x, sd, prefix):
    return x @ sd[f"{prefix}.weight"].t() + sd[f"{prefix}.bias"]


def _gelu(x):
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))  # erf form (§1.5)


def reference_uniter_forward(sd, batch, num_heads, prefix="uniter."):
    """Last-layer sequence (R, Ltot, H) — §1.2-§1.5."""
    p = prefix
    ids, pos = batch["input_ids"], batch["position_ids"]
    txt_types = batch.get("txt_type_ids")
    if txt_types is None:
        txt_types = torch.zeros_like(ids)
    types = sd[f"{p}embeddings.token_type_embeddings.weight"]
    # §1.2 text: LN(word + position + type)
    txt = sd[f"{p}embeddings.word_embeddings.weight"][ids]
    txt = txt + sd[f"{p}embeddings.position_embeddings.weight"][pos.expand_as(ids)]
    txt = _ln(txt + types[txt_types], sd, f"{p}embeddings.LayerNorm")
    # §1.3 image: LN(LN(W f) + LN(W_pos p7) + type[img_type]) with the TEXT type table
    feat, pos7 = batch["img_feat"], batch["img_pos_feat"]
    img_types = batch.get("img_type_ids")
    if img_types is None:
        img_types = torch.ones(feat.shape[:2], dtype=torch.long)
    f = _ln(_lin(feat, sd, f"{p}img_embeddings.img_linear"), sd, f"{p}img_embeddings.img_layer_norm")
    q = _ln(_lin(pos7, sd, f"{p}img_embeddings.pos_linear"), sd, f"{p}img_embeddings.pos_layer_norm")
    img = _ln(f + q + types[img_types], sd, f"{p}img_embeddings.LayerNorm")
    # §1.4 join: per row, pick positions of cat([text, image]) named by gather_index
    joint = torch.cat([txt, img], dim=1)
    gather = batch["gather_index"]
    x = torch.stack([joint[r, gather[r]] for r in range(joint.shape[0])])
    bias = (1.0 - batch["attn_masks"].float())[:, None, None, :] * -10000.0
    # §1.5 post-LN BERT layers
    n_layers = len({k.split(".")[3] for k in sd if k.startswith(f"{p}encoder.layer.")})
    rows, length, hidden = x.shape
    d = hidden // num_heads
    for i in range(n_layers):
        lp = f"{p}encoder.layer.{i}"

        def heads(t):
            return t.view(rows, length, num_heads, d).permute(0, 2, 1, 3)

        qh = heads(_lin(x, sd, f"{lp}.attention.self.query"))
        kh = heads(_lin(x, sd, f"{lp}.attention.self.key"))
        vh = heads(_lin(x, sd, f"{lp}.attention.self.value"))
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(d) + bias
        probs = torch.exp(scores - scores.max(-1, keepdim=True).values)
        probs = probs / probs.sum(-1, keepdim=True)
        ctx = (probs @ vh).permute(0, 2, 1, 3).reshape(rows, length, hidden)
        attn = _ln(_lin(ctx, sd, f"{lp}.attention.output.dense") + x, sd, f"{lp}.attention.output.LayerNorm")
        inter = _gelu(_lin(attn, sd, f"{lp}.intermediate.dense"))
        x = _ln(_lin(inter, sd, f"{lp}.output.dense") + attn, sd, f"{lp}.output.LayerNorm")
    return x


def reference_pooler(sd, seq, prefix="uniter."):
    """§1.6: tanh(W h[CLS] + b)."""
    return torch.tanh(_lin(seq[:, 0], sd, f"{prefix}pooler.dense"))


def reference_nlvr2_paired(sd, pooled, head_prefix=""):
    """§2.3 paired: the pair's two pooled vectors side by side → Linear(2H→2)."""
    return _lin(pooled.reshape(pooled.shape[0] // 2, -1), sd, f"{head_prefix}nlvr2_output")


def _mha(sd, prefix, query, key, key_pad, num_heads):
    """Packed-projection multi-head attention with -inf on padded keys (UNITER's copy of the
    pre-2019 torch MultiheadAttention)."""
    b, lq, h = query.shape
    d = h // num_heads
    w, bias = sd[f"{prefix}.in_proj_weight"], sd[f"{prefix}.in_proj_bias"]
    q = query @ w[:h].t() + bias[:h]
    k = key @ w[h:2 * h].t() + bias[h:2 * h]
    v = key @ w[2 * h:].t() + bias[2 * h:]
    q = q.view(b, -1, num_heads, d).transpose(1, 2) / math.sqrt(d)
    k = k.view(b, -1, num_heads, d).transpose(1, 2)
    v = v.view(b, -1, num_heads, d).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)).masked_fill(key_pad[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    ctx = (probs @ v).transpose(1, 2).reshape(b, lq, h)
    return _lin(ctx, sd, f"{prefix}.out_proj")


def reference_nlvr2_paired_attn(sd, seq, attn_masks, num_heads, head_prefix=""):
    """§2.3 paired-attn: bi-directional attention between the pair's rows, shared fc,
    attention pooling, Linear(2H→2)."""
    hp = head_prefix
    left, right = seq[0::2], seq[1::2]
    pad = attn_masks == 0
    left_pad, right_pad = pad[0::2], pad[1::2]
    l2r = _mha(sd, f"{hp}attn1", left, right, right_pad, num_heads)
    r2l = _mha(sd, f"{hp}attn2", right, left, left_pad, num_heads)
    left = torch.relu(_lin(torch.cat([l2r, left], -1), sd, f"{hp}fc.0"))
    right = torch.relu(_lin(torch.cat([r2l, right], -1), sd, f"{hp}fc.0"))

    def pool(x, pad_mask):
        score = torch.relu(_lin(x, sd, f"{hp}attn_pool.fc.0")).squeeze(-1) + pad_mask.float() * -1e4
        weights = torch.softmax(score, dim=1)
        return (weights.unsqueeze(-1) * x).sum(1)

    return _lin(torch.cat([pool(left, left_pad), pool(right, right_pad)], -1), sd, f"{hp}nlvr2_output")


# --- fixtures: state dicts with UNITER's names and shapes, batches with UNITER's layout ---------

def make_uniter_state_dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=28996,
                           img_dim=2048, type_vocab=2, nlvr2_head=None, seed=0, max_pos=512):
    """Random weights under UNITER's exact key names and shapes (§1.8)."""
    del heads  # shapes do not depend on the head count
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def w(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def ln(name, size):
        sd[f"{name}.weight"] = 1.0 + w(size, scale=0.1)
        sd[f"{name}.bias"] = w(size, scale=0.1)

    def lin(name, out, inp):
        sd[f"{name}.weight"] = w(out, inp)
        sd[f"{name}.bias"] = w(out, scale=0.02)

    u = "uniter."
    sd[f"{u}embeddings.word_embeddings.weight"] = w(vocab, hidden)
    sd[f"{u}embeddings.position_embeddings.weight"] = w(max_pos, hidden)
    sd[f"{u}embeddings.token_type_embeddings.weight"] = w(type_vocab, hidden)
    ln(f"{u}embeddings.LayerNorm", hidden)
    lin(f"{u}img_embeddings.img_linear", hidden, img_dim)
    ln(f"{u}img_embeddings.img_layer_norm", hidden)
    ln(f"{u}img_embeddings.pos_layer_norm", hidden)
    lin(f"{u}img_embeddings.pos_linear", hidden, 7)
    sd[f"{u}img_embeddings.mask_embedding.weight"] = w(2, img_dim)
    ln(f"{u}img_embeddings.LayerNorm", hidden)
    for i in range(layers):
        lp = f"{u}encoder.layer.{i}"
        for part in ("query", "key", "value"):
            lin(f"{lp}.attention.self.{part}", hidden, hidden)
        lin(f"{lp}.attention.output.dense", hidden, hidden)
        ln(f"{lp}.attention.output.LayerNorm", hidden)
        lin(f"{lp}.intermediate.dense", intermediate, hidden)
        lin(f"{lp}.output.dense", hidden, intermediate)
        ln(f"{lp}.output.LayerNorm", hidden)
    lin(f"{u}pooler.dense", hidden, hidden)
    if nlvr2_head == "paired":
        lin("nlvr2_output", 2, 2 * hidden)
    elif nlvr2_head == "paired-attn":
        for a in ("attn1", "attn2"):
            sd[f"{a}.in_proj_weight"] = w(3 * hidden, hidden)
            sd[f"{a}.in_proj_bias"] = w(3 * hidden, scale=0.02)
            lin(f"{a}.out_proj", hidden, hidden)
        lin("fc.0", hidden, 2 * hidden)
        lin("attn_pool.fc.0", 1, hidden)
        sd["attn_pool.fc.0.bias"] = torch.full((1,), 0.1)  # keep ReLU scores mostly positive
        lin("nlvr2_output", 2, 2 * hidden)
    return sd


def released_checkpoint_extras(sd, img_label_dim=1601):
    """Add the pre-training heads a released ``uniter-base.pt`` also holds (§3)."""
    g = torch.Generator().manual_seed(123)
    words = sd["uniter.embeddings.word_embeddings.weight"]
    vocab, hidden = words.shape
    img_dim = sd["uniter.img_embeddings.img_linear.weight"].shape[1]
    extra = {
        "cls.predictions.bias": torch.zeros(vocab),
        "cls.predictions.transform.dense.weight": torch.randn(hidden, hidden, generator=g),
        "cls.predictions.transform.dense.bias": torch.zeros(hidden),
        "cls.predictions.transform.LayerNorm.weight": torch.ones(hidden),
        "cls.predictions.transform.LayerNorm.bias": torch.zeros(hidden),
        "cls.predictions.decoder.weight": words.clone(),  # tied, stored as a copy
        "feat_regress.net.0.weight": torch.randn(hidden, hidden, generator=g),
        "feat_regress.net.0.bias": torch.zeros(hidden),
        "feat_regress.net.2.weight": torch.ones(hidden),
        "feat_regress.net.2.bias": torch.zeros(hidden),
        "feat_regress.weight": sd["uniter.img_embeddings.img_linear.weight"].clone(),
        "feat_regress.bias": torch.zeros(img_dim),
        "region_classifier.net.0.weight": torch.randn(hidden, hidden, generator=g),
        "region_classifier.net.0.bias": torch.zeros(hidden),
        "region_classifier.net.2.weight": torch.ones(hidden),
        "region_classifier.net.2.bias": torch.zeros(hidden),
        "region_classifier.net.3.weight": torch.randn(img_label_dim, hidden, generator=g),
        "region_classifier.net.3.bias": torch.zeros(img_label_dim),
        "itm_output.weight": torch.randn(2, hidden, generator=g),
        "itm_output.bias": torch.zeros(2),
    }
    return {**sd, **extra}


def gather_index_loops(txt_lens, num_bbs, max_txt, out_size):
    """§1.4 with plain loops: identity, then row i's regions moved right after its text."""
    gather = torch.arange(out_size).repeat(len(txt_lens), 1)
    for i, (tl, nb) in enumerate(zip(txt_lens, num_bbs)):
        for j in range(nb):
            gather[i, tl + j] = max_txt + j
    return gather


def make_batch(rows, vocab=99, img_dim=24, seed=0, max_txt=9, max_boxes=7):
    """A padded batch with varying text lengths and region counts (§5.4)."""
    g = torch.Generator().manual_seed(seed)
    txt_lens = torch.randint(3, max_txt + 1, (rows,), generator=g).tolist()
    num_bbs = torch.randint(1, max_boxes + 1, (rows,), generator=g).tolist()
    lt, nb = max(txt_lens), max(num_bbs)
    out = max(t + b for t, b in zip(txt_lens, num_bbs))
    ids = torch.zeros(rows, lt, dtype=torch.long)
    feat = torch.zeros(rows, nb, img_dim)
    pos = torch.zeros(rows, nb, 7)
    attn = torch.zeros(rows, out, dtype=torch.long)
    for i, (t, b) in enumerate(zip(txt_lens, num_bbs)):
        ids[i, :t] = torch.randint(1, vocab, (t,), generator=g)
        feat[i, :b] = torch.randn(b, img_dim, generator=g)
        box = torch.rand(b, 4, generator=g).sort(-1).values[:, [0, 2, 1, 3]]  # x1<x2, y1<y2
        wh = box[:, 2:] - box[:, :2]
        pos[i, :b] = torch.cat([box, wh, wh[:, :1] * wh[:, 1:]], -1)
        attn[i, : t + b] = 1
    return {
        "input_ids": ids,
        "position_ids": torch.arange(lt)[None],
        "img_feat": feat,
        "img_pos_feat": pos,
        "img_type_ids": torch.ones(rows, nb, dtype=torch.long),
        "attn_masks": attn,
        "gather_index": gather_index_loops(txt_lens, num_bbs, lt, out),
        "txt_lens": txt_lens,
        "num_bbs": num_bbs,
    }


if __name__ == "__main__":
    expected = torch.tensor([
        [0, 1, 2, 3, 4, 8, 9, 10, 8, 9, 10, 11, 12, 13],
        list(range(8)) + list(range(8, 14)),
        [0, 1, 2, 3, 8, 9, 6, 7, 8, 9, 10, 11, 12, 13],
    ])
    assert torch.equal(gather_index_loops([5, 8, 4], [3, 6, 2], 8, 14), expected)
    sd = make_uniter_state_dict()
    assert len(sd) == 210 and sum(v.numel() for v in sd.values()) == 109_898_752
    print("ok")
