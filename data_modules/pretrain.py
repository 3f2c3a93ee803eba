"""Pre-training data: UNITER's objectives on captioned region features (ChenRocks/UNITER
``pretrain.py``, ``data/{mlm,mrm,itm}.py``).

Captions come from COCO captions JSON, Karpathy split JSON or JSON lines (CC / SBU-style corpora;
the demo's corpus), images from one region-feature store (with soft labels for masked region
classification). Every batch serves ONE objective, drawn per optimizer step by mix ratio, as
UNITER's ``MetaLoader``.

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

Scheduling (UNITER's MetaLoader, made deterministic, worker- and DDP-safe)
--------------------------------------------------------------------------
Micro-batch ``g`` (global index, counted from the start of training) belongs to optimizer step
``g // accumulate_grad_batches``; each step's objective is drawn with probability ∝ its ratio
from an RNG seeded by ``seed`` alone (the same on every rank), so all micro-batches of a step
share it. Each objective has its own stream of example indices: seeded shuffles of the training
captions, reshuffled every pass; the c-th micro-batch of objective o takes, on rank r of W, the
stream positions ``[(c·W + r)·B, (c·W + r + 1)·B)`` — disjoint shards of the same stream.
Masking and negatives of row j of micro-batch g are drawn from ``(seed, rank, g, j)``. DataLoader
worker w of K produces the micro-batches ``start + w, start + w + K, ...`` and the loader yields
them in order, so the sequence is the same with any number of workers. Training runs as long as
the trainer's ``max_steps × accumulate_grad_batches`` (the loader's length; a resumed fit starts
at its ``global_step``); without ``max_steps`` an epoch is one pass over the captions.

Validation runs, for every objective with ratio > 0, one objective after another, batches over
the first ``val_examples`` validation captions; masking and negatives are seeded by (seed,
objective, example index), so every evaluation sees the same batches.

Caption files
-------------
``train_files`` / ``val_files`` list files (a path, or ``{path, format, image_key, split}`` to
override the module's options for one file). ``format``: ``auto`` (told by content), ``coco``
(``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "id", "caption"}]}``),
``karpathy`` (``{"images": [{"filename", "imgid", "cocoid"?, "split", "sentences": [{"raw",
"sentid"}]}]}``; ``train_split`` / ``val_split`` pick its images, a name or a list such as
``[train, restval]``, for the Karpathy files among them; a file's own ``split`` on another format
is an error; without ``val_files``, ``val_split`` reads the Karpathy train files again) or
``jsonl`` (``{"image_id", "caption", "negatives"?: [...], "id"?}`` per line). Any caption record
may carry ``negatives``. ``image_key`` maps a caption's image to its store key with the fields
its format has: ``{image_id}`` (all; Karpathy: ``cocoid``, else ``imgid``), ``{file_name}`` /
``{filename}`` / ``{stem}`` (COCO with an images list, Karpathy), ``{imgid}``, ``{cocoid}``
(Karpathy). Example ids: the COCO annotation id, the Karpathy ``sentid``, the JSON-lines ``id``
(else ``line<N>``), prefixed with ``<file stem>:`` when a split reads several files. Captions are
cut to ``max_txt_len`` word-pieces (UNITER drops longer ones from training instead).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from .base import VLDataModule
from .batching import collate_rows, get_gather_index
from .features import RegionFeatureStore
from .image_keys import key_pattern
from .jsonl import read_json, read_json_lines
from .tokenization import encode_uniter_batch

OBJECTIVES = ("mlm", "mrfr", "mrc", "mrckl", "itm", "summary", "bow")
REGION_OBJECTIVES = ("mrfr", "mrc", "mrckl")
SOFT_LABEL_OBJECTIVES = ("mrc", "mrckl", "summary")
UNITER_MIX = {"itm": 2.0, "mlm": 2.0, "mrfr": 1.0, "mrckl": 1.0}  # pretrain-indomain-base-8gpu
FORMATS = ("auto", "coco", "karpathy", "jsonl")
MIXES = ("step", "row")
IGNORE = -1  # txt_labels where no word-piece is predicted (UNITER's convention)
UNUSED_TOKEN = re.compile(r"\[unused\d+\]")
IMAGE_KEY_FIELDS = {"image_id": 42, "file_name": "COCO_train2014_000000000042.jpg",
                    "filename": "COCO_train2014_000000000042.jpg", "stem": "COCO_train2014_000000000042",
                    "imgid": 0, "cocoid": 42}
FORMAT_FIELDS = {"coco": ("image_id", "file_name", "filename", "stem"),
                 "karpathy": ("image_id", "filename", "file_name", "stem", "imgid", "cocoid"),
                 "jsonl": ("image_id",)}
EXPECTED = {
    "coco": 'COCO captions JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "id", "caption"}]}',
    "karpathy": 'Karpathy split JSON: {"images": [{"filename", "imgid", "split", "sentences": [{"raw", "sentid"}]}]}',
    "jsonl": 'JSON lines, one {"image_id", "caption"[, "negatives", "id"]} per line',
}
# seeds of the independent random streams (with the run's seed)
_SCHEDULE, _STREAM, _TRAIN_ROW, _VAL_ROW = 0x5C4E, 0x57EA, 0x7A11, 0x7A12
_BLOCK = 4096  # optimizer steps per block of the objective schedule


def objective_code(name: str) -> int:
    """A stable number per objective name (seeds its example stream; ``hash()`` is salted)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


