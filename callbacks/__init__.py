"""Lightning callbacks: training with a fixed pruning mask (``MaskedTraining``) and training health
(``TrainingHealth``). The pruning algorithm they serve is ``lightning_vl.pruning``."""
from .masked_training import MaskedTraining, PrunedWeightMoved

__all__ = ["MaskedTraining", "PrunedWeightMoved"]
