"""The task registry: one small entry per task says which heads, loss, metrics and token types it
uses, and which metric decides pruning and fills the reports. ``VLModule`` reads it. What needs
no model — display names, the study's order, adversarial defaults, the data module and the demo
generator — is the task's ``TaskInfo`` in the torch-free ``lightning_vl.tasks.names``
(``TaskSpec.info``); the two registries list the same tasks in the same order (checked at import).
Nothing else branches on task names (``tests/test_task_registry.py`` looks for stray ones).

Batches follow one contract per task (written by the data modules in ``data_modules/``): every
batch has the backbones' inputs (UNITER's), ``ids`` and ``targets``; task keys are listed with each loss below.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_vl.model.heads import (Nlvr2PairedAttnHead, Nlvr2PairedHead, Nlvr2PairedMlpHead, RankHead, RefExpHead,
                                      RefExpLinearHead, VcrHead, VqaHead)
from lightning_vl.model.backbone import HeadSizes

from .metrics import GroundingAccuracy, RetrievalRecall, SoftScore, VcrAccuracy
from .names import STUDY_TASKS, TASK_NAMES, TaskInfo, task_info
from .pretraining import PretrainingHeads, outputs_and_batch, pretraining_loss, pretraining_metrics, summaries_head


@dataclass(frozen=True)
class TaskSpec:
    name: str
    heads: dict[str, Callable[[HeadSizes, Optional[int]], nn.Module]]
    default_head: str
    # loss of a batch; None where a batch has no training signal (retrieval's full evaluation)
    loss: Callable[[torch.Tensor, dict], Optional[torch.Tensor]]
    # the val/test metrics, given the number of labels
    metrics: Callable[[Optional[int]], MetricCollection]
    # what every metric of the collection is updated with: (logits, batch) -> positional args
    metric_inputs: Callable[[torch.Tensor, dict], tuple]
    # the metric reported per round and shown in progress lines, as logged (``val/<name>``)
    monitor: str
    # token-type table size the task needs and how new rows are initialised (UNITER's
    # ``init_type_embedding``): new row k copies row type_rows_from[k - 2]
    type_rows_from: list[int] = field(default_factory=list)
    # word-embedding rows appended for the task (VCR's object-reference tokens: 81)
    extra_word_rows: int = 0
    # label strings when fixed by the task; None = read from the data (answer vocabularies)
    labels: Optional[tuple[str, ...]] = None
    # masked region modelling adds the learned mask embedding to masked regions: train it
    trains_mask_embedding: bool = False
    description: str = ""

    @property
    def info(self) -> TaskInfo:
        """The task's torch-free description (display name, adversarial defaults, data module, ...)."""
        return task_info(self.name)