# ------------------------------------------------------------------------------------ caption files

@dataclass(frozen=True)
class CaptionFile:
    """One caption file and how to read it."""

    path: str
    format: str = "auto"
    image_key: str = "{image_id}"
    split: Optional[tuple[str, ...]] = None  # Karpathy splits to read (None: all)
    split_given: bool = False  # the file's own split (an error on other formats), not the module's default
    karpathy_only: bool = False  # val_split over the train files: their Karpathy files only


@dataclass(frozen=True)
class RawCaption:
    id: str
    fields: dict
    text: str
    negatives: tuple[str, ...]
    where: str


def _splits(value, where: str) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    values = (value,) if isinstance(value, str) else tuple(value)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{where}: a split is a name or a list of names (e.g. [train, restval]), got {value!r}")
    return values


def caption_files(files, option: str, fmt: str, image_key: str, split) -> list[CaptionFile]:
    """``files`` (paths or ``{path, format, image_key, split}``) as ``CaptionFile``s, checked."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not isinstance(files, (list, tuple)) or not files:
        raise ValueError(f"{option} must be a non-empty list of caption files (paths, or {{path, format, image_key, "
                         f"split}}), got {files!r}")
    out = []
    for k, entry in enumerate(files):
        where = f"{option}[{k}]"
        if isinstance(entry, (str, os.PathLike)):
            entry = {"path": str(entry)}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), (str, os.PathLike)) or not str(entry["path"]):
            raise ValueError(f"{where}: expected a path or {{path, format, image_key, split}}, got {entry!r}")
        unknown = set(entry) - {"path", "format", "image_key", "split"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; a file entry has path, format, image_key, split")
        f = entry.get("format", fmt)
        if f not in FORMATS:
            raise ValueError(f"{where}: format {f!r}, expected one of {', '.join(FORMATS)}")
        pattern = entry.get("image_key", image_key)
        key_pattern(pattern, IMAGE_KEY_FIELDS, f"{where} image_key")  # a bad pattern fails at start-up
        out.append(CaptionFile(str(entry["path"]), f, pattern, _splits(entry.get("split", split), where),
                               split_given="split" in entry))
    return out


def detect_format(path: str | Path) -> tuple[str, Any]:
    """``(format, parsed document or None)``: JSON lines if the first line is a caption record, else
    COCO (an ``annotations`` list) or Karpathy (an ``images`` list)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} does not exist; expected {' or '.join(EXPECTED.values())}")
    if path.suffix in (".jsonl", ".jl"):
        return "jsonl", None
    import json

    with open(path, "rb") as f:
        first = next((line for line in f if line.strip()), b"")
    try:
        head = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        head = None
    if isinstance(head, dict) and "annotations" not in head and "images" not in head and "caption" in head:
        return "jsonl", None
    doc = head if isinstance(head, dict) and ("annotations" in head or "images" in head) else None
    if doc is None:
        doc = read_json(path, f"caption file ({' or '.join(EXPECTED.values())})")
    if isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
        return "coco", doc
    if isinstance(doc, dict) and isinstance(doc.get("images"), list):
        return "karpathy", doc
    got = f"an object with keys {sorted(doc)[:6]}" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
    raise ValueError(f"{path}: cannot tell the caption format: {got}; expected {' or '.join(EXPECTED.values())} "
                     "(or give format: coco|karpathy|jsonl)")


