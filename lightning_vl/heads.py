"""Task heads on the UNITER core, one small module per head family.

Parameter names inside each head are UNITER's (``nlvr2_output``, ``attn1.in_proj_weight``, ...);
the task module stores the head under ``head.``, and checkpoint loading maps UNITER's top-level
head keys onto it. Heads are never pruned.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .uniter import UniterConfig


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

    def __init__(self, config: UniterConfig):
        super().__init__()
        self.nlvr2_output = nn.Linear(2 * config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output, batch) -> torch.Tensor:
        n_pairs = pooled_output.size(0) // 2
        return self.nlvr2_output(pooled_output.reshape(n_pairs, -1))


class Nlvr2PairedAttnHead(nn.Module):
    """NLVR2 ``paired-attn`` (UNITER's released default): bi-directional attention between the two
    rows of a pair, a shared fc, attention pooling of each side, then Linear(2H→2)."""

    uses_pooler = False  # reads whole sequences; the core's pooler gets no gradient

    def __init__(self, config: UniterConfig):
        super().__init__()
        h, heads = config.hidden_size, config.num_attention_heads
        drop_attn, drop = config.attention_probs_dropout_prob, config.hidden_dropout_prob
        self.attn1 = nn.MultiheadAttention(h, heads, dropout=drop_attn, batch_first=True)
        self.attn2 = nn.MultiheadAttention(h, heads, dropout=drop_attn, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Dropout(drop))
        self.attn_pool = AttentionPool(h, drop_attn)
        self.nlvr2_output = nn.Linear(2 * h, 2)

    def forward(self, sequence_output, pooled_output, batch) -> torch.Tensor:
        rows, length, hidden = sequence_output.shape
        left, right = sequence_output.reshape(rows // 2, 2 * length, hidden).chunk(2, dim=1)
        pad = (batch["attn_masks"] == 0).reshape(rows // 2, 2 * length)
        left_pad, right_pad = pad.chunk(2, dim=1)
        l2r, _ = self.attn1(left, right, right, key_padding_mask=right_pad, need_weights=False)
        r2l, _ = self.attn2(right, left, left, key_padding_mask=left_pad, need_weights=False)
        left = self.fc(torch.cat([l2r, left], dim=-1))
        right = self.fc(torch.cat([r2l, right], dim=-1))
        pooled = torch.cat([self.attn_pool(left, left_pad), self.attn_pool(right, right_pad)], -1)
        return self.nlvr2_output(pooled)


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
