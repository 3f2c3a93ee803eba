"""Word-region alignment (WRA) by optimal transport, as UNITER's ITM pre-training adds it.

For a matched (or mismatched) caption-image pair, the cost of moving word ``i`` to region ``j`` is
``1 − cos(h_i, v_j)`` between their last-layer outputs; the transport plan ``T`` (rows: words,
columns: regions, uniform marginals) is found by IPOT, the inexact proximal point method of Xie et
al. (2019) with β = 0.5, 50 outer iterations and one inner step, **without gradient**; the distance
``Σ C ⊙ T`` is differentiable through the cost only. UNITER's ITM loss adds
``0.1 · (Σ d_pos − Σ d_neg) / (n_pos + n_neg)``: matched pairs should align cheaply, mismatched
ones should not (ChenRocks/UNITER ``model/ot.py``, ``model/pretrain.py``).
"""
from __future__ import annotations

import torch


def cosine_cost(txt: torch.Tensor, img: torch.Tensor, txt_pad: torch.Tensor, img_pad: torch.Tensor,
                eps: float = 1e-5) -> torch.Tensor:
    """(B, m, n) cost ``1 − cos`` between each row's words (B, m, H) and regions (B, n, H); 0 where
    either side is padding (``*_pad`` True)."""
    txt = txt / txt.norm(dim=-1, keepdim=True).clamp(min=eps)
    img = img / img.norm(dim=-1, keepdim=True).clamp(min=eps)
    cost = 1.0 - txt.matmul(img.transpose(1, 2))
    return cost.masked_fill(txt_pad[:, :, None] | img_pad[:, None, :], 0.0)


@torch.no_grad()
def ipot_plan(cost: torch.Tensor, txt_pad: torch.Tensor, img_pad: torch.Tensor, beta: float = 0.5,
              iterations: int = 50, inner: int = 1) -> torch.Tensor:
    """The IPOT transport plan (B, m, n) between each row's real words and regions (uniform
    marginals 1/m_i and 1/n_i; zero on padding). Computed in float32 with no gradient."""
    cost = cost.float()
    pair_pad = txt_pad[:, :, None] | img_pad[:, None, :]
    m = (~txt_pad).sum(1).clamp(min=1).float()[:, None]  # real words per row (B, 1)
    n = (~img_pad).sum(1).clamp(min=1).float()[:, None]  # real regions per row
    kernel = torch.exp(-cost / beta).masked_fill(pair_pad, 0.0)
    plan = torch.ones_like(cost).masked_fill(pair_pad, 0.0)
    sigma = (~txt_pad).float() / m  # (B, m)
    big = 1e4  # keeps padded entries of the scaling vectors at ~0
    for _ in range(iterations):
        q = kernel * plan
        for _ in range(inner):
            delta = 1.0 / (n * torch.einsum("bmn,bm->bn", q, sigma) + big * img_pad.float())
            sigma = 1.0 / (m * torch.einsum("bmn,bn->bm", q, delta) + big * txt_pad.float())
        plan = sigma[:, :, None] * q * delta[:, None, :]
    return plan.masked_fill(pair_pad, 0.0)


def ot_distance(txt: torch.Tensor, img: torch.Tensor, txt_pad: torch.Tensor, img_pad: torch.Tensor,
                beta: float = 0.5, iterations: int = 50) -> torch.Tensor:
    """(B,) Wasserstein distance ``Σ C ⊙ T`` per row; gradient flows through the cost only."""
    cost = cosine_cost(txt.float(), img.float(), txt_pad, img_pad)
    plan = ipot_plan(cost.detach(), txt_pad, img_pad, beta, iterations)
    return (cost * plan).sum(dim=(1, 2))


def split_text_and_regions(sequence: torch.Tensor, txt_lens, num_bbs) -> tuple[torch.Tensor, ...]:
    """Each row's text part (its first ``tl`` joint positions, [CLS]/[SEP] included) and region
    part (the next ``nb``), padded: ``(txt (B, m, H), img (B, n, H), txt_pad (B, m), img_pad (B, n))``."""
    device = sequence.device
    tl = torch.as_tensor(txt_lens, device=device)
    nb = torch.as_tensor(num_bbs, device=device)
    m, n = int(tl.max()), int(nb.max())
    word = torch.arange(m, device=device)[None, :]
    region = torch.arange(n, device=device)[None, :]
    txt_pad, img_pad = word >= tl[:, None], region >= nb[:, None]
    hidden = sequence.size(-1)
    txt = sequence[:, :m].masked_fill(txt_pad[..., None], 0.0)
    index = (tl[:, None] + region).clamp(max=sequence.size(1) - 1)
    img = sequence.gather(1, index[..., None].expand(-1, -1, hidden)).masked_fill(img_pad[..., None], 0.0)
    return txt, img, txt_pad, img_pad


def ot_loss(sequence: torch.Tensor, batch: dict, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UNITER's WRA term of an ITM batch and the mean distances of matched / mismatched pairs:
    ``((Σ d_pos − Σ d_neg) / B, mean d_pos, mean d_neg)``."""
    txt, img, txt_pad, img_pad = split_text_and_regions(sequence, batch["txt_lens"], batch["num_bbs"])
    distance = ot_distance(txt, img, txt_pad, img_pad)
    pos, neg = distance[targets == 1], distance[targets == 0]
    loss = (pos.sum() - neg.sum()) / distance.numel()
    nan = distance.new_tensor(float("nan"))
    return loss, (pos.mean() if pos.numel() else nan), (neg.mean() if neg.numel() else nan)
