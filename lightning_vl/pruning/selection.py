"""Pruning as pure functions: from (scores, current mask, target sparsity) to a new mask, the
scores of the built-in strategies, and the checks every new mask passes.

Nothing here touches a model, a trainer or a file. Counts are exact integers (``prune_count``);
ties are broken by position (the earlier entry is pruned first); a new mask is always a subset of
the mask it is pruned from. Three granularities of comparison (``prune_by_scores``):

* ``global``: one threshold over the whole prunable set (BERT-Tickets' choice, the study's);
* ``tensor``: every tensor pruned to the level's sparsity on its own;
* ``row``:    every output row of every weight matrix (the last dimension is the row) pruned to the
  level's sparsity on its own (Wanda's per-output comparison).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

import torch

from .mask import Mask
from .schedules import prune_count

Granularity = Literal["global", "tensor", "row"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)


# ---- selection ----------------------------------------------------------------------------------
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
        torch.where(mask[k].reshape(-1).cpu(), s.detach().reshape(-1).float().cpu(), -1.0)
        for k, s in zip(names, scores)
    ])
    if not bool(torch.isfinite(flat).all()):
        bad = [k for k, s in zip(names, scores) if not bool(torch.isfinite(s).all())]
        raise ValueError(f"pruning scores are not finite (NaN or inf) in {bad[:5]}: the model diverged")
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


def _select_rows(score: torch.Tensor, kept: torch.Tensor, sparsity: float, name: str) -> torch.Tensor:
    """Every row (last dimension) of one tensor pruned to ``sparsity`` on its own: in each row the
    lowest scores go, already-pruned entries first, ties by position (a stable sort)."""
    rows = kept.reshape(-1, kept.shape[-1]) if kept.dim() else kept.reshape(1, 1)
    flat = torch.where(rows.cpu(), score.detach().reshape(rows.shape).float().cpu(), -1.0)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"pruning scores are not finite (NaN or inf) in {[name]}: the model diverged")
    width = rows.shape[1]
    n_pruned = (~rows.cpu()).sum(1).clamp(min=prune_count(width, sparsity))
    order = torch.sort(flat, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(width).expand_as(order).contiguous())
    return (rank >= n_pruned[:, None]).reshape(kept.shape).to(kept.device)


def _granularity(layerwise: bool, granularity: Granularity | None) -> Granularity:
    if granularity is None:
        return "tensor" if layerwise else "global"
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; one of {GRANULARITIES}")
    return granularity


def prune_by_scores(scores: Mapping[str, torch.Tensor], mask: Mask, sparsity: float, layerwise: bool = False,
                    granularity: Granularity | None = None) -> Mask:
    """Prune ``mask`` to ``sparsity`` by lowest score: one global threshold, every tensor
    (``layerwise``, i.e. ``granularity="tensor"``) or every row (``granularity="row"``) to the
    same sparsity."""
    granularity = _granularity(layerwise, granularity)
    if granularity == "global":
        return _select([scores[k] for k in mask.keys()], mask, prune_count(mask.num_total, sparsity))
    if granularity == "row":
        return Mask({k: _select_rows(scores[k], t, sparsity, k) for k, t in mask.items()})
    out = {}
    for k, t in mask.items():
        n_pruned = max(prune_count(t.numel(), sparsity), t.numel() - int(t.sum()))
        out[k] = _select([scores[k]], Mask({k: t}), n_pruned)[k]
    return Mask(out)


# ---- scores -------------------------------------------------------------------------------------
def magnitude_scores(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: w.detach().abs() for k, w in weights.items()}


def lamp_scores(weights: Mapping[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """LAMP (Lee et al., ICLR 2021): within each tensor, the u-th kept weight in ascending |w|
    scores w_u² / Σ_{v ≥ u} w_v², so every tensor keeps its largest weight (score 1) and one global
    threshold gives layer-adaptive sparsities. Pruned entries score 0."""
    out = {}
    for k, m in mask.items():
        w2 = weights[k].detach().float().reshape(-1).cpu() ** 2
        kept = m.reshape(-1).cpu()
        values = w2[kept]
        order = torch.argsort(values, stable=True)
        ranked = values[order]
        suffix = ranked.flip(0).cumsum(0).flip(0)
        score = torch.zeros_like(values)
        score[order] = ranked / suffix.clamp(min=torch.finfo(torch.float32).tiny)
        full = torch.zeros_like(w2)
        full[kept] = score
        out[k] = full.reshape(m.shape)
    return out


def snip_scores(weights: Mapping[str, torch.Tensor], gradients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SNIP (Lee et al., ICLR 2019): connection sensitivity |w · ∂L/∂w| at initialisation."""
    return {k: (w.detach().float() * gradients[k].detach().float().to(w.device)).abs() for k, w in weights.items()}