def _id(value, where: str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        got = "missing" if value is None else f"{type(value).__name__} {value!r}"
        raise ValueError(f"{where}: {what} is {got}; expected an integer or a non-empty string")
    return str(value)


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else f"{type(value).__name__} {value!r}"
        raise ValueError(f"{where}: {what} is {got}; expected a non-empty string")
    return value


def _negatives(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: negatives is {value!r}; expected a list of non-empty caption strings")
    return tuple(value)


def _stem(name: Optional[str]) -> Optional[str]:
    return None if name is None else os.path.splitext(os.path.basename(name))[0]


def read_coco(path, doc=None) -> list[RawCaption]:
    """Captions of a COCO captions file (``captions_train2014.json``), in annotation order."""
    path = Path(path)
    what = EXPECTED["coco"]
    doc = read_json(path, what) if doc is None else doc
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise ValueError(f"{path}: expected {what}")
    names: dict = {}
    for k, im in enumerate(doc.get("images") or []):
        where = f"{path}, images[{k}]"
        if not isinstance(im, dict):
            raise ValueError(f"{where}: a JSON {type(im).__name__}, expected an object with id, file_name")
        img_id = im.get("id")
        _id(img_id, where, "field 'id'")
        names[img_id] = _text(im.get("file_name"), f"{where} (id {img_id!r})", "field 'file_name'")
    out = []
    for k, ann in enumerate(doc["annotations"]):
        where = f"{path}, annotations[{k}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where}: a JSON {type(ann).__name__}, expected an object with image_id, id, caption")
        ann_id = _id(ann.get("id"), where, "field 'id'")
        where = f"{where} (id {ann_id})"
        image_id = ann.get("image_id")
        _id(image_id, where, "field 'image_id'")
        if names and image_id not in names:
            raise ValueError(f"{where}: image_id {image_id!r} is not one of the file's images")
        name = names.get(image_id)
        out.append(RawCaption(ann_id, {"image_id": image_id, "file_name": name, "filename": name, "stem": _stem(name)},
                              _text(ann.get("caption"), where, "field 'caption'"),
                              _negatives(ann.get("negatives"), where), where))
    return out


def read_karpathy_captions(path, doc=None, splits: Optional[tuple[str, ...]] = None) -> list[RawCaption]:
    """Sentences of a Karpathy split file (``dataset_coco.json``), of the images in ``splits``."""
    path = Path(path)
    what = EXPECTED["karpathy"]
    doc = read_json(path, what) if doc is None else doc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"{path}: expected {what}")
    out, seen = [], set()
    for k, im in enumerate(doc["images"]):
        where = f"{path}, images[{k}]"
        if not isinstance(im, dict):
            raise ValueError(f"{where}: a JSON {type(im).__name__}, expected an object with filename, imgid, split, "
                             "sentences")
        filename = _text(im.get("filename"), where, "field 'filename'")
        where = f"{where} (filename {filename!r})"
        split = _text(im.get("split"), where, "field 'split'")
        seen.add(split)
        if splits is not None and split not in splits:
            continue
        imgid = im.get("imgid")
        _id(imgid, where, "field 'imgid'")
        cocoid = im.get("cocoid")
        if cocoid is not None:
            _id(cocoid, where, "field 'cocoid'")
        sentences = im.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise ValueError(f"{where}: field 'sentences' is {sentences!r}; expected a non-empty list of {{raw, sentid}}")
        fields = {"image_id": cocoid if cocoid is not None else imgid, "filename": filename, "file_name": filename,
                  "stem": _stem(filename), "imgid": imgid, "cocoid": cocoid}
        for j, sent in enumerate(sentences):
            swhere = f"{where}, sentences[{j}]"
            if not isinstance(sent, dict):
                raise ValueError(f"{swhere}: a JSON {type(sent).__name__}, expected an object with raw, sentid")
            sentid = _id(sent.get("sentid"), swhere, "field 'sentid'")
            out.append(RawCaption(sentid, fields, _text(sent.get("raw"), swhere, "field 'raw'"),
                                  _negatives(sent.get("negatives"), swhere), f"{swhere} (sentid {sentid})"))
    if splits is not None and not out:
        raise ValueError(f"{path}: no image has split {' or '.join(map(repr, splits))}; the file's splits are "
                         f"{sorted(seen)}")
    return out


def read_jsonl_captions(path) -> list[RawCaption]:
    """Captions of a JSON-lines file: ``{"image_id", "caption"[, "negatives", "id"]}`` per line."""
    out = []
    for lineno, where, rec in read_json_lines(path, "pre-training caption", "image_id, caption[, negatives, id]"):
        native = _id(rec["id"], where, "field 'id'") if "id" in rec else f"line{lineno}"
        where = f"{where} (id {native})" if "id" in rec else where
        image_id = rec.get("image_id")
        _id(image_id, where, "field 'image_id'")
        out.append(RawCaption(native, {"image_id": image_id}, _text(rec.get("caption"), where, "field 'caption'"),
                              _negatives(rec.get("negatives"), where), where))
    return out


