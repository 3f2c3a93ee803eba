"""What a lottery experiment and a branch of it do (the *how* is ``runner`` and ``branches``).

Typed settings in the open_lth manner: every field documented, validated at construction, and
split by ``identity`` into what determines results (hashed into the run folder's name) and what
only says where results go or how far to run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from callbacks import STRATEGIES, sparsity_schedule

from .kinds import BRANCH_KINDS

# The choices of ``--imp.head_reset``, declared here only (the runner's ``_level_weights`` reads them).
HEAD_RESETS = {
    "init": "φ_0: the head re-initialised with the same seed",
    "rewind": "φ_i: the head at the rewind step",
    "keep": "the previous level's trained head (BERT-Tickets' behaviour)",
}
HeadReset = Literal[tuple(HEAD_RESETS)]  # the CLI's choices
BranchKindName = Literal[tuple(BRANCH_KINDS)]  # the CLI's choices: lightning_vl/lottery/kinds.py
PRUNABLE_PARTS = ("encoder", "pooler", "img_linear")


@dataclass
class ImpConfig:
    """A lottery experiment: levels of fine-tuning and pruning (``--imp.*``).

    Args:
        method: the pruning strategy (``callbacks.pruning.STRATEGIES``): ``imp`` (iterative global
            magnitude, the study's), ``omp`` (one-shot magnitude from the dense fine-tune),
            ``lamp``, ``snip`` (at θ_0), ``random`` (global) or ``random-layerwise``.
        target_sparsity: run levels up to the first one at or past this sparsity. Not part of the
            run's identity: a larger target later continues the same run folder.
        schedule: ``linear`` (``rate`` of the original count per level: the paper's 10%, 20%, …)
            or ``geometric`` (``rate`` of what remains: Algorithm 1's wording).
        rate: the per-level pruning fraction of the schedule.
        rewind_step: rewind to θ_i, the weights after this many optimizer steps of the dense
            level (0 = the initial weights θ_0).
        head_reset: the head at the start of each level (``HEAD_RESETS``): ``init`` (φ_0,
            re-initialised with the same seed), ``rewind`` (φ_i) or ``keep`` (the previous level's
            trained head, BERT-Tickets' behaviour).
        prunable: parts of the core to prune: ``encoder`` (72 Linear weights at base size),
            ``pooler``, ``img_linear``.
        snip_batches: training batches whose gradients SNIP sums at θ_0.
        root: folder that holds ``<task>/<method>-<hash>`` run folders.
        name: run folder name instead of ``<method>-<hash>``.
        wandb: W&B mode for the experiment run: ``offline`` (default), ``online`` or ``disabled``.
        wandb_project: W&B project name.
    """

    method: Literal["imp", "omp", "lamp", "snip", "random", "random-layerwise"] = "imp"
    target_sparsity: float = 0.7
    schedule: Literal["linear", "geometric"] = "linear"
    rate: float = 0.1
    rewind_step: int = 0
    head_reset: HeadReset = "init"
    prunable: list[str] = field(default_factory=lambda: ["encoder"])
    snip_batches: int = 4
    root: str = "runs"
    name: Optional[str] = None
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "lightning-vl"

    def __post_init__(self) -> None:
        if self.method not in STRATEGIES:
            raise ValueError(f"imp.method must be one of {sorted(STRATEGIES)}, got {self.method!r}")
        sparsity_schedule(self.target_sparsity, self.schedule, self.rate)  # validates
        if self.rewind_step < 0:
            raise ValueError(f"imp.rewind_step must be >= 0, got {self.rewind_step}")
        if self.head_reset not in HEAD_RESETS:
            raise ValueError(f"imp.head_reset must be one of {tuple(HEAD_RESETS)}, got {self.head_reset!r}")
        bad = [p for p in self.prunable if p not in PRUNABLE_PARTS]
        if bad or not self.prunable:
            raise ValueError(f"imp.prunable must be a non-empty list of {PRUNABLE_PARTS}, got {self.prunable}")
        if self.snip_batches < 1:
            raise ValueError(f"imp.snip_batches must be >= 1, got {self.snip_batches}")
        if self.head_reset == "rewind" and self.rewind_step == 0:
            self.head_reset = "init"  # φ_0 and φ_i coincide

    @property
    def levels(self) -> list[float]:
        return sparsity_schedule(self.target_sparsity, self.schedule, self.rate)


@dataclass
class BranchConfig:
    """A branch: one fine-tune of a variant of a trained level's ticket (``--branch.*``).

    Args:
        source: the level (round folder) of a lottery run the branch hangs off, e.g.
            ``runs/nlvr2/imp-1f3a9c2e/round_07``.
        kind: one of ``BRANCH_KINDS`` (``lightning_vl/lottery/kinds.py``): ``random`` (a random mask of the level's sparsity, weights as the level's),
            ``shuffle`` (the level's mask shuffled within each tensor), ``reinit`` (the level's mask
            on the model's own ``init``: θ'_0 BERT, θ''_0 ``shuffled:``, or none = a fresh random
            init), ``ticket`` (the level's own mask and start weights: the ticket trained again, e.g.
            adversarially for Table 3) or ``transfer`` (the level's mask and the source's rewind
            weights θ_i on another task; that task's head fresh).
        strategy: for ``random``: ``global`` (one random draw over all tensors) or ``layerwise``
            (every tensor at the level's sparsity).
        seed: seed of the random or shuffled mask.
        name: branch folder name instead of ``<kind>-<hash>``.
        wandb: W&B mode of the branch's run.
        wandb_project: W&B project name.
    """

    source: str = ""
    kind: BranchKindName = "random"
    strategy: Literal["global", "layerwise"] = "global"
    seed: int = 0
    name: Optional[str] = None
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "lightning-vl"

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("branch.source is required: a round folder of a lottery run (runs/<task>/<run>/round_NN)")
        if self.kind not in BRANCH_KINDS:
            raise ValueError(f"branch.kind must be one of {tuple(BRANCH_KINDS)}, got {self.kind!r}")
        if self.strategy not in ("global", "layerwise"):
            raise ValueError(f"branch.strategy must be global or layerwise, got {self.strategy!r}")
