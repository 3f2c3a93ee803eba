"""Pruning strategies: a registry of small classes, one per way of choosing which weights go.

A strategy (a ``Strategy`` subclass) owns

* its **options** (its ``__init__`` keyword arguments, given as ``--imp.options '{…}'``);
* its **inputs**: ``inputs(run)`` computes them from a ``PruningRun`` — the run's services: the
  weights the level just trained, the dense level's, batches passed through the model at given
  weights (``calibrate``), a seeded generator — into a ``PruningInputs`` (a subclass of it may add
  fields);
* its **scores** (``scores(inputs, base)``, pure: tensors in, tensors out), where it prunes from
  (``one_shot``: the dense mask, else the previous level's) and how scores are compared
  (``granularity``: ``global``, ``tensor`` or ``row``).

``Strategy.prune`` does the rest for every strategy: exact counts, ties broken by position, and a
check that the new mask has its target's count and is a subset of the mask it was pruned from.

The registry (``STRATEGIES``) is filled by ``@register`` in the modules of this folder, all
imported on first use: a new strategy is one new file here. ``get_strategy`` also takes the
``module.Class`` path of a strategy defined anywhere else (``--imp.method my_pkg.MyStrategy``).

Example::

    from lightning_vl.pruning import Mask, PruningInputs, get_strategy

    weights = {"fc.weight": torch.randn(4, 8)}
    mask = get_strategy("imp").prune(PruningInputs(weights=weights), Mask.ones_like(weights), 0.5)
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol, TypeVar

import torch

from ..mask import Mask
from ..selection import Granularity, check_mask, prune_by_scores

T = TypeVar("T")


@dataclass
class PruningInputs:
    """What a strategy's scores are computed from; each strategy fills what it ``requires``.

    ``weights`` are trained weights (the level's, or the dense level's for one-shot magnitude);
    ``init_weights`` and ``gradients`` are θ_0 and ∂L/∂w at θ_0 (``snip``); ``generator`` seeds
    random masks. A strategy that needs something else subclasses this (``wanda.WandaInputs``).
    """

    weights: Optional[Mapping[str, torch.Tensor]] = None
    init_weights: Optional[Mapping[str, torch.Tensor]] = None
    gradients: Optional[Mapping[str, torch.Tensor]] = None
    generator: Optional[torch.Generator] = None


class PruningRun(Protocol):
    """What a run offers a strategy's ``inputs`` (the lottery runner implements it).

    ``level`` is the level the new mask is for (1 = the first pruned level), ``seed`` the run's
    seed, ``names`` the prunable parameters' names.
    """

    level: int
    seed: int
    names: Sequence[str]

    def trained_weights(self) -> dict[str, torch.Tensor]:
        """The prunable weights as the level just trained left them (CPU copies)."""

    def dense_weights(self) -> dict[str, torch.Tensor]:
        """The dense level's trained prunable weights (kept when ``keeps_dense_weights``)."""

    def initial_state(self) -> dict[str, torch.Tensor]:
        """θ_0 and φ_0: the whole state every level rewinds to."""

    def generator(self) -> torch.Generator:
        """A generator seeded by the run's seed and ``level``."""

    def calibrate(self, step: Callable[[torch.nn.Module, Any], None], finish: Callable[[torch.nn.Module], T],
                  batches: int, state: Optional[Mapping[str, torch.Tensor]] = None, label: str = "calibration") -> T:
        """``step(model, batch)`` on the first ``batches`` training batches (seeded by the run's
        seed), with the model at ``state`` (None: its current weights) in eval mode on the
        accelerator if there is one; ``finish(model)`` before the model's own state is restored."""


