"""Independent, deliberately plain reference of UNITER's forward pass — used by tests only.

Written from UNITER's public code (github.com/ChenRocks/UNITER: the backbone in ``model/model.py``
and ``model/layer.py``, the NLVR2 heads in ``model/nlvr2.py`` and ``model/attention.py``, the
pre-training heads in ``model/pretrain.py``, the batch layout in ``data/data.py``) with explicit
matmuls and softmaxes: no transformers, no project code. Everything here is eval mode (dropout is
the identity). The file names in the comments below are paths in that repository.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LN_EPS = 1e-12  # every UNITER LayerNorm (model/model.py, model/layer.py)


# --- primitives ---------------------------------------------------------------------------------

def _linear(sd: dict, name: str, x: Tensor) -> Tensor:
    """torch Linear: weight stored (out, in), as in UNITER's state dicts."""
    return torch.matmul(x, sd[name + ".weight"].transpose(0, 1)) + sd[name + ".bias"]


def _layer_norm(sd: dict, name: str, x: Tensor) -> Tensor:
    """LN with biased variance and eps inside the sqrt (= apex FusedLayerNorm, which UNITER uses)."""
    mu = x.mean(dim=-1, keepdim=True)
    var = (x - mu).pow(2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + LN_EPS) * sd[name + ".weight"] + sd[name + ".bias"]


def _gelu_erf(x: Tensor) -> Tensor:
    """GELU(x) = x * 0.5 * (1 + erf(x / sqrt 2)) (model/layer.py: gelu)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _softmax(scores: Tensor) -> Tensor:
    """Explicit, max-shifted softmax over the last dim."""
    e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, L, H) -> (B, heads, L, H/heads): head k owns columns [k*d, (k+1)*d)."""
    b, n, h = x.shape
    return x.reshape(b, n, num_heads, h // num_heads).permute(0, 2, 1, 3)


def _merge_heads(x: Tensor) -> Tensor:
    b, nh, n, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, nh * d)


# --- backbone (model/model.py: UniterModel) ------------------------------------------------------

def reference_uniter_forward(sd: dict, batch: dict, num_heads: int, prefix: str = "uniter.") -> Tensor:
    """Last encoder layer output (R, Ltot, H) of UniterModel in joint mode, eval mode."""
    p = prefix
    ids = batch["input_ids"]
    rows, lt_max = ids.shape
    txt_types = batch.get("txt_type_ids")
    txt_types = torch.zeros_like(ids) if txt_types is None else txt_types
    type_table = sd[p + "embeddings.token_type_embeddings.weight"]

    # UniterTextEmbeddings: LN(word[ids] + pos[position_ids] + type[txt_type_ids])
    word = sd[p + "embeddings.word_embeddings.weight"][ids]
    pos = sd[p + "embeddings.position_embeddings.weight"][batch["position_ids"]]  # (1, Lt, H) broadcasts
    txt = _layer_norm(sd, p + "embeddings.LayerNorm", word + pos + type_table[txt_types])

    # UniterImageEmbeddings: LN(LN_img(W f) + LN_pos(W_pos p7) + TEXT type table[img_type_ids]); no 1-D position
    feat, pos7 = batch["img_feat"], batch["img_pos_feat"]
    img_types = batch.get("img_type_ids")
    img_types = torch.ones(feat.shape[:2], dtype=torch.long) if img_types is None else img_types
    ie = p + "img_embeddings."
    f = _layer_norm(sd, ie + "img_layer_norm", _linear(sd, ie + "img_linear", feat))
    q = _layer_norm(sd, ie + "pos_layer_norm", _linear(sd, ie + "pos_linear", pos7))
    img = _layer_norm(sd, ie + "LayerNorm", f + q + type_table[img_types])

    # UniterModel._compute_img_txt_embeddings: gather cat([T, I]) along positions with gather_index expanded over H
    joint = torch.cat([txt, img], dim=1)
    idx = batch["gather_index"].unsqueeze(-1).expand(-1, -1, joint.shape[-1])
    x = torch.gather(joint, 1, idx)
    ext_mask = (1.0 - batch["attn_masks"].to(x.dtype))[:, None, None, :] * -10000.0  # keys only

    # model/layer.py: post-LN BERT layers; the count is inferred from the keys
    layer_ids = {int(k[len(p + "encoder.layer."):].split(".")[0]) for k in sd if k.startswith(p + "encoder.layer.")}
    assert layer_ids == set(range(len(layer_ids))), layer_ids
    d = x.shape[-1] // num_heads
    for n in range(len(layer_ids)):
        lp = f"{p}encoder.layer.{n}."
        qh = _split_heads(_linear(sd, lp + "attention.self.query", x), num_heads)
        kh = _split_heads(_linear(sd, lp + "attention.self.key", x), num_heads)
        vh = _split_heads(_linear(sd, lp + "attention.self.value", x), num_heads)
        scores = torch.matmul(qh, kh.transpose(-1, -2)) / math.sqrt(d) + ext_mask
        ctx = _merge_heads(torch.matmul(_softmax(scores), vh))
        attn_out = _layer_norm(sd, lp + "attention.output.LayerNorm",
                               _linear(sd, lp + "attention.output.dense", ctx) + x)
        inter = _gelu_erf(_linear(sd, lp + "intermediate.dense", attn_out))
        x = _layer_norm(sd, lp + "output.LayerNorm", _linear(sd, lp + "output.dense", inter) + attn_out)
    return x


