"""The pruning algorithm: pure functions from (weights, current mask, target) to a new mask.

Nothing here touches a model, a trainer or a file. IMP = ``magnitude_prune`` between fine-tuning
rounds; the random baseline = ``random_prune`` with the same schedule. A schedule is the list of
sparsities the rounds train at, starting with 0 (the dense round):

* ``linear``    — each round removes 10% of the *original* count: 0, 10%, 20%, … (the paper's
  tables, BERT-Tickets' loop);
* ``geometric`` — each round removes 10% of what *remains*: 0, 10%, 19%, 27.1%, … (Algorithm 1's
  wording, open_lth).

Both stop at the target sparsity (the last step is clipped to it). Counts are exact integers:
a mask at sparsity ``s`` keeps ``total - round(s * total)`` weights.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .mask import Mask

SCHEDULES = ("linear", "geometric")


def sparsity_schedule(target: float, schedule: str = "linear", rate: float = 0.1) -> list[float]:
    """Sparsity of every round, the dense round 0 included."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"pruning rate must be in (0, 1), got {rate}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    levels = [0.0]
    eps = 1e-9
    while levels[-1] < target - eps:
        r = len(levels)
        nxt = r * rate if schedule == "linear" else 1.0 - (1.0 - rate) ** r
        levels.append(min(round(nxt, 12), target))
    return levels


def prune_count(total: int, sparsity: float) -> int:
    """How many of ``total`` weights are pruned at ``sparsity`` (the one rounding rule used)."""
    return int(round(sparsity * total))


def _select(scores: list[torch.Tensor], mask: Mask, n_pruned: int) -> Mask:
    """Keep all but the ``n_pruned`` lowest-scoring entries; already-pruned entries go first.

    Exact count, deterministic tie-breaking (by flat position), and the new mask is a subset of
    the old one.
    """
    names = list(mask.keys())
    total = mask.num_total
    already = total - mask.num_kept
    if not already <= n_pruned <= total:
        raise ValueError(f"cannot prune to {n_pruned} of {total} weights: {already} already pruned")
    flat = torch.cat([
        torch.where(mask[k].reshape(-1), s.detach().reshape(-1).float(), -1.0)
        for k, s in zip(names, scores)
    ])
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_pruned:
        threshold = flat.kthvalue(n_pruned).values
        below = flat < threshold
        ties = torch.nonzero(flat == threshold).squeeze(1)[: n_pruned - int(below.sum())]
        keep &= ~below
        keep[ties] = False
    out, offset = {}, 0
    for k in names:
        n = mask[k].numel()
        out[k] = keep[offset:offset + n].reshape(mask[k].shape).to(mask[k].device)
        offset += n
    return Mask(out)


def magnitude_prune(weights: Mapping[str, torch.Tensor], mask: Mask, sparsity: float) -> Mask:
    """Global magnitude pruning: drop the smallest |w| across all masked tensors until the mask
    reaches ``sparsity`` (one threshold for the whole prunable set, BERT-Tickets' choice)."""
    mask.validate(weights, "magnitude_prune")
    scores = [weights[k].detach().abs() for k in mask.keys()]
    return _select(scores, mask, prune_count(mask.num_total, sparsity))


def random_prune(
    mask: Mask,
    sparsity: float,
    generator: torch.Generator,
    layerwise: bool = False,
) -> Mask:
    """Random pruning of the still-kept entries up to ``sparsity``.

    ``layerwise=False`` draws positions across all tensors at once (BERT-Tickets'
    ``RandomUnstructured``); ``layerwise=True`` prunes every tensor to the same sparsity, so the
    per-layer distribution is uniform rather than whatever chance gives.
    """
    if not layerwise:
        scores = [torch.rand(mask[k].shape, generator=generator) for k in mask.keys()]
        return _select(scores, mask, prune_count(mask.num_total, sparsity))
    out = {}
    for k, t in mask.items():
        single = Mask({k: t.cpu()})
        score = [torch.rand(t.shape, generator=generator)]
        n_pruned = max(prune_count(t.numel(), sparsity), t.numel() - int(t.sum()))
        out[k] = _select(score, single, n_pruned)[k].to(t.device)
    return Mask(out)


def shuffle_mask(reference: Mask, generator: torch.Generator, layerwise: bool = True) -> Mask:
    """A random mask with the reference's counts: per tensor (open_lth's ``layerwise``) or only
    globally. The control for "is it the positions IMP chose, or just the per-layer sparsity?"."""
    dense = Mask.ones_like({k: v.cpu() for k, v in reference.items()})
    if layerwise:
        out = {}
        for k, t in reference.items():
            single = Mask({k: dense[k]})
            n_pruned = t.numel() - int(t.sum())
            score = [torch.rand(t.shape, generator=generator)]
            out[k] = _select(score, single, n_pruned)[k]
        return Mask(out)
    scores = [torch.rand(t.shape, generator=generator) for t in reference._tensors.values()]
    return _select(scores, dense, reference.num_total - reference.num_kept)


def mask_overlap(a: Mask, b: Mask) -> dict[str, float]:
    """Agreement of two masks' kept sets: IoU (Jaccard), overlap coefficient |A∩B|/min(|A|,|B|)
    and normalised Hamming distance, plus the IoU two independent random masks would have."""
    if a.keys() != b.keys():
        raise ValueError("masks cover different parameters")
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    differ = sum(int((a[k] ^ b[k]).sum()) for k in a)
    pa, pb = a.num_kept / a.num_total, b.num_kept / b.num_total
    return {
        "iou": inter / union if union else 1.0,
        "overlap": inter / max(1, min(a.num_kept, b.num_kept)),
        "hamming": differ / a.num_total,
        "iou_chance": (pa * pb) / (pa + pb - pa * pb) if (pa + pb) else 1.0,
    }
