"""The pruning core: masks, sparsity schedules, pure pruning functions, the strategy registry and the
collectives that share masks between ranks. Pure: it imports torch and numpy, never Lightning or
model code (``tests/test_pruning.py`` checks), so the lottery runner, branches, the masked-training
callback and the analysis all build on it.

* ``mask``:        ``Mask`` (bool tensors, bit-packed files) and ``PackedMask`` (the file reader);
* ``schedules``:   the sparsity of every level (``linear``, ``geometric``) and the one rounding rule;
* ``selection``:   exact-count selection by scores (global, per tensor, per row) and the checks;
* ``strategies/``: the registry: one small class per strategy (``builtin``, ``wanda``);
* ``distributed``: the few collectives (mask broadcast, barrier), no-ops without a process group.
"""
from .distributed import broadcast_mask
from .mask import Mask, PackedMask
from .schedules import SCHEDULES, prune_count, schedule_level, sparsity_schedule
from .selection import (check_mask, lamp_scores, magnitude_prune, prune_by_scores, random_prune,
                        shuffle_mask, snip_scores)
from .strategies import (STRATEGIES, PruningInputs, PruningRun, Strategy, describe, get_strategy, register,
                         strategy_class)

__all__ = [
    "Mask",
    "PackedMask",
    "PruningInputs",
    "PruningRun",
    "SCHEDULES",
    "STRATEGIES",
    "Strategy",
    "broadcast_mask",
    "check_mask",
    "describe",
    "get_strategy",
    "lamp_scores",
    "magnitude_prune",
    "prune_by_scores",
    "prune_count",
    "random_prune",
    "register",
    "schedule_level",
    "shuffle_mask",
    "snip_scores",
    "sparsity_schedule",
    "strategy_class",
]