def read_caption_file(entry: CaptionFile) -> tuple[str, list[RawCaption]]:
    """``(format, captions)`` of one file; an empty file (or split) is an error naming it."""
    fmt, doc = (entry.format, None) if entry.format != "auto" else detect_format(entry.path)
    if entry.karpathy_only and fmt != "karpathy":
        return fmt, []  # a train file without splits has no validation part
    if entry.split is not None and fmt != "karpathy" and entry.split_given:
        raise ValueError(f"{entry.path}: a split ({', '.join(entry.split)}) is given, but splits select images of "
                         f"Karpathy files and this is read as {fmt}; drop the split for it")
    if fmt == "coco":
        captions = read_coco(entry.path, doc)
    elif fmt == "karpathy":
        captions = read_karpathy_captions(entry.path, doc, entry.split)  # the module's splits apply here only
    else:
        captions = read_jsonl_captions(entry.path)
    if not captions:
        raise ValueError(f"{entry.path} holds no captions; expected {EXPECTED[fmt]}")
    return fmt, captions


class CaptionSet:
    """A split's captions, tokenised, with their images (store keys) and hard negatives; compact
    (flat token arrays) so millions of captions fit and travel to workers cheaply."""

    def __init__(self, ids: list[str], image_keys: list[str], tokens: list[list[int]],
                 negatives: list[list[list[int]]], source: str = ""):
        if not (len(ids) == len(image_keys) == len(tokens) == len(negatives)):
            raise ValueError("ids, image_keys, tokens and negatives must have one entry per caption")
        self.ids, self.source = ids, source
        self.images, index = [], {}
        for key in image_keys:
            if key not in index:
                index[key] = len(self.images)
                self.images.append(key)
        self.image_of = np.asarray([index[k] for k in image_keys], dtype=np.int64)
        self._tok, self._tok_off = self._flat(tokens)
        self._neg_count = np.asarray([len(n) for n in negatives], dtype=np.int64)
        self._neg_start = np.concatenate([[0], np.cumsum(self._neg_count)]).astype(np.int64)
        self._neg, self._neg_off = self._flat([t for n in negatives for t in n])

    @staticmethod
    def _flat(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
        flat = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(lengths.sum()))
        return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def tokens(self, i: int) -> torch.Tensor:
        """``[CLS] word-pieces [SEP]`` of caption ``i``."""
        return torch.from_numpy(self._tok[self._tok_off[i]:self._tok_off[i + 1]].astype(np.int64))

    def num_negatives(self, i: int) -> int:
        return int(self._neg_count[i])

    def negative(self, i: int, k: int) -> torch.Tensor:
        """The ``k``-th hard negative of caption ``i``, tokenised like it."""
        j = int(self._neg_start[i]) + k
        return torch.from_numpy(self._neg[self._neg_off[j]:self._neg_off[j + 1]].astype(np.int64))

    def image_key(self, i: int) -> str:
        return self.images[int(self.image_of[i])]