def random_scores(mask: Mask, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.rand(t.shape, generator=generator) for k, t in mask.items()}


# ---- the classic entry points (the study's IMP step as a function; random pruning and shuffling) --
def magnitude_prune(weights: Mapping[str, torch.Tensor], mask: Mask, sparsity: float) -> Mask:
    """Global magnitude pruning: drop the smallest |w| across all masked tensors until the mask
    reaches ``sparsity`` (one threshold for the whole prunable set, BERT-Tickets' choice)."""
    mask.validate(weights, "magnitude_prune")
    return prune_by_scores(magnitude_scores({k: weights[k] for k in mask.keys()}), mask, sparsity)


def random_prune(mask: Mask, sparsity: float, generator: torch.Generator, layerwise: bool = False) -> Mask:
    """Random pruning of the still-kept entries up to ``sparsity``: across all tensors at once
    (BERT-Tickets' ``RandomUnstructured``) or every tensor at the same sparsity (``layerwise``)."""
    return prune_by_scores(random_scores(mask, generator), mask, sparsity, layerwise)


def shuffle_mask(reference: Mask, generator: torch.Generator, layerwise: bool = True) -> Mask:
    """A random mask with the reference's counts: per tensor (open_lth's ``layerwise``) or only
    globally. The control for "is it the positions IMP chose, or just the per-layer sparsity?"."""
    dense = Mask.ones_like({k: v.cpu() for k, v in reference.items()})
    scores = random_scores(dense, generator)
    if not layerwise:
        return _select([scores[k] for k in dense.keys()], dense, reference.num_total - reference.num_kept)
    return Mask({k: _select([scores[k]], Mask({k: dense[k]}), t.numel() - int(t.sum()))[k]
                 for k, t in reference.items()})


# ---- checks -------------------------------------------------------------------------------------
def expected_pruned(base: Mask, sparsity: float, layerwise: bool = False,
                    granularity: Granularity | None = None) -> int:
    """How many weights a mask pruned from ``base`` to ``sparsity`` must have pruned."""
    granularity = _granularity(layerwise, granularity)
    if granularity == "global":
        return prune_count(base.num_total, sparsity)
    if granularity == "row":
        total = 0
        for t in base._tensors.values():
            rows = t.reshape(-1, t.shape[-1]) if t.dim() else t.reshape(1, 1)
            total += int((~rows.cpu()).sum(1).clamp(min=prune_count(rows.shape[1], sparsity)).sum())
        return total
    return sum(max(prune_count(t.numel(), sparsity), t.numel() - int(t.sum())) for t in base._tensors.values())


def check_mask(mask: Mask, base: Mask, sparsity: float, layerwise: bool = False, name: str = "pruning",
               granularity: Granularity | None = None) -> None:
    """The achieved sparsity of a new mask is its target's, and it never revives a weight of ``base``."""
    pruned, want = mask.num_total - mask.num_kept, expected_pruned(base, sparsity, layerwise, granularity)
    if pruned != want:
        raise RuntimeError(f"{name}: the new mask prunes {pruned:,} of {mask.num_total:,} weights, its target "
                           f"{sparsity:.4%} needs {want:,}")
    revived = [k for k in mask.keys() if bool((mask[k].cpu() & ~base[k].cpu()).any())]
    if revived:
        raise RuntimeError(f"{name}: the new mask keeps weights its base had pruned, in {revived[:3]}")
