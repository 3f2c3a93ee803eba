"""Lottery tickets: the round loop (``runner``), its settings (``config``), run identity
(``identity``), run folders (``folder``), one masked fine-tune (``fitting``), branches of a trained
level (``branches``) and what a run reports (``report``). The pruning algorithm itself — masks,
schedules, pure functions and the strategy registry — is ``lightning_vl/pruning/``."""
from .branches import BranchRunner, SourceLevel
from .config import BranchConfig, ImpConfig
from .folder import RunFolder
from .identity import config_hash, identity_hash, results_identity
from .prunable import Prunable
from .runner import LotteryRunner

__all__ = ["BranchConfig", "BranchRunner", "ImpConfig", "LotteryRunner", "Prunable", "RunFolder", "SourceLevel",
           "config_hash", "identity_hash", "results_identity"]
