"""What the lottery runner needs of a model: a small interface, so the same runner drives the
task models (``VLModule``) and the pre-training model."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class Prunable(Protocol):
    """A LightningModule the lottery runner can prune.

    ``task_name`` names the runs folder (``runs/<task_name>/…``); ``monitor`` is the logged
    validation metric that scores a level (``val/acc``); ``prunable_parameter_names(parts)`` lists
    the parameters to prune for parts such as ``encoder``; ``is_head_parameter(name)`` marks the
    task-specific parameters (never pruned, reset per ``head_reset``); ``training_loss(batch)`` is
    the loss whose gradients SNIP scores. Optionally ``prunable_groups(parts)``: the same names,
    each with its group ``(stream, layer, part)``, which the runner records in every mask it saves.
    """

    @property
    def task_name(self) -> str: ...

    @property
    def monitor(self) -> str: ...

    def prunable_parameter_names(self, parts: Sequence[str] = ("encoder",)) -> list[str]: ...

    def is_head_parameter(self, name: str) -> bool: ...

    def training_loss(self, batch: dict) -> torch.Tensor: ...


def prunable_groups(module, parts: Sequence[str]) -> Optional[dict[str, tuple]]:
    """``module.prunable_groups(parts)`` as name → (stream, layer, part) tuples; None for a module
    without it (its masks record no groups, and readers derive UNITER's from the names)."""
    groups = getattr(module, "prunable_groups", None)
    if groups is None:
        return None
    return {name: tuple(group) for name, group in groups(tuple(parts)).items()}
