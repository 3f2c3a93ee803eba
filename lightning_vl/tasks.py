"""The task registry: one small entry per task says which head, loss, metrics and token types it
uses, and which metric decides pruning and fills the reports. ``VLModule`` reads it; nothing
else branches on task names.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .heads import Nlvr2PairedAttnHead, Nlvr2PairedHead
from .uniter import UniterConfig


@dataclass(frozen=True)
class TaskSpec:
    name: str
    heads: dict[str, Callable[[UniterConfig], nn.Module]]
    default_head: str
    loss: Callable[[torch.Tensor, dict], torch.Tensor]
    metrics: Callable[[], MetricCollection]
    # the metric reported per round and shown in progress lines, as logged (``val/<name>``)
    monitor: str
    # token-type table size the task needs and how new rows are initialised (UNITER's
    # ``init_type_embedding``): new row k copies row type_rows_from[k - 2]
    type_rows_from: list[int] = field(default_factory=list)
    description: str = ""


def _cross_entropy(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.cross_entropy(logits, batch["targets"])


def _accuracy(num_classes: int) -> MetricCollection:
    return MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro")})


TASKS: dict[str, TaskSpec] = {
    "nlvr2": TaskSpec(
        name="nlvr2",
        heads={"paired-attn": Nlvr2PairedAttnHead, "paired": Nlvr2PairedHead},
        default_head="paired-attn",
        loss=_cross_entropy,
        metrics=partial(_accuracy, 2),  # partial, not a lambda: modules must pickle (ddp_spawn)
        monitor="val/acc",
        type_rows_from=[1],  # 3 types: right-image regions get a copy of the image type
        description="NLVR2: is the statement true of the image pair? (accuracy)",
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None