def build_caption_set(files: list[CaptionFile], tokenizer, max_txt_len: int, store: Optional[RegionFeatureStore],
                      split: str, limit: Optional[int] = None) -> CaptionSet:
    """Read, key, check against the store and tokenise a split's files (the first ``limit`` captions)."""
    multi = len(files) > 1
    ids, keys, texts, negatives, where = [], [], [], [], []
    seen: dict[str, str] = {}
    for entry in files:
        fmt, captions = read_caption_file(entry)
        pattern = key_pattern(entry.image_key, IMAGE_KEY_FIELDS, f"{entry.path} image_key")
        lacking = [f for f in pattern.used if f not in FORMAT_FIELDS[fmt]]
        if lacking:
            raise ValueError(f"{entry.path}: image_key {entry.image_key!r} uses {', '.join('{' + f + '}' for f in lacking)}, "
                             f"which {fmt} captions do not have; their fields are "
                             f"{', '.join('{' + f + '}' for f in FORMAT_FIELDS[fmt])}")
        prefix = f"{Path(entry.path).stem}:" if multi else ""
        for cap in captions:
            if limit is not None and len(ids) >= limit:
                break
            absent = [f for f in pattern.used if cap.fields.get(f) is None]
            if absent:
                raise ValueError(f"{cap.where}: image_key {entry.image_key!r} needs {', '.join(absent)}, which this "
                                 "record lacks (a COCO file without an images list has only {image_id}; "
                                 "Karpathy images without cocoid have no {cocoid})")
            try:
                key = pattern.format(**{f: cap.fields[f] for f in pattern.used})
            except ValueError as err:
                raise ValueError(f"{cap.where}: {err}") from None
            example = prefix + cap.id
            if example in seen:
                raise ValueError(f"{cap.where}: example id {example!r} is also used by {seen[example]}; expected unique "
                                 "ids within a split (COCO annotation ids, Karpathy sentids, JSON-lines ids)")
            seen[example] = cap.where
            ids.append(example)
            keys.append(key)
            texts.append(cap.text)
            negatives.append(cap.negatives)
            where.append(cap.where)
    source = " + ".join(f.path for f in files) + f" ({split})"
    if not ids:  # only val_split over train files without a Karpathy file can get here
        raise ValueError(f"{source}: no {split} captions: val_split picks images of Karpathy files, and none of these "
                         "is one; give val_files")
    if store is not None:
        store.require(zip(keys, where), source)
    del seen, where
    tokens: list[list[int]] = []
    flat_negatives = [n for negs in negatives for n in negs]
    neg_tokens: list[list[int]] = []
    for chunk in range(0, len(texts), 20000):  # one batched tokenizer call per chunk: bounded memory
        tokens += encode_uniter_batch(tokenizer, texts[chunk:chunk + 20000], max_txt_len)
    for chunk in range(0, len(flat_negatives), 20000):
        neg_tokens += encode_uniter_batch(tokenizer, flat_negatives[chunk:chunk + 20000], max_txt_len)
    grouped, k = [], 0
    for negs in negatives:
        grouped.append(neg_tokens[k:k + len(negs)])
        k += len(negs)
    return CaptionSet(ids, keys, tokens, grouped, source)


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


class PretrainBatchMaker:
    """Turns example indices (and one RNG per row) into one objective's batch (the module
    docstring's contract). Picklable: a DataLoader worker gets its own copy."""

    def __init__(self, captions: CaptionSet, store: Optional[RegionFeatureStore], special_ids: dict[str, int],
                 ordinary: np.ndarray, vocab_size: int, mlm_prob: float = 0.15, mrm_prob: float = 0.15,
                 itm_neg_prob: float = 0.5, itm_hard_neg_prob: float = 0.0, max_count: int = 8,
                 text_only: bool = False, mlm_only: Optional[np.ndarray] = None, every_row: tuple[str, ...] = (),
                 class_words: Optional[np.ndarray] = None):
        self.captions, self.store, self.text_only = captions, store, text_only
        self.class_words = class_words  # (classes, vocab) bool: summary over the words of class names
        self.mlm_only, self.every_row = mlm_only, tuple(every_row)
        self.mask_id = special_ids["mask"]
        self.keep_ids = np.asarray([special_ids["cls"], special_ids["sep"], special_ids["pad"]], dtype=np.int64)
        self.ordinary, self.vocab_size = ordinary, vocab_size
        self.ordinary_mask = np.zeros(vocab_size, dtype=bool)
        self.ordinary_mask[ordinary] = True
        self.mlm_prob, self.mrm_prob = mlm_prob, mrm_prob
        self.itm_neg_prob, self.itm_hard_neg_prob = itm_neg_prob, itm_hard_neg_prob
        self.max_count = max_count

    def _other_image(self, i: int, rng: np.random.Generator) -> int:
        own, n = int(self.captions.image_of[i]), len(self.captions.images)
        other = int(rng.integers(n - 1))
        return other + (other >= own)

    def build(self, objective: str, indices, rngs) -> dict:
        caps = self.captions
        rows, labels, img_masks, soft, targets, shown = [], [], [], [], [], []
        extras = () if objective in self.every_row else self.every_row  # targets of every row, too
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
            if not self.text_only:
                key = caps.images[image]
                row["img_feat"], row["img_pos_feat"] = self.store.get(key, example=example)
                if objective in REGION_OBJECTIVES:
                    img_masks.append(torch.from_numpy(mask_regions(len(row["img_feat"]), rng, self.mrm_prob)))
                if objective in SOFT_LABEL_OBJECTIVES or "summary" in extras:
                    soft.append(self.store.get_soft_labels(key, example=example))
            rows.append(row)
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
    targets each part's batch carries for them."""
    names = list(parts)
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


# ------------------------------------------------------------------------------------- scheduling

