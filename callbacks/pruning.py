"""The pruning algorithm: pure functions from (scores, current mask, target) to a new mask, and
the registry of pruning strategies built from them.

Nothing here touches a model, a trainer or a file. A *schedule* is the list of sparsities the
levels (rounds) train at, starting with 0 (the dense level):

* ``linear``    — each level removes ``rate`` of the *original* count: 0, 10%, 20%, … (the
  paper's tables, BERT-Tickets' loop);
* ``geometric`` — each level removes ``rate`` of what *remains*: 0, 10%, 19%, 27.1%, …
  (Algorithm 1's wording, open_lth).

A level's sparsity depends only on the schedule and its index, never on how far a run goes: the
target sparsity only says how many levels to run (up to the first level at or past it), so a run
taken further later continues the same levels. Counts are exact integers: a mask at sparsity
``s`` keeps ``total - round(s * total)`` weights; ties are broken by position.

A *strategy* (``STRATEGIES``) says which scores rank the weights and what they are pruned from:

==================  =========================================  ==============================
strategy            score of a weight                           pruned from
==================  =========================================  ==============================
``imp``             |w| after the level's fine-tuning           the previous level's mask
``omp``             |w| after the *dense* level's fine-tuning   the dense mask (one shot)
``lamp``            LAMP: w_u² / Σ_{|w_v|≥|w_u|} w_v², per      the previous level's mask
                    tensor, after the level's fine-tuning
``snip``            |w · ∂L/∂w| at θ_0 over a few batches       the dense mask (one shot)
``random``          uniform random                              the previous level's mask
``random-layerwise`` uniform random, every tensor at the        the previous level's mask
                    level's sparsity
==================  =========================================  ==============================

All but ``random-layerwise`` prune globally: one threshold over the whole prunable set.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from .mask import Mask

SCHEDULES = ("linear", "geometric")


# ---- schedules ----------------------------------------------------------------------------------
def schedule_level(level: int, schedule: str = "linear", rate: float = 0.1) -> float:
    """The sparsity of level ``level`` (0 = dense)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"pruning rate must be in (0, 1), got {rate}")
    value = level * rate if schedule == "linear" else 1.0 - (1.0 - rate) ** level
    return round(value, 12)


