"""Task heads on a backbone, one small module per head family.

A head is built from sizes (``HeadSizes``: hidden size, heads count, dropouts …; never a backbone's
config) and reads a ``BackboneOutput``: ``forward(output, batch)``. Parameter names inside each
head are UNITER's (``nlvr2_output``, ``attn1.in_proj_weight``, ...); the task module stores the head
under ``head.``, and checkpoint loading maps UNITER's top-level head keys onto it. Heads are never
pruned.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import BackboneOutput, HeadSizes


class AttentionPool(nn.Module):
    """Softmax pooling over positions with scores ReLU(w·x + b); padded positions get -1e4."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(hidden_size, 1), nn.ReLU())
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        score = self.fc(x).squeeze(-1) + pad_mask.to(x.dtype) * -1e4
        weights = self.dropout(F.softmax(score, dim=1))
        return weights.unsqueeze(1).matmul(x).squeeze(1)


class Nlvr2PairedHead(nn.Module):
    """NLVR2 ``paired``: concatenate the pooled [CLS] of the (left, right) rows → 2 logits."""

    uses_pooler = True
    uses_sequence = False  # the pooled [CLS] alone

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None):
        super().__init__()
        self.nlvr2_output = nn.Linear(2 * config.hidden_size, 2)

    def forward(self, output: BackboneOutput, batch: dict) -> torch.Tensor:
        n_pairs = output.pooled.size(0) // 2
        return self.nlvr2_output(output.pooled.reshape(n_pairs, -1))


class Nlvr2PairedAttnHead(nn.Module):
    """NLVR2 ``paired-attn`` (UNITER's released default): bi-directional attention between the two
    rows of a pair, a shared fc, attention pooling of each side, then Linear(2H→2)."""

    uses_pooler = False  # reads whole sequences; the core's pooler gets no gradient
    uses_sequence = True

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None):
        super().__init__()
        h, heads = config.hidden_size, config.num_attention_heads
        drop_attn, drop = config.attention_probs_dropout_prob, config.hidden_dropout_prob
        self.attn1 = nn.MultiheadAttention(h, heads, dropout=drop_attn, batch_first=True)
        self.attn2 = nn.MultiheadAttention(h, heads, dropout=drop_attn, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Dropout(drop))
        self.attn_pool = AttentionPool(h, drop_attn)
        self.nlvr2_output = nn.Linear(2 * h, 2)

    def forward(self, output: BackboneOutput, batch: dict) -> torch.Tensor:
        rows, length, hidden = output.sequence.shape
        left, right = output.sequence.reshape(rows // 2, 2 * length, hidden).chunk(2, dim=1)
        pad = (output.sequence_mask == 0).reshape(rows // 2, 2 * length)
        left_pad, right_pad = pad.chunk(2, dim=1)
        l2r, _ = self.attn1(left, right, right, key_padding_mask=right_pad, need_weights=False)
        r2l, _ = self.attn2(right, left, left, key_padding_mask=left_pad, need_weights=False)
        left = self.fc(torch.cat([l2r, left], dim=-1))
        right = self.fc(torch.cat([r2l, right], dim=-1))
        pooled = torch.cat([self.attn_pool(left, left_pad), self.attn_pool(right, right_pad)], -1)
        return self.nlvr2_output(pooled)


def _mlp(hidden: int, inner: int, out: int, act: type[nn.Module]) -> nn.Sequential:
    """UNITER's two-layer head: Linear → activation → LayerNorm(eps 1e-12) → Linear (keys .0/.2/.3)."""
    return nn.Sequential(nn.Linear(hidden, inner), act(), nn.LayerNorm(inner, eps=1e-12), nn.Linear(inner, out))


class Nlvr2PairedMlpHead(nn.Module):
    """NLVR2 ``paired-mlp``: LXMERT's released NLVR2 classifier — the pooled outputs of the (left,
    right) rows concatenated, then ``logit_fc`` = Linear(2H→2H)–GELU–LN–Linear(2H→2) (LXMERT's
    names and layout, keys ``logit_fc.0`` / ``.2`` / ``.3``)."""

    uses_pooler = True
    uses_sequence = False  # the pooled [CLS] alone

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None):
        super().__init__()
        h = 2 * config.hidden_size
        self.logit_fc = _mlp(h, h, 2, nn.GELU)

    def forward(self, output: BackboneOutput, batch: dict) -> torch.Tensor:
        n_pairs = output.pooled.size(0) // 2
        return self.logit_fc(output.pooled.reshape(n_pairs, -1))


class VqaHead(nn.Module):
    """VQA / GQA / SNLI-VE: ``vqa_output`` = Linear(H→2H)–GELU–LN–Linear(2H→A) on the pooled
    [CLS] (UNITER's VE model keeps the ``vqa_output`` names with A = 3)."""

    uses_pooler = True
    uses_sequence = False  # the pooled [CLS] alone

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None):
        super().__init__()
        if not num_labels:
            raise ValueError("the VQA-style head needs the label strings (model.labels): the CLI copies them from "
                             "the data module's answer vocabulary (ans2label file)")
        h = config.hidden_size
        self.vqa_output = _mlp(h, 2 * h, num_labels, nn.GELU)

    def forward(self, output: BackboneOutput, batch: dict) -> torch.Tensor:
        return self.vqa_output(output.pooled)