# ---- losses -------------------------------------------------------------------------------------
def cross_entropy(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """NLVR2: mean cross-entropy over examples."""
    return F.cross_entropy(logits, batch["targets"])


def instance_bce(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """VQA / GQA: BCE against soft scores, summed over answers, averaged over questions
    (UNITER: ``bce(reduction='none').mean() * num_answers``)."""
    return F.binary_cross_entropy_with_logits(logits, batch["targets"].to(logits.dtype)) * logits.size(1)


def one_hot_bce(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """SNLI-VE: UNITER trains the 3 classes as a 3-answer VQA with one-hot targets."""
    target = F.one_hot(batch["targets"], logits.size(1)).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target) * logits.size(1)


def vcr_targets(targets: torch.Tensor) -> torch.Tensor:
    """(B, 2) (answer, rationale) labels → (8B,) row labels: 1 for the right candidate row."""
    candidates = torch.arange(4, device=targets.device)
    return (candidates[None, None, :] == targets[:, :, None]).long().reshape(-1)


def vcr_cross_entropy(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """VCR: 2-class cross-entropy on every (question, candidate) row, mean over rows."""
    return F.cross_entropy(logits, vcr_targets(batch["targets"]))


def region_cross_entropy(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """RefCOCO+: cross-entropy over each row's regions, **summed** over the batch as UNITER does
    (AdamW is nearly invariant to the scale; gradient clipping is not, so this keeps the recipe)."""
    return F.cross_entropy(logits, batch["targets"], reduction="sum")


def ranking_hinge(logits: torch.Tensor, batch: dict, margin: float = 0.2) -> Optional[torch.Tensor]:
    """Retrieval: groups of rows with the positive first; hinge ``max(0, margin + σ(neg) − σ(pos))``
    on sigmoid scores, mean over negatives. Full-evaluation batches (no ``group_size``) have no loss."""
    size = batch.get("group_size")
    if size is None:
        return None
    scores = torch.sigmoid(logits).reshape(-1, int(size))
    return (margin + scores[:, 1:] - scores[:, :1]).clamp(min=0).mean()


# ---- metrics ------------------------------------------------------------------------------------
def accuracy(num_labels: Optional[int]) -> MetricCollection:
    return MetricCollection({"acc": MulticlassAccuracy(num_labels, average="micro")})


def soft_score(num_labels: Optional[int], name: str = "score") -> MetricCollection:
    return MetricCollection({name: SoftScore()})


def vcr_accuracy(num_labels: Optional[int]) -> MetricCollection:
    return MetricCollection({"acc_qa": VcrAccuracy("qa"), "acc_qar": VcrAccuracy("qar"), "acc": VcrAccuracy("both")})


def grounding_accuracy(num_labels: Optional[int]) -> MetricCollection:
    return MetricCollection({"acc": GroundingAccuracy(0.5)})


def retrieval_recall(num_labels: Optional[int]) -> MetricCollection:
    return MetricCollection({"recall": RetrievalRecall((1, 5, 10))})


def logits_and_targets(logits: torch.Tensor, batch: dict) -> tuple:
    return logits, batch["targets"]


def grounding_inputs(logits: torch.Tensor, batch: dict) -> tuple:
    return logits, batch["region_boxes"], batch["gt_boxes"]


def retrieval_inputs(logits: torch.Tensor, batch: dict) -> tuple:
    return logits, batch["txt_index"], batch["img_index"], batch["targets"], batch["num_texts"], batch["num_images"]


# Every callable here is a module-level function or a partial of one, never a lambda: modules
# must pickle for ddp_spawn.
_RETRIEVAL = dict(heads={"rank": RankHead}, default_head="rank", loss=ranking_hinge, metrics=retrieval_recall,
                  metric_inputs=retrieval_inputs)

TASKS: dict[str, TaskSpec] = {
    "vqa": TaskSpec(
        name="vqa", heads={"mlp": VqaHead}, default_head="mlp", loss=instance_bce,
        metrics=soft_score, metric_inputs=logits_and_targets, monitor="val/score",
        description="VQA v2: soft-score accuracy of the arg-max answer (mini-dev in the study)",
    ),
    "gqa": TaskSpec(
        name="gqa", heads={"mlp": VqaHead}, default_head="mlp", loss=instance_bce,
        metrics=partial(soft_score, name="acc"), metric_inputs=logits_and_targets, monitor="val/acc",
        description="GQA balanced: exact-match accuracy (test-dev in the study)",
    ),
    "vcr": TaskSpec(
        name="vcr", heads={"mlp": VcrHead}, default_head="mlp", loss=vcr_cross_entropy,
        metrics=vcr_accuracy, metric_inputs=logits_and_targets, monitor="val/acc",
        type_rows_from=[0, 0],  # 4 types: answer and rationale rows start as copies of text
        extra_word_rows=81,  # UNITER's init_word_embedding(81): object-reference tokens
        description="VCR: Q→A, QA→R and Q→AR accuracy (Q→AR val in the study)",
    ),
    "nlvr2": TaskSpec(
        name="nlvr2",
        heads={"paired-attn": Nlvr2PairedAttnHead, "paired": Nlvr2PairedHead, "paired-mlp": Nlvr2PairedMlpHead},
        default_head="paired-attn", loss=cross_entropy, metrics=accuracy,
        metric_inputs=logits_and_targets, monitor="val/acc",
        type_rows_from=[1],  # 3 types: right-image regions get a copy of the image type
        labels=("False", "True"),
        description="NLVR2: is the statement true of the image pair? (accuracy, dev in the study)",
    ),
    "snli-ve": TaskSpec(
        name="snli-ve", heads={"mlp": VqaHead}, default_head="mlp", loss=one_hot_bce,
        metrics=accuracy, metric_inputs=logits_and_targets, monitor="val/acc",
        labels=("contradiction", "entailment", "neutral"),
        description="SNLI-VE: does the image entail the hypothesis? (3-way accuracy, val in the study)",
    ),
    "refcoco+": TaskSpec(
        name="refcoco+", heads={"mlp2": RefExpHead, "mlp1": RefExpLinearHead}, default_head="mlp2",
        loss=region_cross_entropy, metrics=grounding_accuracy, metric_inputs=grounding_inputs,
        monitor="val/acc",
        description="RefCOCO+: accuracy of the chosen region at IoU >= 0.5 (val, detected boxes, in the study)",
    ),
    "flickr30k-ir": TaskSpec(
        name="flickr30k-ir", monitor="val/ir_r1", **_RETRIEVAL,
        description="Flickr30k image retrieval: R@1 (R@5, R@10 and text retrieval also logged)",
    ),
    "flickr30k-tr": TaskSpec(
        name="flickr30k-tr", monitor="val/tr_r1", **_RETRIEVAL,
        description="Flickr30k text retrieval: R@1 (R@5, R@10 and image retrieval also logged)",
    ),
    "pretrain": TaskSpec(
        name="pretrain", heads={"uniter": PretrainingHeads, "uniter+summaries": summaries_head},
        default_head="uniter", loss=pretraining_loss, metrics=pretraining_metrics,
        metric_inputs=outputs_and_batch, monitor="val/score", trains_mask_embedding=True,
        description="UNITER's pre-training (MLM, MRFR, MRC(-kl), ITM + WRA): the mean of MLM, ITM and MRC "
                    "accuracy (IMP on it finds the universal ticket)",
    ),
}
DOWNSTREAM = STUDY_TASKS  # the study's eight columns
if tuple(TASKS) != TASK_NAMES or any(spec.name != name for name, spec in TASKS.items()):
    raise ValueError(f"lightning_vl/tasks/specs.py:TASKS {list(TASKS)} must list the tasks of "
                     f"lightning_vl/tasks/names.py {list(TASK_NAMES)}, in the same order, each under its own name")


def get_task(name: str) -> TaskSpec:
    """The model-side description of task ``name``.

    Raises:
        UnknownTaskError: (a ``ValueError``) for a name that is no task, listing the known ones.
    """
    task_info(name)
    return TASKS[name]
