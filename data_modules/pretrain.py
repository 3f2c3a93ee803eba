"""Pre-training data: UNITER's objectives on captioned region features (ChenRocks/UNITER
``pretrain.py``, ``data/{mlm,mrm,itm}.py``).

Captions come from COCO captions JSON, Karpathy split JSON or JSON lines (CC / SBU-style corpora;
the demo's corpus), images from one region-feature store (with soft labels for masked region
classification) or, for a pixel model (ViLT), from ``images:`` (a folder of image files or an
image store, as the tasks' data modules read them): then the batches carry pixels and only the
objectives without regions run (MLM, ITM, bow; ``pretraining/batches.py``). Every batch serves ONE objective, drawn per optimizer step by mix ratio, as
UNITER's ``MetaLoader``.


This module is the DataModule (``PretrainDataModule``, the class path configs name); its parts
live in ``data_modules/pretraining/``:

- ``captions.py``: the caption files (formats, ``image_key``, splits) read into a ``CaptionSet``;
- ``batches.py``: masking, negatives and summaries, one objective's batch or a joint batch (the
  batch contract);
- ``stream.py``: the objective schedule and the example streams (which batch comes when, with any
  number of workers and ranks).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from torch.utils.data import DataLoader

from .base import VLDataModule
from .pretraining.batches import (EVERY_ROW_KEYS, OBJECTIVES, PIXEL_OBJECTIVES, SOFT_LABEL_OBJECTIVES, PretrainBatchMaker,
                                  RowOptions, ordinary_token_ids, row_counts)
from .pretraining.captions import CaptionSet, CaptionSources, build_caption_set
from .pretraining.stream import ObjectiveSchedule, PretrainEvalBatches, PretrainStream

UNITER_MIX = {"itm": 2.0, "mlm": 2.0, "mrfr": 1.0, "mrckl": 1.0}  # pretrain-indomain-base-8gpu
MIXES = ("step", "row")
SUMMARY_TARGETS = ("classes", "words")


def check_objectives(objectives) -> dict[str, float]:
    """``{name: ratio}`` with known names and non-negative ratios, at least one positive."""
    if not isinstance(objectives, dict) or not objectives:
        raise ValueError(f"objectives must be a mapping objective -> mix ratio, e.g. {UNITER_MIX}, got {objectives!r}")
    out = {}
    for name, ratio in objectives.items():
        if name not in OBJECTIVES:
            raise ValueError(f"objectives: unknown objective {name!r}; expected some of {', '.join(OBJECTIVES)}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not np.isfinite(ratio) or ratio < 0:
            raise ValueError(f"objectives: the mix ratio of {name!r} is {ratio!r}; expected a number >= 0")
        out[name] = float(ratio)
    if not any(r > 0 for r in out.values()):
        raise ValueError(f"objectives {objectives}: every mix ratio is 0; at least one must be positive")
    return out


@dataclass(frozen=True)
class ObjectiveMix:
    """What is trained and how a batch mixes objectives: the ``PretrainDataModule`` options
    ``objectives`` (checked ratios), ``mix``, ``every_row`` and ``text_only``."""

    ratios: dict[str, float]
    mix: str = "step"
    every_row: tuple[str, ...] = ()
    text_only: bool = False

    @classmethod
    def checked(cls, objectives: Optional[dict[str, float]], mix: str, every_row: Optional[list[str]],
                text_only: bool) -> "ObjectiveMix":
        """The options as given in a config (``objectives`` None: UNITER's mix), or an error naming
        the conflict."""
        ratios = check_objectives(dict(UNITER_MIX) if objectives is None else dict(objectives))
        active = [o for o, r in ratios.items() if r > 0]
        if text_only and active != ["mlm"]:
            raise ValueError(f"text_only batches carry no image, so only mlm can be trained; objectives {ratios} "
                             f"has {', '.join(o for o in active if o != 'mlm')}")
        if mix not in MIXES:
            raise ValueError(f"mix {mix!r}: expected 'step' (one objective per optimizer step, UNITER's MetaLoader) or "
                             "'row' (every micro-batch holds rows of every objective, split by ratio)")
        if mix == "row" and text_only:
            raise ValueError("mix 'row' joins rows of several objectives with their images; text_only batches have none")
        every_row = tuple(every_row or ())
        if every_row and mix != "row":
            raise ValueError(f"every_row {list(every_row)} needs mix 'row' (a joint batch whose rows they share)")
        for name in every_row:
            if name not in EVERY_ROW_KEYS or ratios.get(name, 0) <= 0:
                raise ValueError(f"every_row: {name!r} must be one of {', '.join(EVERY_ROW_KEYS)} with a positive mix "
                                 f"ratio in objectives ({ratios})")
        if every_row and all(o in every_row for o in active):
            raise ValueError(f"every_row {list(every_row)}: at least one objective must have rows of its own")
        return cls(ratios, mix, every_row, text_only)

    @property
    def active(self) -> tuple[str, ...]:
        """The objectives with a positive mix ratio, in ``OBJECTIVES`` order."""
        return tuple(o for o in OBJECTIVES if self.ratios.get(o, 0) > 0)


def check_targets(mlm_words: Optional[list[str]], summary_targets: str) -> None:
    """``mlm_words`` (None or a non-empty list of words) and ``summary_targets`` (``classes`` or
    ``words``), or an error saying what is expected."""
    if mlm_words is not None and (isinstance(mlm_words, str) or not mlm_words
                                  or not all(isinstance(w, str) and w for w in mlm_words)):
        raise ValueError(f"mlm_words must be a non-empty list of words (word-pieces of the tokenizer), got {mlm_words!r}")
    if summary_targets not in SUMMARY_TARGETS:
        raise ValueError(f"summary_targets {summary_targets!r}: expected 'classes' (the region classes present) or "
                         "'words' (the word-pieces of their names present; the head needs summary_targets: words too)")


class PretrainDataModule(VLDataModule):
    """UNITER pre-training on captioned images (see the module docstring for files, batches and
    scheduling).

    Args:
        train_files / val_files: caption files (paths or ``{path, format, image_key, split}``);
            without ``val_files``, ``val_split`` reads validation captions from the Karpathy train files.
        format: ``auto``, ``coco``, ``karpathy`` or ``jsonl``, for files that do not say.
        train_split / val_split: the Karpathy splits to read (a name or a list).
        image_key: a caption's store key from its format's fields (default ``{image_id}``).
        objectives: mix ratios, e.g. UNITER's ``{itm: 2, mlm: 2, mrfr: 1, mrckl: 1}`` (the default);
            ``mrc``, ``mrckl`` and ``summary`` need a store with soft labels.
        mlm_prob, mrm_prob: UNITER's 0.15. itm_neg_prob: UNITER's 0.5. itm_hard_neg_prob: how
            often a mismatch uses one of the caption's hard negatives instead of another image.
        val_examples: validate on the first N validation captions (None: all).
        max_count: ``summary``'s ``counts`` are clipped to it.
        text_only: batches without images (MLM only), for a text-only model; ``features`` may be
            left out then.
        images: raw images instead of ``features`` (``VLDataModule``; with ``image_size``,
            ``size_divisor``): pixel batches for a pixel model, objectives ``mlm``, ``itm``, ``bow`` only.
        mix: ``step`` (UNITER's MetaLoader: each optimizer step trains one objective, drawn ∝
            ratio) or ``row`` (every micro-batch holds rows of every objective, ``batch_size`` split
            by ratio, one forward pass for all; the demo's recipe: a small model learns every
            objective at once instead of forgetting between steps).
        every_row: with ``mix: row``, objectives (``bow``, ``summary``) trained on every row of the
            joint batch (the text and image it shows) instead of rows of their own (the demo's
            recipe: the [CLS] summaries keep the pooled output from collapsing onto matching).
        summary_targets: what ``summary`` predicts of an image besides its object count: ``classes``
            (which region classes its regions' arg-max labels name) or ``words`` (which word-pieces
            of those class names, e.g. ``red``, ``cube``: a bag of attributes; the head option
            ``summary_targets: words`` must match).
        mlm_words: MLM selects only these word-pieces (each with ``mlm_prob``; the demo masks the
            attribute words, which only the image can tell); None = every ordinary word-piece.
        seed: seeds the schedule, streams and masking; None = the run's ``seed_everything`` seed
            (``PL_GLOBAL_SEED``, else 0). The same on every rank.
        features, tokenizer, batch_size (captions per micro-batch, per device), ...: see ``VLDataModule``.
    """

    supports_images = True  # pixel batches for a pixel model (mlm, itm, bow)

    def __init__(
        self,
        train_files: list[Union[str, dict]],
        tokenizer: str,
        features: Optional[str] = None,
        val_files: Optional[list[Union[str, dict]]] = None,
        format: str = "auto",
        train_split: Optional[Union[str, list[str]]] = None,
        val_split: Optional[Union[str, list[str]]] = None,
        image_key: str = "{image_id}",
        objectives: Optional[dict[str, float]] = None,
        mlm_prob: float = 0.15,
        mrm_prob: float = 0.15,
        itm_neg_prob: float = 0.5,
        itm_hard_neg_prob: float = 0.0,
        val_examples: Optional[int] = None,
        max_count: int = 8,
        text_only: bool = False,
        mix: str = "step",
        mlm_words: Optional[list[str]] = None,
        every_row: Optional[list[str]] = None,
        summary_targets: str = "classes",
        seed: Optional[int] = None,
        **kwargs,
    ):
        self.reads_no_images = text_only  # text-only batches need neither features nor images
        super().__init__(features=features, tokenizer=tokenizer, **kwargs)
        # the flat arguments are the config's data.init_args keys; inside they are three groups
        self.sources = CaptionSources(train_files, val_files, format, train_split, val_split, image_key)
        self.objective_mix = ObjectiveMix.checked(objectives, mix, every_row, text_only)
        self.rows = RowOptions(mlm_prob, mrm_prob, itm_neg_prob, itm_hard_neg_prob, max_count)
        check_targets(mlm_words, summary_targets)
        if val_examples is not None and val_examples <= 0:
            raise ValueError(f"val_examples must be positive or None, got {val_examples}")
        if self.images and not text_only:
            regional = [o for o in self.objective_mix.active if o not in PIXEL_OBJECTIVES]
            if regional:
                raise ValueError(f"objectives {', '.join(regional)} learn from regions (their features or soft labels), "
                                 f"but the data is images={self.images!r}; with images train "
                                 f"{', '.join(PIXEL_OBJECTIVES)} (ViLT: mlm and itm)")
        self.train_entries, self.val_entries = self.sources.entries()
        self.set_split_files(*(None if not entries else " + ".join(e.path for e in entries)
                               for entries in (self.train_entries, self.val_entries, None)))
        self.val_examples, self.seed = val_examples, seed
        self.mlm_words = None if mlm_words is None else list(mlm_words)
        self.summary_targets = summary_targets
        self._ordinary: Optional[np.ndarray] = None
        self._mlm_ids: Optional[np.ndarray] = None

    # -- the groups' values the rest of the module reads
    @property
    def objectives(self) -> dict[str, float]:
        """The checked mix ratios (UNITER's by default)."""
        return self.objective_mix.ratios

    @property
    def text_only(self) -> bool:
        return self.objective_mix.text_only

    @property
    def every_row(self) -> tuple[str, ...]:
        return self.objective_mix.every_row

    # -- what the model reads
    @property
    def labels(self) -> Optional[list[str]]:
        """The store's region classes (its ``soft_label_names``, else ``__background__``,
        ``class_1``, ...) when it has soft labels — the model sizes its region classifier by
        them — else None (then ``mrc``, ``mrckl`` and ``summary`` are refused at setup)."""
        if self.text_only or not self.features:  # images: no regions, no region classes
            return None
        store = self.store
        if not store.has_soft_labels:
            return None
        return list(store.soft_label_names or ["__background__"] + [f"class_{i}" for i in range(1, store.soft_label_dim)])

    @property
    def active_objectives(self) -> tuple[str, ...]:
        """The objectives with a positive mix ratio, in ``OBJECTIVES`` order."""
        return self.objective_mix.active

    @property
    def ordinary_token_ids(self) -> np.ndarray:
        """What MLM's random replacements and ``bow`` draw from (no special or unused tokens)."""
        if self._ordinary is None:
            self._ordinary = ordinary_token_ids(self.tokenizer)
        return self._ordinary

    @property
    def mlm_token_ids(self) -> Optional[np.ndarray]:
        """The word-pieces MLM may select (``mlm_words``), or None for all."""
        if self.mlm_words is None:
            return None
        if self._mlm_ids is None:
            ids = self.tokenizer.convert_tokens_to_ids(self.mlm_words)
            unknown = [w for w, i in zip(self.mlm_words, ids) if i is None or i == self.tokenizer.unk_token_id]
            if unknown:
                raise ValueError(f"mlm_words: {unknown} are not word-pieces of the tokenizer {self.tokenizer_path} "
                                 "(each word must be one entry of its vocabulary)")
            self._mlm_ids = np.asarray(ids, dtype=np.int64)
        return self._mlm_ids

    def run_seed(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _check_store_for_objectives(self) -> None:
        needs = [o for o in self.active_objectives if o in SOFT_LABEL_OBJECTIVES]
        if needs and not self.text_only and not self.reads_images and not self.store.has_soft_labels:
            raise ValueError(f"objectives {', '.join(needs)} learn from the regions' soft labels, but the region-feature "
                             f"store {self.features} has none (no soft_labels dataset); convert the features from a "
                             "source that has them (UNITER's img_db, npz with soft_labels) or drop "
                             f"{', '.join(needs)} from data.init_args.objectives")

    def setup(self, stage: Optional[str] = None) -> None:
        self._check_store_for_objectives()
        super().setup(stage)

    def build_dataset(self, split: str, path: str) -> CaptionSet:
        entries = self.train_entries if split == "train" else self.val_entries
        limit = self.val_examples if split == "val" else None
        store = None if self.text_only else self.store
        captions = build_caption_set(entries, self.tokenizer, self.max_txt_len, store, split, limit)
        if "itm" in self.active_objectives and len(captions.images) < 2:
            raise ValueError(f"{captions.source}: image-text matching pairs captions with other images, but the split "
                             f"has {len(captions.images)} image")
        return captions

    def batch_maker(self, split: str) -> PretrainBatchMaker:
        if split not in self.datasets:
            configured = self.split_files().get(split)
            hint = "call setup() first" if configured else f"no {split} files configured (val_files or val_split)"
            raise RuntimeError(f"{type(self).__name__}: the {split} split is not loaded ({hint})")
        return PretrainBatchMaker(
            self.datasets[split], None if self.text_only else self.store, self.special_ids, self.ordinary_token_ids,
            len(self.tokenizer), self.rows, self.text_only, self.mlm_token_ids, self.every_row if split == "train" else (),
            self.class_words() if self.summary_targets == "words" and "summary" in self.active_objectives else None)

    def class_words(self) -> np.ndarray:
        """``(classes, vocab)`` bool: the word-pieces of each region class's name (background
        none), what ``summary_targets: words`` summarises an image by."""
        names = self.labels
        if names is None:
            raise ValueError(f"summary_targets 'words' needs region soft labels with class names; the store {self.features} "
                             "has no soft labels")
        words = np.zeros((len(names), len(self.tokenizer)), dtype=bool)
        for c, name in enumerate(names[1:], start=1):
            ids = self.tokenizer(name, add_special_tokens=False)["input_ids"]
            words[c, [i for i in ids if i != self.tokenizer.unk_token_id]] = True
        return words

    def train_stream(self, accumulate: int = 1, rank: int = 0, world_size: int = 1,
                     max_steps: Optional[int] = None, global_step: int = 0) -> PretrainStream:
        """The training micro-batches (what ``train_dataloader`` wraps), for a trainer's settings."""
        maker = self.batch_maker("train")
        active = self.active_objectives
        schedule = ObjectiveSchedule(active, tuple(self.objectives[o] for o in active), self.run_seed())
        total = max_steps * accumulate if max_steps is not None and max_steps > 0 else None
        row_mix = None
        if self.objective_mix.mix == "row":  # every_row objectives take no rows of their own
            own = [o for o in active if o not in self.every_row]
            counts = dict(zip(own, row_counts(self.batch_size, [self.objectives[o] for o in own])))
            row_mix = [counts.get(o, 0) for o in active]
        return PretrainStream(maker, schedule, self.batch_size, accumulate, rank, world_size, self.run_seed(),
                              total=total, start=global_step * accumulate, row_mix=row_mix)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        settings = {}
        if trainer is not None:
            settings = dict(accumulate=int(trainer.accumulate_grad_batches), rank=int(trainer.global_rank),
                            world_size=int(trainer.world_size), max_steps=int(trainer.max_steps),
                            global_step=int(trainer.global_step))
        stream = self.train_stream(**settings)
        # Lightning warns that a sized IterableDataset may repeat data across workers: ours gives each
        # worker its own micro-batches (PretrainStream.__iter__), so the length is exact.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        maker = self.batch_maker("val")
        batches = PretrainEvalBatches(maker, self.active_objectives, self.eval_batch_size, self.run_seed())
        return DataLoader(batches, batch_size=None, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        raise RuntimeError("PretrainDataModule has no test split: pre-training is scored on its validation captions "
                           "(lightning-vl validate)")

    predict_dataloader = test_dataloader