class VcrHead(nn.Module):
    """VCR: ``vcr_output`` = Linear(H→2H)–ReLU–LN–Linear(2H→2) per (question, candidate) row."""

    uses_pooler = True
    uses_sequence = False  # the pooled [CLS] alone

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None):
        super().__init__()
        h = config.hidden_size
        self.vcr_output = _mlp(h, 2 * h, 2, nn.ReLU)

    def forward(self, output: BackboneOutput, batch: dict) -> torch.Tensor:
        return self.vcr_output(output.pooled)


def region_outputs(sequence_output: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's region outputs, zero-padded to the batch's region count, and the padding mask.

    The joined sequence holds row i's regions at ``[tl_i, tl_i + nb_i)`` (see ``gather_index``)."""
    max_nb = batch["img_feat"].size(1)
    device = sequence_output.device
    tl = torch.as_tensor(batch["txt_lens"], device=device)[:, None]
    nb = torch.as_tensor(batch["num_bbs"], device=device)[:, None]
    slot = torch.arange(max_nb, device=device)[None, :]
    pad = slot >= nb
    pos = (tl + slot).clamp(max=sequence_output.size(1) - 1)
    regions = sequence_output.gather(1, pos.unsqueeze(-1).expand(-1, -1, sequence_output.size(-1)))
    return regions.masked_fill(pad.unsqueeze(-1), 0.0), pad


class RefExpHead(nn.Module):
    """Referring expressions: one score per region of the row, ``-1e4`` at padded regions.

    ``mlp2`` (RefCOCO+ config): ``re_output`` = Linear(H→H)–GELU–LN–Linear(H→1); ``mlp1``:
    ``re_output`` = Linear(H→1)."""

    uses_pooler = False
    uses_sequence = True

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None, layers: int = 2):
        super().__init__()
        h = config.hidden_size
        self.re_output = _mlp(h, h, 1, nn.GELU) if layers == 2 else nn.Linear(h, 1)

    def forward(self, output: BackboneOutput, batch: dict) -> torch.Tensor:
        regions, pad = region_outputs(output.sequence, batch)
        scores = self.re_output(regions).squeeze(-1)
        return scores.masked_fill(pad, -1e4)


class RefExpLinearHead(RefExpHead):
    """``mlp1``: the RefCOCO / RefCOCOg configs' single Linear(H→1)."""

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None):
        super().__init__(config, num_labels, layers=1)


class RankHead(nn.Module):
    """Image-text retrieval: ``rank_output`` = Linear(H→1) on the pooled [CLS], one score per
    (text, image) row. Started from UNITER's ITM head: its "match" row (``itm_output`` row 1)."""

    uses_pooler = True
    uses_sequence = False  # the pooled [CLS] alone

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None):
        super().__init__()
        self.rank_output = nn.Linear(config.hidden_size, 1)

    @staticmethod
    def adapt_init_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """UNITER's ``init_output``: ``rank_output := itm_output[1]`` when the file has no rank head."""
        if "rank_output.weight" in state or "itm_output.weight" not in state:
            return state
        state = dict(state)
        state["rank_output.weight"] = state["itm_output.weight"][1:2].clone()
        state["rank_output.bias"] = state["itm_output.bias"][1:2].clone()
        return state

    def forward(self, output: BackboneOutput, batch: dict) -> torch.Tensor:
        return self.rank_output(output.pooled).squeeze(-1)


def init_head_weights(head: nn.Module, std: float) -> None:
    """UNITER re-applies its init to the whole task model: N(0, std) Linear, zero bias, unit LN.

    ``MultiheadAttention.in_proj_weight`` is a raw Parameter UNITER leaves at xavier-uniform;
    torch's default init does the same, so it is left alone here too.
    """
    for module in head.modules():
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_bias is not None:
            module.in_proj_bias.data.zero_()