def sparsity_schedule(target: float, schedule: str = "linear", rate: float = 0.1) -> list[float]:
    """Sparsity of every level up to the first one at or past ``target``, the dense level included."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    levels = [schedule_level(0, schedule, rate)]
    while levels[-1] < target - 1e-9:
        nxt = schedule_level(len(levels), schedule, rate)
        if nxt >= 1.0 - 1e-9:
            raise ValueError(f"target sparsity {target} is past the last level of the {schedule} schedule with rate "
                             f"{rate} ({levels[-1]:.0%}); choose a target of at most {levels[-1]:g}")
        levels.append(nxt)
    return levels


def prune_count(total: int, sparsity: float) -> int:
    """How many of ``total`` weights are pruned at ``sparsity`` (the one rounding rule used)."""
    return int(round(sparsity * total))


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


def prune_by_scores(scores: Mapping[str, torch.Tensor], mask: Mask, sparsity: float, layerwise: bool = False) -> Mask:
    """Prune ``mask`` to ``sparsity`` by lowest score: one global threshold, or (``layerwise``)
    every tensor to the same sparsity."""
    if not layerwise:
        return _select([scores[k] for k in mask.keys()], mask, prune_count(mask.num_total, sparsity))
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


# ---- strategies ---------------------------------------------------------------------------------
@dataclass
class PruningInputs:
    """What a run can give a strategy; each strategy reads what its ``needs`` names.

    ``weights`` are the fine-tuned weights of the level the strategy prunes after (``imp``,
    ``lamp``) or of the dense level (``omp``); ``init_weights`` and ``gradients`` are θ_0 and
    ∂L/∂w at θ_0 (``snip``); ``generator`` seeds random masks.
    """

    weights: Optional[Mapping[str, torch.Tensor]] = None
    init_weights: Optional[Mapping[str, torch.Tensor]] = None
    gradients: Optional[Mapping[str, torch.Tensor]] = None
    generator: Optional[torch.Generator] = None


Needs = Literal["trained", "dense-trained", "init-gradients", "generator"]


@dataclass(frozen=True)
class Strategy:
    name: str
    needs: Needs
    one_shot: bool  # prune from the dense mask (True) or from the previous level's mask
    score: Callable[[PruningInputs, Mask], Mapping[str, torch.Tensor]]
    layerwise: bool = False
    description: str = ""

    def prune(self, inputs: PruningInputs, previous: Mask, sparsity: float) -> Mask:
        """The mask at ``sparsity``: from ``previous`` (iterative) or from dense (one shot)."""
        base = Mask.ones_like({k: t.cpu() for k, t in previous.items()}) if self.one_shot else previous
        missing = {"trained": inputs.weights, "dense-trained": inputs.weights,
                   "init-gradients": inputs.gradients, "generator": inputs.generator}[self.needs] is None
        if missing:
            raise ValueError(f"pruning strategy {self.name!r} needs {self.needs} inputs")
        mask = prune_by_scores(self.score(inputs, base), base, sparsity, self.layerwise)
        check_mask(mask, base, sparsity, self.layerwise, self.name)
        return mask


def expected_pruned(base: Mask, sparsity: float, layerwise: bool = False) -> int:
    """How many weights a mask pruned from ``base`` to ``sparsity`` must have pruned."""
    if not layerwise:
        return prune_count(base.num_total, sparsity)
    return sum(max(prune_count(t.numel(), sparsity), t.numel() - int(t.sum())) for t in base._tensors.values())


def check_mask(mask: Mask, base: Mask, sparsity: float, layerwise: bool = False, name: str = "pruning") -> None:
    """The achieved sparsity of a new mask is its target's, and it never revives a weight of ``base``."""
    pruned, want = mask.num_total - mask.num_kept, expected_pruned(base, sparsity, layerwise)
    if pruned != want:
        raise RuntimeError(f"{name}: the new mask prunes {pruned:,} of {mask.num_total:,} weights, its target "
                           f"{sparsity:.4%} needs {want:,}")
    revived = [k for k in mask.keys() if bool((mask[k].cpu() & ~base[k].cpu()).any())]
    if revived:
        raise RuntimeError(f"{name}: the new mask keeps weights its base had pruned, in {revived[:3]}")


def _trained_magnitude(inputs: PruningInputs, mask: Mask) -> Mapping[str, torch.Tensor]:
    return magnitude_scores(inputs.weights)


def _trained_lamp(inputs: PruningInputs, mask: Mask) -> Mapping[str, torch.Tensor]:
    return lamp_scores(inputs.weights, mask)


def _init_snip(inputs: PruningInputs, mask: Mask) -> Mapping[str, torch.Tensor]:
    return snip_scores(inputs.init_weights, inputs.gradients)


def _uniform(inputs: PruningInputs, mask: Mask) -> Mapping[str, torch.Tensor]:
    return random_scores(mask, inputs.generator)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("imp", "trained", False, _trained_magnitude,
             description="iterative global magnitude pruning (the study's IMP)"),
    Strategy("omp", "dense-trained", True, _trained_magnitude,
             description="one-shot global magnitude pruning of the dense fine-tuned weights"),
    Strategy("lamp", "trained", False, _trained_lamp,
             description="iterative pruning by LAMP scores (layer-adaptive magnitude)"),
    Strategy("snip", "init-gradients", True, _init_snip,
             description="one-shot SNIP: |w·∂L/∂w| at θ_0 over a few training batches"),
    Strategy("random", "generator", False, _uniform, description="random pruning, global"),
    Strategy("random-layerwise", "generator", False, _uniform, layerwise=True,
             description="random pruning, every tensor at the level's sparsity"),
]}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown pruning strategy {name!r}; one of {sorted(STRATEGIES)}") from None


# ---- the classic entry points (used by tests, branches and analysis) ---------------------------
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