class Strategy:
    """Base class of a pruning strategy; subclasses set the class attributes and ``scores``.

    Class attributes:
        name: the registry name (``--imp.method <name>``).
        description: one line for listings.
        one_shot: prune from the dense mask at every level (else from the previous level's mask).
        granularity: ``global`` (one threshold), ``tensor`` or ``row`` (each pruned to the level's
            sparsity on its own); an option may set it per instance.
        requires: the ``PruningInputs`` fields ``scores`` reads; ``needs`` says them in words.
        keeps_dense_weights: the run keeps the dense level's trained weights for ``dense_weights``.

    Example::

        @register
        class Movement(Strategy):
            name, description = "movement-demo", "|w| of the trained weights, per tensor"
            granularity = "tensor"

            def scores(self, inputs, base):
                return {k: w.abs() for k, w in inputs.weights.items()}

    Raises:
        ValueError: ``prune`` without the inputs the strategy ``requires``; non-finite scores.
        RuntimeError: ``prune`` made a mask with another count than its target's, or one that keeps
            a weight its base had pruned (a broken ``scores``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    one_shot: ClassVar[bool] = False
    granularity: Granularity = "global"
    requires: ClassVar[tuple[str, ...]] = ("weights",)
    needs: ClassVar[str] = "trained weights"
    keeps_dense_weights: ClassVar[bool] = False

    @property
    def layerwise(self) -> bool:
        return self.granularity == "tensor"

    def inputs(self, run: PruningRun) -> PruningInputs:
        """The inputs of the next mask, from the run (default: the level's trained weights)."""
        return PruningInputs(weights=run.trained_weights())

    def scores(self, inputs: PruningInputs, base: Mask) -> Mapping[str, torch.Tensor]:
        """One score per weight of ``base`` (higher = kept longer); entries ``base`` pruned are ignored."""
        raise NotImplementedError(f"{type(self).__name__}.scores")

    def prune(self, inputs: PruningInputs, previous: Mask, sparsity: float) -> Mask:
        """The mask at ``sparsity``: from ``previous`` (iterative) or from dense (one shot)."""
        base = Mask.ones_like({k: t.cpu() for k, t in previous.items()}) if self.one_shot else previous
        if any(getattr(inputs, field, None) is None for field in self.requires):
            raise ValueError(f"pruning strategy {self.name!r} needs {self.needs} inputs "
                             f"(PruningInputs.{', .'.join(self.requires)})")
        mask = prune_by_scores(self.scores(inputs, base), base, sparsity, granularity=self.granularity)
        check_mask(mask, base, sparsity, name=self.name, granularity=self.granularity)
        return mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add ``cls`` to ``STRATEGIES`` under ``cls.name``.

    Raises:
        ValueError: no name, or a name another class has.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if STRATEGIES.get(cls.name, cls) is not cls:
        raise ValueError(f"pruning strategy {cls.name!r} is registered twice ({STRATEGIES[cls.name].__name__}, "
                         f"{cls.__name__})")
    STRATEGIES[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def strategy_class(method: str) -> type[Strategy]:
    """The class of a registered name or of a ``module.Class`` path.

    Raises:
        ValueError: an unknown name, a path that does not import, or a class that is no ``Strategy``.
    """
    if method in STRATEGIES:
        return STRATEGIES[method]
    if "." not in method:
        raise ValueError(f"unknown pruning strategy {method!r}; one of {sorted(STRATEGIES)} or the class path of a "
                         "lightning_vl.pruning.Strategy subclass")
    module_name, _, attr = method.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"pruning strategy {method!r} cannot be imported ({type(err).__name__}: {err})") from None
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise ValueError(f"pruning strategy {method!r} is not a subclass of lightning_vl.pruning.Strategy")
    return cls


def get_strategy(method: str, **options: Any) -> Strategy:
    """A new instance of the strategy ``method`` (a registered name or a class path) with ``options``.

    Raises:
        ValueError: an unknown strategy, or options it does not take or rejects.
    """
    cls = strategy_class(method)
    try:
        strategy = cls(**options)
    except TypeError as err:
        raise ValueError(f"pruning strategy {method!r} takes the options {option_defaults(cls)}; got {options} "
                         f"({err})") from None
    if not strategy.name:
        strategy.name = method
    return strategy


def option_defaults(cls: type[Strategy]) -> dict[str, Any]:
    """A strategy's options and their defaults (its ``__init__`` keyword arguments)."""
    if cls.__init__ is object.__init__:
        return {}
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def describe() -> str:
    """One line per registered strategy: its name, options with defaults, and description."""
    lines = []
    for name, cls in sorted(STRATEGIES.items()):
        options = ", ".join(f"{k}={v!r}" for k, v in option_defaults(cls).items())
        lines.append(f"  {name:<17} {cls.description}" + (f" (options: {options})" if options else ""))
    return "\n".join(lines)


_discover()