def reference_pooler(sd: dict, seq: Tensor, prefix: str = "uniter.") -> Tensor:
    """model/layer.py BertPooler: tanh(pooler.dense(h[:, 0]))."""
    return torch.tanh(_linear(sd, prefix + "pooler.dense", seq[:, 0]))


# --- NLVR2 heads (model/nlvr2.py) -------------------------------------------------------------

def reference_nlvr2_paired(sd: dict, pooled: Tensor, head_prefix: str = "") -> Tensor:
    """UniterForNlvr2Paired: pooled (2B, H) -> view(B, 2H) -> nlvr2_output Linear(2H->2)."""
    b2, h = pooled.shape
    return _linear(sd, head_prefix + "nlvr2_output", pooled.reshape(b2 // 2, 2 * h))


def _packed_mha(sd: dict, name: str, query: Tensor, kv: Tensor, key_pad: Tensor, num_heads: int) -> Tensor:
    """UNITER's copy of the pre-2019 nn.MultiheadAttention (model/attention.py): packed in_proj split q|k|v,
    q scaled by 1/sqrt(head_dim) after its bias, -inf on padded keys, softmax, out_proj."""
    h = query.shape[-1]
    w, b = sd[name + ".in_proj_weight"], sd[name + ".in_proj_bias"]
    q = torch.matmul(query, w[0:h].transpose(0, 1)) + b[0:h]
    k = torch.matmul(kv, w[h:2 * h].transpose(0, 1)) + b[h:2 * h]
    v = torch.matmul(kv, w[2 * h:3 * h].transpose(0, 1)) + b[2 * h:3 * h]
    q = q * (h // num_heads) ** -0.5
    scores = torch.matmul(_split_heads(q, num_heads), _split_heads(k, num_heads).transpose(-1, -2))
    scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
    ctx = _merge_heads(torch.matmul(_softmax(scores), _split_heads(v, num_heads)))
    return _linear(sd, name + ".out_proj", ctx)


def _attn_pool(sd: dict, name: str, x: Tensor, pad: Tensor) -> Tensor:
    """model/nlvr2.py AttentionPool: score = ReLU(Linear(H->1)(x)) + pad * -1e4, softmax over positions."""
    score = torch.relu(_linear(sd, name + ".fc.0", x)).squeeze(-1) + pad.to(x.dtype) * -1e4
    return torch.matmul(_softmax(score).unsqueeze(1), x).squeeze(1)


def reference_nlvr2_paired_attn(sd: dict, seq: Tensor, attn_masks: Tensor, num_heads: int,
                                head_prefix: str = "") -> Tensor:
    """UniterForNlvr2PairedAttn: rows 2k (left) / 2k+1 (right); bi-directional attention, shared fc,
    attention pooling, nlvr2_output on cat([left_pooled, right_pooled]) -> (B, 2)."""
    hp = head_prefix
    b2, n, h = seq.shape
    left, right = seq.reshape(b2 // 2, 2 * n, h).chunk(2, dim=1)
    left_pad, right_pad = (attn_masks == 0).reshape(b2 // 2, 2 * n).chunk(2, dim=1)
    l2r = _packed_mha(sd, hp + "attn1", left, right, right_pad, num_heads)
    r2l = _packed_mha(sd, hp + "attn2", right, left, left_pad, num_heads)
    left = torch.relu(_linear(sd, hp + "fc.0", torch.cat([l2r, left], dim=-1)))
    right = torch.relu(_linear(sd, hp + "fc.0", torch.cat([r2l, right], dim=-1)))
    pooled = torch.cat([_attn_pool(sd, hp + "attn_pool", left, left_pad),
                        _attn_pool(sd, hp + "attn_pool", right, right_pad)], dim=-1)
    return _linear(sd, hp + "nlvr2_output", pooled)


# --- fixtures -----------------------------------------------------------------------------------

def uniter_state_dict_shapes(hidden=768, layers=12, intermediate=3072, vocab=28996, img_dim=2048,
                             type_vocab=2, nlvr2_head=None, max_pos=512) -> dict:
    """Key -> shape of UniterModel under prefix `uniter.` (model/model.py), plus an NLVR2 head (model/nlvr2.py)."""
    H, u = hidden, "uniter."
    s = {u + "embeddings.word_embeddings.weight": (vocab, H),
         u + "embeddings.position_embeddings.weight": (max_pos, H),
         u + "embeddings.token_type_embeddings.weight": (type_vocab, H),
         u + "embeddings.LayerNorm.weight": (H,), u + "embeddings.LayerNorm.bias": (H,),
         u + "img_embeddings.img_linear.weight": (H, img_dim), u + "img_embeddings.img_linear.bias": (H,),
         u + "img_embeddings.img_layer_norm.weight": (H,), u + "img_embeddings.img_layer_norm.bias": (H,),
         u + "img_embeddings.pos_layer_norm.weight": (H,), u + "img_embeddings.pos_layer_norm.bias": (H,),
         u + "img_embeddings.pos_linear.weight": (H, 7), u + "img_embeddings.pos_linear.bias": (H,),
         u + "img_embeddings.mask_embedding.weight": (2, img_dim),
         u + "img_embeddings.LayerNorm.weight": (H,), u + "img_embeddings.LayerNorm.bias": (H,)}
    for n in range(layers):
        lp = f"{u}encoder.layer.{n}."
        for lin, (o, i) in [("attention.self.query", (H, H)), ("attention.self.key", (H, H)),
                            ("attention.self.value", (H, H)), ("attention.output.dense", (H, H)),
                            ("intermediate.dense", (intermediate, H)), ("output.dense", (H, intermediate))]:
            s[lp + lin + ".weight"], s[lp + lin + ".bias"] = (o, i), (o,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            s[lp + ln + ".weight"], s[lp + ln + ".bias"] = (H,), (H,)
    s[u + "pooler.dense.weight"], s[u + "pooler.dense.bias"] = (H, H), (H,)
    if nlvr2_head == "paired-attn":
        for a in ("attn1", "attn2"):
            s[a + ".in_proj_weight"], s[a + ".in_proj_bias"] = (3 * H, H), (3 * H,)
            s[a + ".out_proj.weight"], s[a + ".out_proj.bias"] = (H, H), (H,)
        s["fc.0.weight"], s["fc.0.bias"] = (H, 2 * H), (H,)
        s["attn_pool.fc.0.weight"], s["attn_pool.fc.0.bias"] = (1, H), (1,)
    if nlvr2_head in ("paired", "paired-attn"):
        s["nlvr2_output.weight"], s["nlvr2_output.bias"] = (2, 2 * H), (2,)
    elif nlvr2_head is not None:
        raise ValueError(f"unknown nlvr2_head {nlvr2_head!r}")
    return s


def _random_fill(shapes: dict, g: torch.Generator) -> dict:
    """Non-trivial values: matrices N(0, max(0.05, fan_in^-1/2)) so pre-activations are O(1) even at
    tiny sizes (embedding tables N(0, 0.05)), vectors (biases) N(0, 0.05), LayerNorm weights 1 + N(0, 0.1)."""
    out = {}
    for k, shape in shapes.items():
        noise = torch.randn(shape, generator=g, dtype=torch.float32)
        if len(shape) == 2:
            is_table = "embedding" in k
            out[k] = noise * (0.05 if is_table else max(0.05, shape[1] ** -0.5))
        elif k.endswith(".weight"):  # 1-D weight = LayerNorm gain
            out[k] = 1.0 + 0.1 * noise
        else:
            out[k] = 0.05 * noise
    return out


def make_uniter_state_dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=28996, img_dim=2048,
                           type_vocab=2, nlvr2_head=None, seed=0, max_pos=512) -> dict:
    """Random float32 state dict with UNITER's exact key names and shapes (model/model.py). `heads` does not
    change any shape; it is accepted (and checked) so callers can pass the whole config."""
    assert hidden % heads == 0, (hidden, heads)
    shapes = uniter_state_dict_shapes(hidden, layers, intermediate, vocab, img_dim, type_vocab, nlvr2_head, max_pos)
    return _random_fill(shapes, torch.Generator().manual_seed(seed))


def released_checkpoint_extras(sd: dict, img_label_dim: int = 1601, seed: int = 123) -> dict:
    """sd plus the UniterForPretraining heads a released uniter-base.pt also holds (model/pretrain.py):
    cls.predictions.* (decoder tied to word embeddings), feat_regress.* (weight tied to img_linear),
    region_classifier.*, itm_output.* — 20 extra tensors; tied entries are stored as equal copies."""
    vocab, H = sd["uniter.embeddings.word_embeddings.weight"].shape
    img_dim = sd["uniter.img_embeddings.img_linear.weight"].shape[1]
    shapes = {"cls.predictions.bias": (vocab,),
              "cls.predictions.transform.dense.weight": (H, H), "cls.predictions.transform.dense.bias": (H,),
              "cls.predictions.transform.LayerNorm.weight": (H,), "cls.predictions.transform.LayerNorm.bias": (H,),
              "feat_regress.net.0.weight": (H, H), "feat_regress.net.0.bias": (H,),
              "feat_regress.net.2.weight": (H,), "feat_regress.net.2.bias": (H,),
              "feat_regress.bias": (img_dim,),
              "region_classifier.net.0.weight": (H, H), "region_classifier.net.0.bias": (H,),
              "region_classifier.net.2.weight": (H,), "region_classifier.net.2.bias": (H,),
              "region_classifier.net.3.weight": (img_label_dim, H), "region_classifier.net.3.bias": (img_label_dim,),
              "itm_output.weight": (2, H), "itm_output.bias": (2,)}
    out = dict(sd)
    out.update(_random_fill(shapes, torch.Generator().manual_seed(seed)))
    out["cls.predictions.decoder.weight"] = sd["uniter.embeddings.word_embeddings.weight"].clone()
    out["feat_regress.weight"] = sd["uniter.img_embeddings.img_linear.weight"].clone()
    return out


def build_gather_index(txt_lens: list, num_bbs: list, lt_max: int, ltot: int) -> Tensor:
    """data/data.py get_gather_index, plain loops: identity per row, then [tl, tl+nb) <- [Lt_max, Lt_max+nb)."""
    rows = []
    for tl, nb in zip(txt_lens, num_bbs):
        row = list(range(ltot))
        for j in range(nb):
            row[tl + j] = lt_max + j
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def make_batch(R: int, vocab=99, img_dim=24, seed=0, max_txt=9, max_boxes=7, nlvr2_img_types=False) -> dict:
    """Padded batch in the layout of UNITER's collate functions (data/*.py) with varying text lengths (incl. [CLS]/[SEP], >= 3)
    and box counts (>= 1). 7-d positions [x1,y1,x2,y2,w,h,w*h] normalised to [0, 1] (UniterImageEmbeddings).
    img_type_ids: ones, or with nlvr2_img_types 1 / 2 for even / odd rows and 0 on padding (data/nlvr2.py)."""
    g = torch.Generator().manual_seed(seed)
    txt_lens = [int(torch.randint(3, max_txt + 1, (1,), generator=g)) for _ in range(R)]
    num_bbs = [int(torch.randint(1, max_boxes + 1, (1,), generator=g)) for _ in range(R)]
    lt_max, nb_max = max(txt_lens), max(num_bbs)
    ltot = max(t + b for t, b in zip(txt_lens, num_bbs))
    input_ids = torch.zeros(R, lt_max, dtype=torch.long)
    img_feat = torch.zeros(R, nb_max, img_dim)
    img_pos_feat = torch.zeros(R, nb_max, 7)
    img_type_ids = torch.ones(R, nb_max, dtype=torch.long)
    attn_masks = torch.zeros(R, ltot, dtype=torch.long)
    for i, (tl, nb) in enumerate(zip(txt_lens, num_bbs)):
        input_ids[i, :tl] = torch.randint(1, vocab, (tl,), generator=g)
        img_feat[i, :nb] = torch.randn(nb, img_dim, generator=g).abs()  # BUTD features are >= 0
        xs = torch.rand(nb, 2, generator=g).sort(dim=1).values
        ys = torch.rand(nb, 2, generator=g).sort(dim=1).values
        w, h = xs[:, 1] - xs[:, 0], ys[:, 1] - ys[:, 0]
        img_pos_feat[i, :nb] = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1], w, h, w * h], dim=1)
        if nlvr2_img_types:
            img_type_ids[i] = 0
            img_type_ids[i, :nb] = 1 + i % 2
        attn_masks[i, :tl + nb] = 1
    return {"input_ids": input_ids, "position_ids": torch.arange(lt_max).unsqueeze(0),
            "img_feat": img_feat, "img_pos_feat": img_pos_feat, "img_type_ids": img_type_ids,
            "attn_masks": attn_masks, "gather_index": build_gather_index(txt_lens, num_bbs, lt_max, ltot),
            "txt_lens": txt_lens, "num_bbs": num_bbs}


def _numel(shapes: dict, start: str = "") -> int:
    return sum(math.prod(s) for k, s in shapes.items() if k.startswith(start))


if __name__ == "__main__":
    # get_gather_index on a worked example
    gi = build_gather_index([5, 8, 4], [3, 6, 2], lt_max=8, ltot=14)
    assert gi.tolist() == [[0, 1, 2, 3, 4, 8, 9, 10, 8, 9, 10, 11, 12, 13], list(range(14)),
                           [0, 1, 2, 3, 8, 9, 6, 7, 8, 9, 10, 11, 12, 13]], gi
    # key counts of UNITER-base and -large (shapes only), then a materialised base dict
    base = uniter_state_dict_shapes()
    assert (len(base), _numel(base)) == (210, 109_898_752)
    assert _numel(base, "uniter.embeddings.") == 22_665_216 and _numel(base, "uniter.img_embeddings.") == 1_588_480
    assert _numel(base, "uniter.encoder.") == 85_054_464 and _numel(base, "uniter.pooler.") == 590_592
    enc_w = {k: s for k, s in base.items() if k.startswith("uniter.encoder.") and len(s) == 2}
    assert (len(enc_w), _numel(enc_w)) == (72, 84_934_656)
    large = uniter_state_dict_shapes(1024, 24, 4096)
    assert (len(large), _numel(large)) == (402, 335_695_872)
    assert _numel({k: s for k, s in large.items() if k.startswith("uniter.encoder.") and len(s) == 2}) == 301_989_888
    sd = make_uniter_state_dict()
    assert len(sd) == 210 and sum(v.numel() for v in sd.values()) == 109_898_752
    assert {k: tuple(v.shape) for k, v in sd.items()} == base
    full = released_checkpoint_extras(sd)
    assert len(full) == 230 and torch.equal(full["cls.predictions.decoder.weight"], sd[
        "uniter.embeddings.word_embeddings.weight"])
    pa = uniter_state_dict_shapes(nlvr2_head="paired-attn", type_vocab=3)
    assert pa["attn1.in_proj_weight"] == (2304, 768) and pa["fc.0.weight"] == (768, 1536)
    # a tiny end-to-end run of every function
    tiny = make_uniter_state_dict(32, 3, 4, 64, 99, 24, type_vocab=3, nlvr2_head="paired-attn", seed=1)
    batch = make_batch(6, seed=3, nlvr2_img_types=True)
    seq = reference_uniter_forward(tiny, batch, num_heads=4)
    assert seq.shape == (6, batch["attn_masks"].shape[1], 32) and torch.isfinite(seq).all()
    logits = reference_nlvr2_paired_attn(tiny, seq, batch["attn_masks"], num_heads=4)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    assert reference_nlvr2_paired(tiny, reference_pooler(tiny, seq)).shape == (3, 2)
    print("ok: gather_index example; base 210 tensors / 109,898,752 params; large 402 / 335,695,872")
