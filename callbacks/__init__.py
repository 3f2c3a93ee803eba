"""Pruning: the Mask object, pure pruning functions and strategies, and the masked-training callback."""
from .distributed import broadcast_mask
from .mask import Mask
from .masked_training import MaskedTraining
from .pruning import (STRATEGIES, PruningInputs, Strategy, get_strategy, lamp_scores, magnitude_prune, mask_overlap,
                      random_prune, schedule_level, shuffle_mask, snip_scores, sparsity_schedule)

__all__ = [
    "Mask",
    "MaskedTraining",
    "PruningInputs",
    "STRATEGIES",
    "Strategy",
    "broadcast_mask",
    "get_strategy",
    "lamp_scores",
    "magnitude_prune",
    "mask_overlap",
    "random_prune",
    "schedule_level",
    "shuffle_mask",
    "snip_scores",
    "sparsity_schedule",
]