class ObjectiveSchedule:
    """The objective of every optimizer step, drawn with probability ∝ ratio from an RNG seeded by
    ``seed`` (blocks of ``_BLOCK`` steps, each from its own seed: any step is cheap to look up)."""

    def __init__(self, names: tuple[str, ...], ratios: tuple[float, ...], seed: int):
        total = float(sum(ratios))
        self.names, self.seed = tuple(names), int(seed)
        self.probs = np.asarray(ratios, dtype=np.float64) / total
        self._cache: dict[int, np.ndarray] = {}

    def _block(self, b: int) -> np.ndarray:
        if b not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            rng = np.random.default_rng([self.seed, _SCHEDULE, b])
            self._cache[b] = rng.choice(len(self.names), size=_BLOCK, p=self.probs).astype(np.int64)
        return self._cache[b]

    def steps(self, lo: int, hi: int) -> np.ndarray:
        """Objective indices of the steps ``lo .. hi - 1``."""
        if hi <= lo:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self._block(b)[max(lo - b * _BLOCK, 0):min(hi - b * _BLOCK, _BLOCK)]
                               for b in range(lo // _BLOCK, (hi - 1) // _BLOCK + 1)])

    def of_step(self, step: int) -> str:
        return self.names[int(self.steps(step, step + 1)[0])]

    def micro_batches_before(self, g: int, accumulate: int) -> np.ndarray:
        """How many of the micro-batches ``0 .. g - 1`` each objective has."""
        counts = np.zeros(len(self.names), dtype=np.int64)
        step, within = divmod(g, accumulate)
        for lo in range(0, step, _BLOCK):
            counts += np.bincount(self.steps(lo, min(step, lo + _BLOCK)), minlength=len(self.names)) * accumulate
        if within:
            counts[self.steps(step, step + 1)[0]] += within
        return counts


class ExampleStream:
    """An objective's example indices: pass p is a permutation seeded by (seed, objective, p)."""

    def __init__(self, num_examples: int, seed: int, code: int):
        self.n, self.seed, self.code = int(num_examples), int(seed), int(code)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, p: int) -> np.ndarray:
        if p not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[p] = np.random.default_rng([self.seed, _STREAM, self.code, p]).permutation(self.n)
        return self._perms[p]

    def at(self, positions: np.ndarray) -> np.ndarray:
        passes, within = np.divmod(np.asarray(positions, dtype=np.int64), self.n)
        out = np.empty(len(within), dtype=np.int64)
        for p in np.unique(passes):
            hit = passes == p
            out[hit] = self._perm(int(p))[within[hit]]
        return out


