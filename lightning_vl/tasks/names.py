"""The tasks, described once and torch-free: each task's name, how reports call it, where it
stands in the study's columns, its adversarial-training defaults, its data module and its demo
generator. Everything that only needs to *name* tasks (``analysis/``, ``study/``, the demo world,
the Makefile) reads this module; ``lightning_vl.tasks.specs`` adds what a model needs (heads, loss,
metrics) under the same names, and a test checks that the two list the same tasks.

    python -m lightning_vl.tasks.names          # the task names, one line, in the study's order
    python -m lightning_vl.tasks.names --images # the study's tasks a pixel model (ViLT) runs: IMAGE_TASKS

Adding a task: one ``TaskInfo`` below, one ``TaskSpec`` in ``lightning_vl/tasks/specs.py``, its data
module ``data_modules/<task>.py``, its demo generator ``data_modules/demo/<task>.py`` and its two
configs ``configs/task/<task>.yaml`` and ``configs/demo/<task>.yaml``.

This module imports nothing beyond the standard library (tested): the data modules and the demo
generator may read it without importing the model.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Optional


class UnknownTaskError(ValueError):
    """A task name that ``TASK_INFO`` does not define; the message lists the ones it does.

    Example:
        >>> try:
        ...     task_info("vqa3")
        ... except UnknownTaskError as e:
        ...     print(str(e)[:40])
        unknown task 'vqa3'; known tasks: vqa, g
    """


@dataclass(frozen=True)
class AdversarialDefaults:
    """A task's defaults for VILLA's adversarial training (``lightning_vl.training.adversarial``).

    Args:
        modality: what δ perturbs: ``text``, ``image``, ``image+text`` or ``alter``.
        lr: δ's step size (VILLA's ``adv_lr_txt`` / ``adv_lr_img``).
        kl_weight: weight of the symmetric KL term.
        kl_reduction: how the element-wise symmetric KL becomes one number: ``sum-mean`` (sum over
            the classes, mean over the examples; VQA, NLVR2, ...) or ``mean`` (the mean over every
            element; VCR's (rows, 2)).

    Example:
        >>> AdversarialDefaults("image+text", 1e-2, 1.5, kl_reduction="mean").modality
        'image+text'

    Raises:
        ValueError: for a ``kl_reduction`` other than the two above, or a negative ``lr`` or
            ``kl_weight`` (the modality is checked where it is used, ``AdversarialConfig.resolved``).
    """

    modality: str = "text"
    lr: float = 1e-3
    kl_weight: float = 1.5
    kl_reduction: Literal["sum-mean", "mean"] = "sum-mean"

    def __post_init__(self):
        if self.kl_reduction not in ("sum-mean", "mean"):
            raise ValueError(f"kl_reduction must be sum-mean or mean, got {self.kl_reduction!r}")
        if self.lr < 0 or self.kl_weight < 0:
            raise ValueError(f"lr and kl_weight must be >= 0, got {self}")


@dataclass(frozen=True)
class DemoPart:
    """A generator of the offline demo world (``data_modules/demo/``): one part of the world that
    writes one or more tasks' files.

    Args:
        name: the part's name: the folder it writes, its ``--tasks`` choice of ``python -m
            data_modules.demo``, the key of its files and manifest entry, and the seed of its
            random streams (so renaming a part changes its data).
        generator: import path of the generator module (it exposes ``DEFAULT_SIZES`` and
            ``generate()``, and may expose ``demo_options(settings)``, ``demo_sizes(settings)``
            and ``demo_skipped(settings)``).
        rank: where the part is written in the world: parts are generated in rank order, and the
            feature store keeps the order its images were written in. A new part takes the next
            number, so the existing parts' bytes do not change.

    Example:
        >>> DemoPart("nlvr2", "data_modules.demo.nlvr2", rank=0).generator
        'data_modules.demo.nlvr2'

    Raises:
        ValueError: for an empty name, a generator that is not a dotted module path, or a negative
            rank.
    """

    name: str
    generator: str
    rank: int

    def __post_init__(self):
        if not self.name or "." not in self.generator or self.rank < 0:
            raise ValueError(f"DemoPart needs a name, a dotted generator module path and a rank >= 0, got {self}")


@dataclass(frozen=True)
class TaskInfo:
    """What is known about a task without a model: the torch-free half of its description.

    Args:
        name: the task's name (``--model.task``, ``configs/task/<name>.yaml``, ``runs/<name>/``).
        display: its name in tables and figures (the paper's column headers).
        data_module: import path of its ``LightningDataModule`` class.
        demo: the demo-world part that writes its files.
        adversarial: VILLA's defaults; None = adversarial training does not apply (pre-training).
        pretraining: the pre-training task: the universal ticket's source, not a study column.
        reduced_average: counted in Table 2's second average drop (the paper leaves VCR out).
        reads_images: its data module reads raw images (``images:``, ``supports_images``) as well as
            region features, so a pixel model (ViLT) runs it; the demo world draws its scenes into
            ``images.h5``.

    The study's columns and every report list tasks in the order of ``TASK_INFO``.

    Example:
        >>> task_info("refcoco+").display
        'RefCOCO+'
        >>> task_info("refcoco+").data_module
        'data_modules.refcoco.RefcocoDataModule'

    Raises:
        ValueError: from ``__post_init__``, for an empty name or a data module that is not a
            dotted ``module.Class`` path.
    """

    name: str
    display: str
    data_module: str
    demo: DemoPart
    adversarial: Optional[AdversarialDefaults] = AdversarialDefaults()
    pretraining: bool = False
    reduced_average: bool = True
    reads_images: bool = False

    def __post_init__(self):
        if not self.name:
            raise ValueError("TaskInfo.name must not be empty")
        if "." not in self.data_module:
            raise ValueError(f"task {self.name!r}: data_module must be a dotted module.Class path, "
                             f"got {self.data_module!r}")


_FLICKR30K = DemoPart("flickr30k", "data_modules.demo.flickr30k", rank=6)  # both directions share one split file

# The study's eight columns in the paper's order, then pre-training. Not in VILLA, and chosen here:
# GQA as VQA; RefCOCO+ and the retrieval tasks text, 1e-3, KL 1.5 (lightning_vl/training/adversarial.py).
_TASKS = (
    TaskInfo("vqa", "VQA", "data_modules.vqa.VqaDataModule", DemoPart("vqa", "data_modules.demo.vqa", rank=1),
             reads_images=True),
    TaskInfo("gqa", "GQA", "data_modules.gqa.GqaDataModule", DemoPart("gqa", "data_modules.demo.gqa", rank=2),
             reads_images=True),
    TaskInfo("vcr", "VCR", "data_modules.vcr.VcrDataModule", DemoPart("vcr", "data_modules.demo.vcr", rank=3),
             adversarial=AdversarialDefaults("image+text", 1e-2, 1.5, kl_reduction="mean"),
             reduced_average=False),
    TaskInfo("nlvr2", "NLVR2", "data_modules.nlvr2.Nlvr2DataModule",
             DemoPart("nlvr2", "data_modules.demo.nlvr2", rank=0), reads_images=True),
    TaskInfo("snli-ve", "SNLI-VE", "data_modules.snli_ve.SnliVeDataModule",
             DemoPart("snli-ve", "data_modules.demo.snli_ve", rank=4)),
    TaskInfo("refcoco+", "RefCOCO+", "data_modules.refcoco.RefcocoDataModule",
             DemoPart("refcoco+", "data_modules.demo.refcoco", rank=5)),
    TaskInfo("flickr30k-ir", "F30k IR R@1", "data_modules.flickr30k.Flickr30kDataModule", _FLICKR30K),
    TaskInfo("flickr30k-tr", "F30k TR R@1", "data_modules.flickr30k.Flickr30kDataModule", _FLICKR30K),
    TaskInfo("pretrain", "pre-training", "data_modules.pretrain.PretrainDataModule",
             DemoPart("pretrain", "data_modules.demo.pretrain", rank=7), adversarial=None, pretraining=True,
             reads_images=True),
)

TASK_INFO: dict[str, TaskInfo] = {t.name: t for t in _TASKS}
TASK_NAMES: tuple[str, ...] = tuple(TASK_INFO)  # every task, in the study's order
STUDY_TASKS: tuple[str, ...] = tuple(t.name for t in _TASKS if not t.pretraining)  # the study's columns
# the study's tasks a pixel model (ViLT) fine-tunes and prunes (pre-training on pixels has its own recipe)
IMAGE_TASKS: tuple[str, ...] = tuple(t.name for t in _TASKS if t.reads_images and not t.pretraining)
(PRETRAINING_TASK,) = [t.name for t in _TASKS if t.pretraining]  # exactly one
DEFAULT_TASK: str = "nlvr2"  # ``VLModule``'s default task (and the Makefile's TASK)
# the demo world's parts, in the order they are written
DEMO_PARTS: dict[str, DemoPart] = {p.name: p for p in sorted({t.demo for t in _TASKS}, key=lambda p: p.rank)}


def _check() -> None:
    """Two tasks of one name, two parts of one name or rank, or a default that is no task would
    silently drop or reorder something: refuse them at import."""
    problems = []
    if len(TASK_INFO) != len(_TASKS):
        problems.append(f"task names given twice: {sorted(n for n in TASK_NAMES if [t.name for t in _TASKS].count(n) > 1)}")
    parts = {t.demo for t in _TASKS}
    if len({p.name for p in parts}) != len(parts) or len({p.rank for p in parts}) != len(parts):
        problems.append(f"demo parts must differ in name and rank: {sorted(parts, key=lambda p: p.rank)}")
    if DEFAULT_TASK not in TASK_INFO:
        problems.append(f"DEFAULT_TASK {DEFAULT_TASK!r} is no task")
    if problems:
        raise ValueError("lightning_vl/tasks/names.py: " + "; ".join(problems))


_check()


def task_info(name: str) -> TaskInfo:
    """The description of task ``name``.

    Raises:
        UnknownTaskError: (a ``ValueError``) for a name ``TASK_INFO`` lacks, listing the known ones.
    """
    try:
        return TASK_INFO[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}") from None


def check_tasks(names: Iterable[str], where: str = "tasks") -> list[str]:
    """``names`` as a list when every one is a task.

    Raises:
        UnknownTaskError: naming ``where``, the unknown names and the known ones.
    """
    names = list(names)
    unknown = [n for n in names if n not in TASK_INFO]
    if unknown:
        raise UnknownTaskError(f"{where}: unknown task(s) {', '.join(map(repr, unknown))}; known tasks: "
                               f"{', '.join(TASK_NAMES)}")
    return names


def display_name(name: str) -> str:
    """How tables and figures call a task; a name that is no task is shown as it is (reports may
    read run folders of tasks defined elsewhere)."""
    info = TASK_INFO.get(name)
    return info.display if info else name


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in the study's order, other names after them, alphabetically."""
    names = set(names)
    return [t for t in TASK_NAMES if t in names] + sorted(names - set(TASK_NAMES))


def demo_part(name: str) -> DemoPart:
    """The demo-world part that writes task ``name``'s files.

    Raises:
        UnknownTaskError: for a name that is no task.
    """
    return task_info(name).demo


def main(argv: Optional[list[str]] = None) -> int:
    """Print the task names on one line (the Makefile's ``TASK`` check and help read it); with
    ``--images``, the study's tasks a pixel model runs (``IMAGE_TASKS``: the Makefile's check for a
    backbone that reads pixels)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--images"]):
        print(f"usage: python -m lightning_vl.tasks.names [--images]; got {' '.join(argv)}", file=sys.stderr)
        return 2
    print(" ".join(IMAGE_TASKS if argv else TASK_NAMES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
