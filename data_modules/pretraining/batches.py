"""Pre-training batches: UNITER's masking (MLM, masked regions), image-text matching negatives and
the demo's [CLS] summaries, made into one objective's batch (``PretrainBatchMaker``) or, with
``mix: row``, into one joint batch of several objectives' rows (``merge_batches``).

Batch contract
--------------
Every batch is a dict with UNITER's inputs exactly as ``data_modules.batching.collate_rows``
builds them — ``input_ids`` (B, Lt) with [CLS]/[SEP] (0-padded), ``position_ids`` (1, Lt),
``img_feat`` (B, Nb, D), ``img_pos_feat`` (B, Nb, 7), ``attn_masks`` (B, Ltot) long,
``gather_index`` (B, Ltot), ``txt_lens``, ``num_bbs`` (lists of int) — plus ``ids`` (list of the
example ids, str) and ``objective`` (str, the same for the whole batch), and per objective:

``"mlm"``
    ``input_ids`` masked UNITER's way: every word-piece other than [CLS]/[SEP]/[PAD] is selected
    with probability ``mlm_prob`` (0.15); of the selected 80 % become [MASK], 10 % a random
    *ordinary* token (uniform over the vocabulary without special tokens and ``[unused…]``
    rows), 10 % stay; a row with none selected gets its first word-piece forced to [MASK].
    ``txt_labels`` (B, Lt) long: the original id at selected positions, -1 elsewhere (padding too).
``"mrfr"``, ``"mrc"``, ``"mrckl"`` (masked region modelling; text unmasked)
    every real region selected with probability ``mrm_prob`` (0.15), at least one per row (one
    drawn at random if none was); ``img_masks`` (B, Nb) bool (True = masked, padding False);
    ``img_feat`` with the masked rows set to 0; ``feat_targets`` (M, D) float = the original
    features of the masked regions in the row-major order of ``img_masks``
    (``original_img_feat[img_masks]``); ``img_mask_tgt`` (B, Ltot) bool = True at the masked
    regions' positions in the *joint* (gathered) sequence, same order, so
    ``sequence_output[img_mask_tgt]`` lines up with ``feat_targets``. ``"mrc"``/``"mrckl"`` add
    ``label_targets`` (M, C) float: the masked regions' soft labels from the store.
``"itm"`` (nothing masked)
    ``targets`` (B,) long, 1 = the caption belongs to the image, 0 = not. A row is made a mismatch
    with probability ``itm_neg_prob`` (0.5) by pairing the caption with a random *other* image
    (UNITER); a caption with hard negatives (JSON lines ``"negatives": [...]``) instead keeps its
    image and takes one of its negative captions with probability ``itm_hard_neg_prob`` (0).
``"summary"`` (demo extra; nothing masked)
    ``presence`` (B, C) float: multi-hot of the region classes in the image (arg-max of each
    region's soft label; class 0 = background never set) and ``counts`` (B,) long: the number of
    non-background regions, clipped to ``max_count``.
``"bow"`` (demo extra; nothing masked)
    ``bow_targets`` (B, V) float, V = ``len(tokenizer)``: multi-hot of the caption's ordinary tokens.

With ``text_only=True`` (a BERT-like text-only model) batches hold no image: ``img_feat``,
``img_pos_feat`` and ``gather_index`` are None, ``attn_masks`` (B, Lt) covers the text only and
``num_bbs`` are 0; only ``"mlm"`` is allowed then.

Pixels (a pixel model, ViLT: the data module's ``images:``; ``data_modules.images``): the image
keys are ``data_modules.batching.collate_pixel_rows``' — ``pixel_values`` (B, 3, H, W) float32
normalised (mean = std = 0.5), ``pixel_mask`` (B, H, W) int64 (1 = real pixel), ``attn_masks``
(B, Lt) over the text only, ``input_ids``, ``position_ids``, ``txt_lens`` as above — and no region
keys (``img_feat``, ``num_bbs``, ``gather_index``). Only the objectives that need no regions run on
pixels (``PIXEL_OBJECTIVES``: ``"mlm"``, ``"itm"``, ``"bow"``; ViLT's own pre-training is ITM + MLM):
the same masking and targets; an ITM mismatch shows the caption with another example's image.
A joint batch (``mix: row``) pads every part's pixels to the largest height and width.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from ..batching import collate_pixel_rows, collate_rows, get_gather_index
from ..features import RegionFeatureStore
from ..images import ImageSource
from .captions import CaptionSet

OBJECTIVES = ("mlm", "mrfr", "mrc", "mrckl", "itm", "summary", "bow")
REGION_OBJECTIVES = ("mrfr", "mrc", "mrckl")
SOFT_LABEL_OBJECTIVES = ("mrc", "mrckl", "summary")
PIXEL_OBJECTIVES = ("mlm", "itm", "bow")  # what needs no regions nor their soft labels
IGNORE = -1  # txt_labels where no word-piece is predicted (UNITER's convention)
UNUSED_TOKEN = re.compile(r"\[unused\d+\]")


# --------------------------------------------------------------------------------------- masking

def ordinary_token_ids(tokenizer) -> np.ndarray:
    """Ids of the vocabulary's ordinary tokens: no special token, no ``[unused…]`` padding row."""
    special = set(int(i) for i in tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return np.asarray([i for i, t in enumerate(tokens) if i not in special and not UNUSED_TOKEN.fullmatch(t)],
                      dtype=np.int64)


def mask_tokens(input_ids: torch.Tensor, rng: np.random.Generator, prob: float, mask_id: int,
                keep_ids: np.ndarray, ordinary: np.ndarray,
                only: Optional[np.ndarray] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """UNITER's ``random_word`` on one row: ``(masked ids, labels)``; ``keep_ids`` are never
    selected ([CLS], [SEP], [PAD]); ``only`` (when given) limits the selection to these ids (the
    demo's content words); labels are the original id where selected, -1 elsewhere."""
    ids = input_ids.numpy()
    eligible = ~np.isin(ids, keep_ids)
    if only is not None:
        eligible &= np.isin(ids, only)
    selected = (rng.random(len(ids)) < prob) & eligible
    how = rng.random(len(ids))  # < 0.8: [MASK]; < 0.9: a random ordinary token; else unchanged
    if not selected.any() and eligible.any():
        first = int(np.argmax(eligible))
        selected[first], how[first] = True, 0.0  # UNITER: the first word-piece becomes [MASK]
    out = ids.copy()
    out[selected & (how < 0.8)] = mask_id
    randomised = selected & (how >= 0.8) & (how < 0.9)
    if randomised.any():
        out[randomised] = ordinary[rng.integers(len(ordinary), size=int(randomised.sum()))]
    labels = np.where(selected, ids, IGNORE)
    return torch.from_numpy(out), torch.from_numpy(labels)


def mask_regions(num_regions: int, rng: np.random.Generator, prob: float) -> np.ndarray:
    """(n,) bool: each region masked with ``prob``, at least one (drawn uniformly) when n > 0."""
    masked = rng.random(num_regions) < prob
    if num_regions and not masked.any():
        masked[int(rng.integers(num_regions))] = True
    return masked


def collate_text_rows(rows: list[dict]) -> dict:
    """Text-only batches: ``collate_rows``' text part, ``attn_masks`` over the text, no image."""
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    txt_lens = [int(r["input_ids"].numel()) for r in rows]
    input_ids = pad_sequence([r["input_ids"] for r in rows], batch_first=True, padding_value=0)
    lengths = torch.tensor(txt_lens, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "position_ids": torch.arange(input_ids.size(1), dtype=torch.long).unsqueeze(0),
        "img_feat": None,
        "img_pos_feat": None,
        "attn_masks": (torch.arange(input_ids.size(1))[None, :] < lengths[:, None]).long(),
        "gather_index": None,
        "txt_lens": txt_lens,
        "num_bbs": [0] * len(rows),
    }


@dataclass(frozen=True)
class RowOptions:
    """How a row is masked, made a negative or summarised (UNITER's defaults): the
    ``PretrainDataModule`` options of the same names, checked."""

    mlm_prob: float = 0.15
    mrm_prob: float = 0.15
    itm_neg_prob: float = 0.5
    itm_hard_neg_prob: float = 0.0
    max_count: int = 8

    def __post_init__(self):
        for name, p in (("mlm_prob", self.mlm_prob), ("mrm_prob", self.mrm_prob)):
            if not 0 < p <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {p}")
        for name, p in (("itm_neg_prob", self.itm_neg_prob), ("itm_hard_neg_prob", self.itm_hard_neg_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if self.max_count <= 0:
            raise ValueError(f"max_count must be positive, got {self.max_count}")


class PretrainBatchMaker:
    """Turns example indices (and one RNG per row) into one objective's batch (the module
    docstring's contract). Picklable: a DataLoader worker gets its own copy."""

    def __init__(self, captions: CaptionSet, store: Optional[RegionFeatureStore | ImageSource], special_ids: dict[str, int],
                 ordinary: np.ndarray, vocab_size: int, rows: RowOptions = RowOptions(), text_only: bool = False,
                 mlm_only: Optional[np.ndarray] = None, every_row: tuple[str, ...] = (),
                 class_words: Optional[np.ndarray] = None):
        self.captions, self.store, self.text_only = captions, store, text_only
        self.pixels = isinstance(store, ImageSource) and not text_only  # rows carry the image, not regions
        self.class_words = class_words  # (classes, vocab) bool: summary over the words of class names
        self.mlm_only, self.every_row = mlm_only, tuple(every_row)
        self.mask_id = special_ids["mask"]
        self.keep_ids = np.asarray([special_ids["cls"], special_ids["sep"], special_ids["pad"]], dtype=np.int64)
        self.ordinary, self.vocab_size = ordinary, vocab_size
        self.ordinary_mask = np.zeros(vocab_size, dtype=bool)
        self.ordinary_mask[ordinary] = True
        self.mlm_prob, self.mrm_prob = rows.mlm_prob, rows.mrm_prob
        self.itm_neg_prob, self.itm_hard_neg_prob = rows.itm_neg_prob, rows.itm_hard_neg_prob
        self.max_count = rows.max_count

    def _other_image(self, i: int, rng: np.random.Generator) -> int:
        own, n = int(self.captions.image_of[i]), len(self.captions.images)
        other = int(rng.integers(n - 1))
        return other + (other >= own)

    def build(self, objective: str, indices, rngs) -> dict:
        caps = self.captions
        rows, labels, img_masks, soft, targets, shown = [], [], [], [], [], []
        extras = () if objective in self.every_row else self.every_row  # targets of every row, too
        if self.pixels and any(o not in PIXEL_OBJECTIVES for o in (objective, *extras)):
            raise ValueError(f"objective {[o for o in (objective, *extras) if o not in PIXEL_OBJECTIVES][0]!r} needs region "
                             f"features; batches of images (pixels) train {', '.join(PIXEL_OBJECTIVES)} only")
        for i, rng in zip(indices, rngs):
            i = int(i)
            ids, image = caps.tokens(i), int(caps.image_of[i])
            example = f"caption {caps.ids[i]!r}"
            if objective == "itm":
                target = 1
                if rng.random() < self.itm_neg_prob:
                    target = 0
                    k = caps.num_negatives(i)
                    if k and rng.random() < self.itm_hard_neg_prob:
                        ids = caps.negative(i, int(rng.integers(k)))
                    else:
                        image = self._other_image(i, rng)
                        example = f"the negative image of caption {caps.ids[i]!r}"
                targets.append(target)
            shown.append(ids)
            if objective == "mlm":
                ids, row_labels = mask_tokens(ids, rng, self.mlm_prob, self.mask_id, self.keep_ids, self.ordinary,
                                              self.mlm_only)
                labels.append(row_labels)
            row = {"input_ids": ids}
            if self.pixels:
                row["pixels"] = self.store.get(caps.images[image], example=example)
            elif not self.text_only:
                key = caps.images[image]
                row["img_feat"], row["img_pos_feat"] = self.store.get(key, example=example)
                if objective in REGION_OBJECTIVES:
                    img_masks.append(torch.from_numpy(mask_regions(len(row["img_feat"]), rng, self.mrm_prob)))
                if objective in SOFT_LABEL_OBJECTIVES or "summary" in extras:
                    soft.append(self.store.get_soft_labels(key, example=example))
            rows.append(row)
        if self.pixels:
            batch = collate_pixel_rows(rows, self.store.transform.size_divisor)
        else:
            batch = collate_text_rows(rows) if self.text_only else collate_rows(rows)
        if objective == "mlm":
            batch["txt_labels"] = pad_sequence(labels, batch_first=True, padding_value=IGNORE)
        elif objective in REGION_OBJECTIVES:
            self._mask_regions(batch, img_masks, soft if objective != "mrfr" else None)
        elif objective == "itm":
            batch["targets"] = torch.tensor(targets, dtype=torch.long)
        elif objective == "summary":
            self._summaries(batch, soft)
        elif objective == "bow":
            batch["bow_targets"] = self._bag_of_words(shown)
        if "bow" in extras:
            batch["bow_targets"] = self._bag_of_words(shown)
        if "summary" in extras:
            self._summaries(batch, soft)
        batch["ids"] = [caps.ids[int(i)] for i in indices]
        batch["objective"] = objective
        return batch

    def _bag_of_words(self, texts: list[torch.Tensor]) -> torch.Tensor:
        """Which ordinary word-pieces each row's text has (before any masking)."""
        bow = torch.zeros(len(texts), self.vocab_size)
        for r, ids in enumerate(texts):
            ids = ids.numpy()
            bow[r, torch.from_numpy(np.unique(ids[self.ordinary_mask[ids]]))] = 1.0
        return bow

    @staticmethod
    def _mask_regions(batch: dict, img_masks: list[torch.Tensor], soft: Optional[list[torch.Tensor]]) -> None:
        masks = pad_sequence(img_masks, batch_first=True, padding_value=False)
        feats = batch["img_feat"]
        batch["img_masks"] = masks
        batch["feat_targets"] = feats[masks].clone()
        feats[masks] = 0.0
        tgt = torch.zeros_like(batch["attn_masks"], dtype=torch.bool)
        for r, (tl, m) in enumerate(zip(batch["txt_lens"], img_masks)):
            tgt[r, tl + torch.nonzero(m).flatten()] = True  # row r's regions follow its tl text positions
        batch["img_mask_tgt"] = tgt
        if soft is not None:
            batch["label_targets"] = pad_sequence(soft, batch_first=True, padding_value=0.0)[masks]

    def _summaries(self, batch: dict, soft: list[torch.Tensor]) -> None:
        """``presence``: which classes the regions' arg-max labels name (class 0 = background
        never), or with ``class_words`` which word-pieces of their names (``presence_mask``: the
        word-pieces some class name has, what the loss scores); ``counts``: the objects."""
        classes = soft[0].shape[1]
        words = None if self.class_words is None else torch.from_numpy(self.class_words)
        presence = torch.zeros(len(soft), classes if words is None else words.size(1))
        counts = torch.zeros(len(soft), dtype=torch.long)
        for r, s in enumerate(soft):
            top = s.argmax(dim=1)
            objects = top[top != 0]
            if words is None:
                presence[r, objects] = 1.0
            elif len(objects):
                presence[r] = words[objects].any(dim=0).float()
            counts[r] = min(len(objects), self.max_count)
        batch["presence"], batch["counts"] = presence, counts
        if words is not None:
            batch["presence_mask"] = words.any(dim=0).expand(len(soft), -1).clone()


# --------------------------------------------------------------------------------- joint batches

EVERY_ROW_KEYS = {"bow": ("bow_targets",), "summary": ("presence", "counts", "presence_mask")}  # objectives that can use any row
PART_KEYS = ("txt_labels", "img_mask_tgt", "feat_targets", "label_targets", "targets", "presence", "counts",
             "presence_mask", "bow_targets")


def _pad_to(x: torch.Tensor, width: int, value) -> torch.Tensor:
    if x.size(1) == width:
        return x
    pad = x.new_full((x.size(0), width - x.size(1), *x.shape[2:]), value)
    return torch.cat([x, pad], dim=1)


def merge_batches(parts: dict[str, dict], every_row: tuple[str, ...] = ()) -> dict:
    """One batch of the rows of several objectives' batches (``mix: row``): UNITER's inputs
    re-padded and re-joined, ``objective`` = ``"joint"`` and ``parts``: per objective its rows
    (``rows``, indices into the joint batch) and its targets in the single-objective contract
    (position-indexed ones padded to the joint widths; a row's joint positions are its own:
    text, then its regions). One forward pass serves every objective. ``every_row`` objectives
    (``bow``, ``summary``) have no rows of their own: they are trained on every row, from the
    targets each part's batch carries for them. Pixel parts (``pixel_values``) are joined by
    ``merge_pixel_batches``."""
    names = list(parts)
    if "pixel_values" in parts[names[0]]:
        return merge_pixel_batches(parts, every_row)
    lt = max(p["input_ids"].size(1) for p in parts.values())
    nb = max(p["img_feat"].size(1) for p in parts.values())
    txt_lens = [t for n in names for t in parts[n]["txt_lens"]]
    num_bbs = [b for n in names for b in parts[n]["num_bbs"]]
    joint = torch.tensor([t + b for t, b in zip(txt_lens, num_bbs)], dtype=torch.long)
    ltot = int(joint.max())
    batch = {
        "input_ids": torch.cat([_pad_to(parts[n]["input_ids"], lt, 0) for n in names]),
        "position_ids": torch.arange(lt, dtype=torch.long).unsqueeze(0),
        "img_feat": torch.cat([_pad_to(parts[n]["img_feat"], nb, 0.0) for n in names]),
        "img_pos_feat": torch.cat([_pad_to(parts[n]["img_pos_feat"], nb, 0.0) for n in names]),
        "attn_masks": (torch.arange(ltot)[None, :] < joint[:, None]).long(),
        "gather_index": get_gather_index(txt_lens, num_bbs, lt, ltot),
        "txt_lens": txt_lens, "num_bbs": num_bbs,
        "ids": [i for n in names for i in parts[n]["ids"]],
        "objective": "joint", "parts": {},
    }
    masks = [parts[n].get("img_masks") for n in names]
    if any(m is not None for m in masks):
        batch["img_masks"] = torch.cat([_pad_to(m, nb, False) if m is not None
                                        else torch.zeros(len(parts[n]["ids"]), nb, dtype=torch.bool)
                                        for n, m in zip(names, masks)])
    start = 0
    for n in names:
        part, rows = parts[n], len(parts[n]["ids"])
        entry = {"rows": torch.arange(start, start + rows), "txt_lens": part["txt_lens"], "num_bbs": part["num_bbs"]}
        for key in PART_KEYS:
            if key in part:
                value = part[key]
                if key == "txt_labels":
                    value = _pad_to(value, lt, IGNORE)
                elif key == "img_mask_tgt":
                    value = _pad_to(value, ltot, False)
                entry[key] = value
        batch["parts"][n] = entry
        start += rows
    for name in every_row:
        entry = {"rows": torch.arange(start), "txt_lens": txt_lens, "num_bbs": num_bbs}
        for key in EVERY_ROW_KEYS[name]:
            if all(key in parts[n] for n in names):
                entry[key] = torch.cat([parts[n][key] for n in names])
        batch["parts"][name] = entry
    return batch


def _pad_image(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(R, [3,] h, w) zero-padded at the bottom and right to (R, [3,] height, width)."""
    return torch.nn.functional.pad(x, (0, width - x.size(-1), 0, height - x.size(-2)))


def merge_pixel_batches(parts: dict[str, dict], every_row: tuple[str, ...] = ()) -> dict:
    """``merge_batches`` for pixel parts (``collate_pixel_rows``' keys): the text re-padded, the
    pixels and pixel masks zero-padded to the largest height and width (0 is what padding is after
    normalisation, and the mask says it is not real), ``objective`` ``"joint"`` and ``parts`` as
    ``merge_batches`` (``rows``, ``txt_lens``, the targets; MLM's labels padded to the joint text
    width — a pixel model's sequence is the text, then the image)."""
    names = list(parts)
    lt = max(p["input_ids"].size(1) for p in parts.values())
    height = max(p["pixel_values"].size(2) for p in parts.values())
    width = max(p["pixel_values"].size(3) for p in parts.values())
    txt_lens = [t for n in names for t in parts[n]["txt_lens"]]
    lens = torch.tensor(txt_lens, dtype=torch.long)
    batch = {
        "input_ids": torch.cat([_pad_to(parts[n]["input_ids"], lt, 0) for n in names]),
        "position_ids": torch.arange(lt, dtype=torch.long).unsqueeze(0),
        "attn_masks": (torch.arange(lt)[None, :] < lens[:, None]).long(),
        "txt_lens": txt_lens,
        "pixel_values": torch.cat([_pad_image(parts[n]["pixel_values"], height, width) for n in names]),
        "pixel_mask": torch.cat([_pad_image(parts[n]["pixel_mask"], height, width) for n in names]),
        "ids": [i for n in names for i in parts[n]["ids"]],
        "objective": "joint", "parts": {},
    }
    start = 0
    for n in names:
        part, rows = parts[n], len(parts[n]["ids"])
        entry = {"rows": torch.arange(start, start + rows), "txt_lens": part["txt_lens"]}
        for key in PART_KEYS:
            if key in part:
                entry[key] = _pad_to(part[key], lt, IGNORE) if key == "txt_labels" else part[key]
        batch["parts"][n] = entry
        start += rows
    for name in every_row:
        entry = {"rows": torch.arange(start), "txt_lens": txt_lens}
        for key in EVERY_ROW_KEYS[name]:
            if all(key in parts[n] for n in names):
                entry[key] = torch.cat([parts[n][key] for n in names])
        batch["parts"][name] = entry
    return batch


def row_counts(batch_size: int, ratios: tuple[float, ...]) -> list[int]:
    """Rows per objective of a joint batch: ``batch_size`` split by ratio (largest remainder),
    every objective at least one row."""
    if batch_size < len(ratios):
        raise ValueError(f"a joint batch of {batch_size} rows cannot hold {len(ratios)} objectives")
    share = np.asarray(ratios, dtype=np.float64) / sum(ratios) * (batch_size - len(ratios))
    counts = np.floor(share).astype(int) + 1
    for k in np.argsort(-(share - np.floor(share)))[: batch_size - int(counts.sum())]:
        counts[k] += 1
    return counts.tolist()
