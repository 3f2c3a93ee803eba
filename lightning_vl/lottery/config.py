"""What a lottery experiment and a branch of it do (the *how* is ``runner`` and ``branches``).

Typed settings in the open_lth manner: every field documented, validated at construction, and
split by ``identity`` into what determines results (hashed into the run folder's name) and what
only says where results go or how far to run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from lightning_vl.pruning import STRATEGIES, Strategy, get_strategy, sparsity_schedule
from lightning_vl.pruning.schedules import Schedule
from lightning_vl.pruning.strategies import option_defaults

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
        method: the pruning strategy: a name of the registry (``lightning_vl.pruning.STRATEGIES``)
            or the ``module.Class`` path of a ``lightning_vl.pruning.Strategy`` subclass. Registered:
<STRATEGIES>
        options: the strategy's options (its ``__init__`` keyword arguments), e.g.
            ``--imp.options '{batches: 16, comparison: global}'`` for ``wanda``.
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
        snip_batches: training batches whose gradients SNIP sums at θ_0 (the ``snip`` strategy's
            ``batches`` option, unless ``options`` gives it).
        save_trained: keep every level's trained weights, the whole model (core and head), as
            ``round_NN/trained.pt`` beside its mask: the fine-tuned ticket itself. Not part of the
            run's identity. A round of the demo's tiny UNITER costs about 1 MB, of UNITER-base about
            0.5 GB (fp32), so it is on for ``make prune`` and off by default.
        root: folder that holds ``<task>/<method>-<hash>`` run folders.
        name: run folder name instead of ``<method>-<hash>``.
        wandb: W&B mode for the experiment run: ``offline`` (default), ``online`` or ``disabled``.
        wandb_project: W&B project name.
    """

    method: str = "imp"
    target_sparsity: float = 0.7
    schedule: Schedule = "linear"
    rate: float = 0.1
    rewind_step: int = 0
    head_reset: HeadReset = "init"
    prunable: list[str] = field(default_factory=lambda: ["encoder"])
    snip_batches: int = 4
    options: dict[str, Any] = field(default_factory=dict)
    save_trained: bool = False
    root: str = "runs"
    name: Optional[str] = None
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "lightning-vl"

    def __post_init__(self) -> None:
        try:
            self.strategy()  # validates the method and its options
        except ValueError as err:
            raise ValueError(f"imp.method: {err}") from None
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

    def strategy(self) -> Strategy:
        """A new instance of the configured strategy with its options."""
        options = dict(self.options)
        if self.method == "snip":  # the flag that came before strategies had options
            options.setdefault("batches", self.snip_batches)
        return get_strategy(self.method, **options)


def _registered() -> str:
    """``imp, …, wanda (batches=8, comparison='row')``: the registry, for ``--help``."""
    def entry(name: str) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in option_defaults(STRATEGIES[name]).items())
        return f"``{name}``" + (f" ({options})" if options else "")
    return "            " + ", ".join(entry(n) for n in sorted(STRATEGIES)) + " (``python -m lightning_vl.pruning`` " \
        "describes them)."


# the registered strategies, listed where ``--help`` shows the field (declared once: the registry)
ImpConfig.__doc__ = ImpConfig.__doc__.replace("<STRATEGIES>", _registered())


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
