"""Pruning: the Mask object, pure pruning functions, and the masked-training callback."""
from .mask import Mask
from .masked_training import MaskedTraining, broadcast_mask
from .pruning import magnitude_prune, mask_overlap, random_prune, shuffle_mask, sparsity_schedule

__all__ = [
    "Mask",
    "MaskedTraining",
    "broadcast_mask",
    "magnitude_prune",
    "mask_overlap",
    "random_prune",
    "shuffle_mask",
    "sparsity_schedule",
]