class PretrainStream(IterableDataset):
    """Training micro-batches, collated (use with ``DataLoader(batch_size=None)``); see the module
    docstring. ``total``: the micro-batches of the whole training (``max_steps × accumulate``),
    the loader's length; the first pass yields ``start .. total - 1`` (``start`` > 0 when a fit
    resumes). Without ``total`` a pass is one epoch over the captions, counted from ``start``."""

    def __init__(self, maker: PretrainBatchMaker, schedule: ObjectiveSchedule, batch_size: int, accumulate: int = 1,
                 rank: int = 0, world_size: int = 1, seed: int = 0, total: Optional[int] = None, start: int = 0,
                 row_mix: Optional[list[int]] = None):
        if batch_size <= 0 or accumulate <= 0 or world_size <= 0 or not 0 <= rank < world_size or start < 0:
            raise ValueError(f"need batch_size, accumulate, world_size > 0, 0 <= rank < world_size and start >= 0, got "
                             f"{batch_size}, {accumulate}, {world_size}, {rank}, {start}")
        n = len(maker.captions)
        if n == 0:
            raise ValueError(f"{maker.captions.source}: no training captions")
        self.maker, self.schedule = maker, schedule
        self.batch_size, self.accumulate, self.rank, self.world_size = batch_size, accumulate, rank, world_size
        self.seed = int(seed)
        self.streams = [ExampleStream(n, self.seed, objective_code(o)) for o in schedule.names]
        if total is not None:
            self.length, self._first_end = int(total), max(int(start), int(total))
        else:  # one pass over the captions (all objectives together), in whole optimizer steps
            self.length = max(accumulate, (n // (batch_size * world_size)) // accumulate * accumulate)
            self._first_end = int(start) + self.length
        self.start = int(start)
        self.row_mix = None if row_mix is None else [int(c) for c in row_mix]
        if self.row_mix is not None and (len(self.row_mix) != len(schedule.names) or sum(self.row_mix) != batch_size):
            raise ValueError(f"row_mix {row_mix}: expected one row count per objective of {schedule.names}, "
                             f"summing to the batch size {batch_size}")
        self.every_row = tuple(o for o in schedule.names if o in maker.every_row)
        self._passes = 0  # completed passes (each worker counts its own copy's)

    def __len__(self) -> int:
        return self.length

    def micro_batch_range(self, passes: int) -> tuple[int, int]:
        """The global micro-batch indices ``[begin, end)`` of pass ``passes`` (0 = the first)."""
        if passes == 0:
            return self.start, self._first_end
        begin = self._first_end + (passes - 1) * self.length
        return begin, begin + self.length

    def objectives(self, begin: int, end: int) -> list[str]:
        """The objective of each micro-batch ``begin .. end - 1``."""
        acc = self.accumulate
        steps = self.schedule.steps(begin // acc, (end - 1) // acc + 1) if end > begin else []
        return [self.schedule.names[int(steps[g // acc - begin // acc])] for g in range(begin, end)]

    def examples(self, objective: int, count: int) -> np.ndarray:
        """Example indices of this rank's ``count``-th micro-batch of an objective."""
        b, w = self.batch_size, self.world_size
        return self.streams[objective].at(((count * w + self.rank) * b) + np.arange(b))

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        begin, end = self.micro_batch_range(self._passes)
        if self.row_mix is not None:
            yield from self._joint(begin, end, worker, workers)
            self._passes += 1
            return
        counts = self.schedule.micro_batches_before(begin, self.accumulate)
        acc = self.accumulate
        steps = self.schedule.steps(begin // acc, (end - 1) // acc + 1) if end > begin else np.zeros(0, np.int64)
        for g in range(begin, end):
            o = int(steps[g // acc - begin // acc])
            count = int(counts[o])
            counts[o] += 1
            if (g - begin) % workers != worker:
                continue
            rngs = [np.random.default_rng([self.seed, _TRAIN_ROW, self.rank, g, j]) for j in range(self.batch_size)]
            yield self.maker.build(self.schedule.names[o], self.examples(o, count), rngs)
        self._passes += 1  # only a pass run to its end counts (an abandoned iterator does not)

    def _joint(self, begin: int, end: int, worker: int, workers: int):
        """``mix: row``: micro-batch g holds ``row_mix[o]`` rows of every objective o (its own
        stream's positions g·rows ..), merged into one joint batch."""
        for g in range(begin, end):
            if (g - begin) % workers == worker:
                yield merge_batches(self.joint_parts(g), self.every_row)

    def joint_parts(self, g: int) -> dict[str, dict]:
        """The single-objective batches micro-batch ``g`` of ``mix: row`` is merged from."""
        parts, w = {}, self.world_size
        for o, (name, c) in enumerate(zip(self.schedule.names, self.row_mix)):
            if name in self.every_row:
                continue
            indices = self.streams[o].at(((g * w + self.rank) * c) + np.arange(c))
            rngs = [np.random.default_rng([self.seed, _TRAIN_ROW, self.rank, g, o, j]) for j in range(c)]
            parts[name] = self.maker.build(name, indices, rngs)
        return parts


class PretrainEvalBatches(Dataset):
    """Validation: for each objective in turn, batches over the captions in order, masking and
    negatives seeded by (seed, objective, example index). Item k is a whole batch (use
    ``DataLoader(batch_size=None)``; a distributed sampler splits batches across ranks)."""

    def __init__(self, maker: PretrainBatchMaker, objectives: tuple[str, ...], batch_size: int, seed: int = 0):
        n = len(maker.captions)
        self.maker, self.seed = maker, int(seed)
        self.items = [(o, list(range(lo, min(n, lo + batch_size)))) for o in objectives for lo in range(0, n, batch_size)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        objective, indices = self.items[k]
        code = objective_code(objective)
        rngs = [np.random.default_rng([self.seed, _VAL_ROW, code, i]) for i in indices]
        return self.maker.build(objective, indices, rngs)


# ------------------------------------------------------------------------------------ data module

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
        super().__init__(features=features, tokenizer=tokenizer, **kwargs)
        if format not in FORMATS:
            raise ValueError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
        key_pattern(image_key, IMAGE_KEY_FIELDS, "pre-training image_key")  # a bad pattern fails here
        self.objectives = check_objectives(dict(UNITER_MIX) if objectives is None else dict(objectives))
        for name, p in (("mlm_prob", mlm_prob), ("mrm_prob", mrm_prob)):
            if not 0 < p <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {p}")
        for name, p in (("itm_neg_prob", itm_neg_prob), ("itm_hard_neg_prob", itm_hard_neg_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if val_examples is not None and val_examples <= 0:
            raise ValueError(f"val_examples must be positive or None, got {val_examples}")
        if max_count <= 0:
            raise ValueError(f"max_count must be positive, got {max_count}")
        active = [o for o, r in self.objectives.items() if r > 0]
        if text_only and active != ["mlm"]:
            raise ValueError(f"text_only batches carry no image, so only mlm can be trained; objectives {self.objectives} "
                             f"has {', '.join(o for o in active if o != 'mlm')}")
        if mix not in MIXES:
            raise ValueError(f"mix {mix!r}: expected 'step' (one objective per optimizer step, UNITER's MetaLoader) or "
                             "'row' (every micro-batch holds rows of every objective, split by ratio)")
        if mix == "row" and text_only:
            raise ValueError("mix 'row' joins rows of several objectives with their images; text_only batches have none")
        if mlm_words is not None and (isinstance(mlm_words, str) or not mlm_words
                                      or not all(isinstance(w, str) and w for w in mlm_words)):
            raise ValueError(f"mlm_words must be a non-empty list of words (word-pieces of the tokenizer), got {mlm_words!r}")
        if summary_targets not in ("classes", "words"):
            raise ValueError(f"summary_targets {summary_targets!r}: expected 'classes' (the region classes present) or "
                             "'words' (the word-pieces of their names present; the head needs summary_targets: words too)")
        every_row = tuple(every_row or ())
        if every_row and mix != "row":
            raise ValueError(f"every_row {list(every_row)} needs mix 'row' (a joint batch whose rows they share)")
        for name in every_row:
            if name not in EVERY_ROW_KEYS or self.objectives.get(name, 0) <= 0:
                raise ValueError(f"every_row: {name!r} must be one of {', '.join(EVERY_ROW_KEYS)} with a positive mix "
                                 f"ratio in objectives ({self.objectives})")
        if every_row and all(o in every_row for o, r in self.objectives.items() if r > 0):
            raise ValueError(f"every_row {list(every_row)}: at least one objective must have rows of its own")
        if not text_only and not features:
            raise ValueError("features (the region-feature store) is required unless text_only is true")
        self.train_entries = caption_files(train_files, "train_files", format, image_key, train_split)
        if val_files is not None:
            self.val_entries = caption_files(val_files, "val_files", format, image_key, val_split)
        elif val_split is not None:
            self.val_entries = [CaptionFile(e.path, e.format, e.image_key, _splits(val_split, "val_split"),
                                            karpathy_only=True) for e in self.train_entries]
        else:
            self.val_entries = None
        self.train_files, self.val_files, self.format = train_files, val_files, format
        self.train_split, self.val_split, self.image_key = train_split, val_split, image_key
        self.mlm_prob, self.mrm_prob = mlm_prob, mrm_prob
        self.itm_neg_prob, self.itm_hard_neg_prob = itm_neg_prob, itm_hard_neg_prob
        self.val_examples, self.max_count, self.text_only, self.seed = val_examples, max_count, text_only, seed
        self.mix, self.mlm_words = mix, None if mlm_words is None else list(mlm_words)
        self.every_row, self.summary_targets = every_row, summary_targets
        self._ordinary: Optional[np.ndarray] = None
        self._mlm_ids: Optional[np.ndarray] = None

    # -- what the model reads
    @property
    def labels(self) -> Optional[list[str]]:
        """The store's region classes (its ``soft_label_names``, else ``__background__``,
        ``class_1``, ...) when it has soft labels — the model sizes its region classifier by
        them — else None (then ``mrc``, ``mrckl`` and ``summary`` are refused at setup)."""
        if self.text_only or not self.features:
            return None
        store = self.store
        if not store.has_soft_labels:
            return None
        return list(store.soft_label_names or ["__background__"] + [f"class_{i}" for i in range(1, store.soft_label_dim)])

    @property
    def active_objectives(self) -> tuple[str, ...]:
        """The objectives with a positive mix ratio, in ``OBJECTIVES`` order."""
        return tuple(o for o in OBJECTIVES if self.objectives.get(o, 0) > 0)

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

    # -- splits
    def split_files(self) -> dict[str, Optional[str]]:
        def shown(entries):
            return None if not entries else " + ".join(e.path for e in entries)
        return {"train": shown(self.train_entries), "val": shown(self.val_entries), "test": None}

    def _check_store_for_objectives(self) -> None:
        needs = [o for o in self.active_objectives if o in SOFT_LABEL_OBJECTIVES]
        if needs and not self.text_only and not self.store.has_soft_labels:
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
            len(self.tokenizer), self.mlm_prob, self.mrm_prob, self.itm_neg_prob, self.itm_hard_neg_prob,
            self.max_count, self.text_only, self.mlm_token_ids, self.every_row if split == "train" else (),
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
        if self.mix == "row":  # every_row objectives take no rows of their own
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
