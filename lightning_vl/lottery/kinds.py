"""The kinds of branch (``--branch.kind``), each a small object: the mask it fine-tunes and the
weights it starts from. ``BranchRunner`` (``branches.py``) asks the kind; ``BranchConfig`` takes its
choices from ``BRANCH_KINDS``; the study grid validates against it.

Adding a kind is one class here, decorated with ``@branch_kind``::

    @branch_kind
    class DenseKind(BranchKind):
        \"\"\"no mask: the level's start weights fine-tuned dense\"\"\"
        name = "dense"

        def mask(self, cfg, source):
            return Mask.ones_like(dict(source.mask.items()))

        def start(self, module, source):
            module.load_state_dict(source.start_weights())
            return []

A branch folder is ``<kind>-<hash>`` (``transfer-<task>-<hash>`` for kinds that train another
task); the kind's name is part of the branch's identity hash.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from lightning_vl.pruning import Mask, random_prune, shuffle_mask


class BranchKind:
    """One kind of branch of a trained level (``source``: a ``branches.SourceLevel``).

    Subclasses set ``name`` and override what differs: ``mask`` (default: the level's own mask),
    ``start`` (default: the module as built, i.e. its own ``init``) and ``check``.

    Example:
        >>> BRANCH_KINDS["shuffle"].uses_strategy, BRANCH_KINDS["transfer"].other_task
        (False, True)

    Raises:
        TypeError: from ``branch_kind``, for a class without a ``name``.
        ValueError: from ``branch_kind``, for a name already registered.
    """

    name: ClassVar[str] = ""
    uses_strategy: ClassVar[bool] = False  # ``--branch.strategy`` (global / layerwise) applies
    other_task: ClassVar[bool] = False  # trains another task than the source's (``--task``, ``transfer-<task>``)

    def check(self, cfg, source, module_init) -> None:
        """Refuse a branch that would repeat its source (raise ``ValueError``); ``module_init``: the
        module's ``model.init``."""

    def mask(self, cfg, source) -> Mask:
        """The mask the branch fine-tunes."""
        return source.mask

    def start(self, module, source) -> list[str]:
        """Load the branch's start weights into ``module``; returns notes for the result
        (``partial_transfer``)."""
        return []

    def __repr__(self) -> str:
        return f"<branch kind {self.name}>"


BRANCH_KINDS: dict[str, BranchKind] = {}


def branch_kind(cls: type[BranchKind]) -> type[BranchKind]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (in definition order,
    the order ``--branch.kind`` lists them)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a name")
    if cls.name in BRANCH_KINDS:
        raise ValueError(f"branch kind {cls.name!r} is registered twice")
    BRANCH_KINDS[cls.name] = cls()
    return cls


class _FromLevelStart(BranchKind):
    def start(self, module, source) -> list[str]:
        module.load_state_dict(source.start_weights())
        return []


@branch_kind
class RandomKind(_FromLevelStart):
    """a random mask at the level's sparsity (global, or ``layerwise``: every tensor at it); the
    level's start weights θ_i and φ (Table 1, row 5)"""
    name = "random"
    uses_strategy = True

    def mask(self, cfg, source) -> Mask:
        dense = Mask.ones_like({k: t for k, t in source.mask.items()})
        return random_prune(dense, source.mask.sparsity, torch.Generator().manual_seed(cfg.seed),
                            layerwise=cfg.strategy == "layerwise")


@branch_kind
class ShuffleKind(_FromLevelStart):
    """the level's mask shuffled within each tensor (keeps each tensor's sparsity); the level's
    start weights"""
    name = "shuffle"

    def mask(self, cfg, source) -> Mask:
        return shuffle_mask(source.mask, torch.Generator().manual_seed(cfg.seed), layerwise=True)


@branch_kind
class ReinitKind(BranchKind):
    """the level's mask on the model's own ``init``: a BERT folder (θ'_0, row 6), ``shuffled:<θ_0>``
    (θ''_0, row 7) or none (fresh random)"""
    name = "reinit"

    def check(self, cfg, source, module_init) -> None:
        if module_init == source.config.get("model", {}).get("init"):
            raise ValueError(f"branch kind reinit needs another --model.init than the source's "
                             f"({module_init!r}): a BERT folder, shuffled:<file> or null (fresh random init)")


@branch_kind
class TicketKind(_FromLevelStart):
    """the level's mask and start weights: the ticket itself, trained again with other settings
    (e.g. ``--model.adversarial.enabled true``)"""
    name = "ticket"


@branch_kind
class TransferKind(BranchKind):
    """the level's mask; the source's θ_i in the core, the target task's head fresh (another task's
    config)"""
    name = "transfer"
    other_task = True

    def start(self, module, source) -> list[str]:
        return transfer_core(module, source.start_weights())


def transfer_core(module, source: dict[str, torch.Tensor]) -> list[str]:
    """Load the source's core weights into ``module`` (a ``Prunable``; not its head). A table that
    grew or shrank between tasks (token types, VCR's extra words) gets the rows both have; the rest
    keeps the module's own init. Returns what was only partly copied."""
    own = module.state_dict()
    partial, state = [], {}
    for k, v in own.items():
        if module.is_head_parameter(k) or k not in source:
            continue
        src = source[k]
        if src.shape == v.shape:
            state[k] = src
        elif src.dim() == v.dim() and src.shape[1:] == v.shape[1:]:
            rows = min(src.shape[0], v.shape[0])
            merged = v.detach().cpu().clone()
            merged[:rows] = src[:rows]
            state[k] = merged
            partial.append(f"{k} ({rows} of {v.shape[0]} rows)")
        else:
            raise ValueError(f"transfer: {k} has shape {tuple(src.shape)} in the source, {tuple(v.shape)} here: "
                             "the two tasks do not share a core")
    module.load_state_dict(state, strict=False)
    return partial
