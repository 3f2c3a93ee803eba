"""Pre-training captions: reading COCO, Karpathy and JSON-lines caption files into a compact
``CaptionSet`` keyed to the region-feature store (``data_modules.pretrain.PretrainDataModule``'s
``train_files`` / ``val_files``).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..features import RegionFeatureStore
from ..image_keys import key_pattern
from ..jsonl import read_json, read_json_lines
from ..tokenization import encode_uniter_batch

FORMATS = ("auto", "coco", "karpathy", "jsonl")
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


def karpathy_splits(value, where: str) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    values = (value,) if isinstance(value, str) else tuple(value)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{where}: a split is a name or a list of names (e.g. [train, restval]), got {value!r}")
    return values


@dataclass(frozen=True)
class CaptionSources:
    """Where a split's captions come from: the ``PretrainDataModule`` options ``train_files``,
    ``val_files``, ``format``, ``train_split``, ``val_split`` and ``image_key``; the format and
    the key pattern are checked at once, the file entries by ``entries``."""

    train_files: Any
    val_files: Any = None
    format: str = "auto"
    train_split: Any = None
    val_split: Any = None
    image_key: str = "{image_id}"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r}: expected one of {', '.join(FORMATS)}")
        key_pattern(self.image_key, IMAGE_KEY_FIELDS, "pre-training image_key")  # a bad pattern fails here

    def entries(self) -> tuple[list[CaptionFile], Optional[list[CaptionFile]]]:
        """The train and validation files as checked ``CaptionFile``s (validation None when neither
        ``val_files`` nor ``val_split`` is given; ``val_split`` alone reads the Karpathy train files)."""
        train = caption_files(self.train_files, "train_files", self.format, self.image_key, self.train_split)
        if self.val_files is not None:
            val = caption_files(self.val_files, "val_files", self.format, self.image_key, self.val_split)
        elif self.val_split is not None:
            splits = karpathy_splits(self.val_split, "val_split")
            val = [CaptionFile(e.path, e.format, e.image_key, splits, karpathy_only=True) for e in train]
        else:
            val = None
        return train, val


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
        out.append(CaptionFile(str(entry["path"]), f, pattern, karpathy_splits(entry.get("split", split), where),
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
