"""Wanda: pruning by weights and activations (Sun et al., "A Simple and Effective Pruning Approach
for Large Language Models", ICLR 2024).

The score of weight ``W_ij`` of a linear layer ``y = x Wᵀ + b`` (output row ``i``, input feature
``j``) is ``|W_ij| · ‖X_j‖₂`` (the paper's Eq. 1), where ``‖X_j‖₂`` is the L2 norm of input feature
``j`` over every token of a few calibration batches passed through the model being pruned. The
paper compares weights *per output* (Section 3, "comparison group"): every output row loses the
same fraction of its weights; ``comparison="global"`` compares all prunable weights at once.

Here it prunes at every level like the other iterative strategies: the model is the level's
fine-tuned one (pruned weights zero), its input norms are measured on ``batches`` training batches
(eval mode, no gradients, forward hooks on the pruned Linear layers removed right after), and the
new mask is pruned from the previous level's, so pruned weights stay pruned. Counts are exact per
row (``round(s · in_features)`` of every row, or globally ``round(s · total)``), ties by position.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from ..mask import Mask
from . import PruningInputs, PruningRun, Strategy, register


@dataclass
class WandaInputs(PruningInputs):
    """``weights`` plus ``input_norms``: for every pruned weight ``name`` (of shape ``[out, in]``),
    the L2 norm of each of the layer's ``in`` input features over the calibration tokens."""

    input_norms: Optional[Mapping[str, torch.Tensor]] = None


def wanda_scores(weights: Mapping[str, torch.Tensor], input_norms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``|W_ij| · ‖X_j‖₂`` for every weight matrix (the norms broadcast over the output rows).

    Raises:
        ValueError: a norm vector whose length is not the weight's input size.
    """
    out = {}
    for k, w in weights.items():
        norm = input_norms[k].detach().float().cpu()
        if norm.shape != w.shape[-1:]:
            raise ValueError(f"wanda: the input norms of {k!r} have shape {tuple(norm.shape)}, its weight "
                             f"{tuple(w.shape)} takes {w.shape[-1]} input features")
        out[k] = w.detach().float().cpu().abs() * norm
    return out


class InputNorms:
    """Forward hooks that sum the squares of every input feature of the Linear layers owning the
    weights ``names`` (``<layer>.weight``), over every token; ``norms()`` gives ‖X_j‖₂ per weight.

    Example::

        with InputNorms(model, ["fc.weight"]) as hooks:
            model(x)
        norms = hooks.norms()  # {"fc.weight": tensor of fc.in_features}

    Raises:
        ValueError: a name that is not the ``weight`` of a ``torch.nn.Linear``.
    """

    def __init__(self, model: torch.nn.Module, names: Sequence[str]):
        self.layers: dict[str, torch.nn.Linear] = {}
        for name in names:
            path, _, leaf = name.rpartition(".")
            layer = model.get_submodule(path) if path else model
            if leaf != "weight" or not isinstance(layer, torch.nn.Linear):
                raise ValueError(f"wanda prunes Linear weights; {name!r} is not the weight of a torch.nn.Linear")
            self.layers[name] = layer
        self.sums: dict[str, torch.Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> "InputNorms":
        for name, layer in self.layers.items():
            self.handles.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, name: str):
        def hook(module, args, output) -> None:
            x = args[0].detach()
            squares = x.reshape(-1, x.shape[-1]).float().pow(2).sum(0)
            self.sums[name] = self.sums[name] + squares if name in self.sums else squares
        return hook

    def norms(self) -> dict[str, torch.Tensor]:
        missing = [n for n in self.layers if n not in self.sums]
        if missing:
            raise ValueError(f"wanda: the calibration batches never reached {missing[:3]}")
        return {n: s.sqrt().cpu() for n, s in self.sums.items()}


@register
class Wanda(Strategy):
    """Wanda (Sun et al., ICLR 2024): ``|W_ij| · ‖X_j‖₂`` with input norms from calibration batches
    through the level's model; per output row (the paper's comparison) or global.

    Args:
        batches: training batches whose tokens the input norms are taken over.
        comparison: ``row`` (every output row pruned to the level's sparsity, the paper's) or
            ``global`` (one threshold over all prunable weights).

    Example::

        lightning-vl prune … --imp.method wanda --imp.options '{batches: 8, comparison: row}'

    Raises:
        ValueError: ``batches`` < 1 or an unknown ``comparison``; a prunable weight that is not a
            Linear layer's; an empty training split.
    """

    name = "wanda"
    description = "Wanda: |w|·‖x‖₂ of its input feature over calibration batches, per output row"
    requires = ("weights", "input_norms")
    needs = "trained weights and input-norm"

    def __init__(self, batches: int = 8, comparison: Literal["row", "global"] = "row"):
        if batches < 1:
            raise ValueError(f"wanda needs batches >= 1, got {batches}")
        if comparison not in ("row", "global"):
            raise ValueError(f"wanda's comparison is row or global, got {comparison!r}")
        self.batches, self.comparison = batches, comparison
        self.granularity = comparison

    def inputs(self, run: PruningRun) -> WandaInputs:
        hooks: dict[str, InputNorms] = {}

        def step(model: torch.nn.Module, batch) -> None:
            if not hooks:
                hooks["h"] = InputNorms(model, run.names).__enter__()
            with torch.no_grad():
                model.training_loss(batch)

        def finish(model: torch.nn.Module) -> dict[str, torch.Tensor]:
            return hooks["h"].norms()

        try:
            norms = run.calibrate(step, finish, self.batches, label="wanda")
        finally:
            if hooks:
                hooks["h"].__exit__(None, None, None)  # no hooks outlive the calibration
        return WandaInputs(weights=run.trained_weights(), input_norms=norms)

    def scores(self, inputs: PruningInputs, base: Mask) -> Mapping[str, torch.Tensor]:
        return wanda_scores({k: inputs.weights[k] for k in base.keys()}, inputs.input_norms)
