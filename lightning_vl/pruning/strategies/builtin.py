"""The study's strategies:

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

from collections.abc import Mapping, Sequence
from typing import Optional

import torch

from ..mask import Mask
from ..selection import lamp_scores, magnitude_scores, random_scores, snip_scores
from . import PruningInputs, PruningRun, Strategy, register


@register
class Imp(Strategy):
    """Iterative global magnitude pruning: |w| of the level's fine-tuned weights (the study's IMP)."""

    name = "imp"
    description = "iterative global magnitude pruning (the study's IMP)"

    def scores(self, inputs: PruningInputs, base: Mask) -> Mapping[str, torch.Tensor]:
        return magnitude_scores(inputs.weights)


@register
class Omp(Imp):
    """One-shot global magnitude pruning of the dense level's fine-tuned weights."""

    name = "omp"
    description = "one-shot global magnitude pruning of the dense fine-tuned weights"
    one_shot = True
    needs = "dense-trained weights"
    keeps_dense_weights = True

    def inputs(self, run: PruningRun) -> PruningInputs:
        return PruningInputs(weights=run.dense_weights())


@register
class Lamp(Strategy):
    """Iterative pruning by LAMP scores (Lee et al., ICLR 2021): layer-adaptive magnitude."""

    name = "lamp"
    description = "iterative pruning by LAMP scores (layer-adaptive magnitude)"

    def scores(self, inputs: PruningInputs, base: Mask) -> Mapping[str, torch.Tensor]:
        return lamp_scores(inputs.weights, base)


def snip_step(module: torch.nn.Module, batch) -> None:
    module.training_loss(batch).backward()


def snip_finish(names: Sequence[str]):
    """θ and the summed gradients of ``names``, as CPU copies."""
    def finish(module: torch.nn.Module) -> tuple[dict, dict]:
        params = {n: module.get_parameter(n) for n in names}
        weights = {n: p.detach().cpu().clone() for n, p in params.items()}
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().clone()
                 for n, p in params.items()}
        return weights, grads
    return finish


@register
class Snip(Strategy):
    """One-shot SNIP (Lee et al., ICLR 2019): |w · ∂L/∂w| at θ_0, the gradients summed over the
    first ``batches`` training batches (eval mode, no dropout noise). Computed once per run.

    Args:
        batches: training batches whose gradients are summed (``--imp.snip_batches`` sets it too).

    Raises:
        ValueError: ``batches`` < 1.
    """

    name = "snip"
    description = "one-shot SNIP: |w·∂L/∂w| at θ_0 over a few training batches"
    one_shot = True
    requires = ("init_weights", "gradients")
    needs = "init-gradients"

    def __init__(self, batches: int = 4):
        if batches < 1:
            raise ValueError(f"snip needs batches >= 1, got {batches}")
        self.batches = batches
        self._inputs: Optional[PruningInputs] = None

    def inputs(self, run: PruningRun) -> PruningInputs:
        if self._inputs is None:  # at θ_0: the same for every level
            weights, grads = run.calibrate(snip_step, snip_finish(run.names), self.batches, run.initial_state(),
                                           label="SNIP")
            self._inputs = PruningInputs(init_weights=weights, gradients=grads)
        return self._inputs

    def scores(self, inputs: PruningInputs, base: Mask) -> Mapping[str, torch.Tensor]:
        return snip_scores(inputs.init_weights, inputs.gradients)


@register
class Random(Strategy):
    """Random pruning of the kept weights, one global draw (seeded by the run's seed and level)."""

    name = "random"
    description = "random pruning, global"
    requires = ("generator",)
    needs = "generator"

    def inputs(self, run: PruningRun) -> PruningInputs:
        return PruningInputs(generator=run.generator())

    def scores(self, inputs: PruningInputs, base: Mask) -> Mapping[str, torch.Tensor]:
        return random_scores(base, inputs.generator)


@register
class RandomLayerwise(Random):
    """Random pruning, every tensor at the level's sparsity."""

    name = "random-layerwise"
    description = "random pruning, every tensor at the level's sparsity"
    granularity = "tensor"
