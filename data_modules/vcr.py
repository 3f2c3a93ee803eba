"""VCR: pick the right answer to a question about a movie frame, then the right rationale.
Reads VCR's public JSON-lines files (``train.jsonl``, ``val.jsonl``, ``test.jsonl``).

Each example becomes eight rows (the layout of ChenRocks/UNITER ``data/vcr.py``):

* rows 8k .. 8k+3, Q→A: ``[CLS] q [SEP] a_i [SEP]`` for answer choices i = 0..3, text type 0 for
  ``[CLS] q`` and 2 for ``[SEP] a_i [SEP]``;
* rows 8k+4 .. 8k+7, QA→R: ``[CLS] q [SEP] a_gt [SEP] r_j [SEP]`` for rationale choices j = 0..3,
  with the ground-truth answer; types 0 for ``[CLS] q``, 2 for ``[SEP] a_gt``, 3 for
  ``[SEP] r_j [SEP]``.

All rows carry the image's regions with image type 1. ``targets`` is (B, 2) long =
(answer_label, rationale_label); examples without labels (VCR's test file) get -1 and condition
their QA→R rows on answer choice 0 — a placeholder, only the Q→A scores of such rows mean anything
(the leaderboard's "rationale given each answer" needs 16 rows, outside this 8-row contract).

Mixed tokens. VCR sentences are lists whose items are words or JSON lists of 0-based indices into
``objects`` (object mentions; a string such as ``"[1]"`` is just a word). As in UNITER, a mention
of object i < ``num_object_tokens`` (81) becomes ONE token id ``object_token_offset + i`` (UNITER
appends 81 rows to the word table: 28996 → 29077; the model extends its table for VCR). The
offset defaults to ``len(tokenizer)``, which must equal the model's ``vocab_size`` for these ids to
be the appended rows (bert-base-cased: 28996 both; the demo pads its vocabulary to the demo
model's ``vocab_size`` for the same reason). A mention of several objects ``[0, 2]`` becomes
their tokens joined by the word "and". An index >= ``num_object_tokens`` has no token of its own
and falls back to the word-pieces of its class name in ``objects`` (e.g. "person"). Words are
word-pieced one by one as UNITER's prepro does.

Images. The store key comes from ``image_key``, a format string over ``{img_id}``, ``{img_fn}``,
``{img_fn_stem}`` (img_fn without its extension) and ``{movie}``. Per image the store must hold the
ground-truth boxes first, in ``objects`` order — region i is object i, as UNITER concatenates its
``vcr_gt`` db before the detected one — followed by any detected boxes; an image with fewer
regions than ``objects`` is refused at setup.

Truncation. ``max_txt_len`` bounds the word-pieces of a row without its [CLS]/[SEP]s (UNITER: 220
for VCR; it drops longer training examples, we truncate instead so val/test never lose one). Each
row is truncated on its own, longest part first: while the row is too long, the last piece of its
longest part (question, answer or rationale; on a tie the later part) is removed. Short parts thus
survive intact and no part is emptied while another is longer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import VLDataModule
from .batching import collate_rows
from .features import RegionFeatureStore
from .image_keys import ImageKeyPattern, key_pattern
from .jsonl import read_json_lines
from .tokenization import encode_uniter_batch

NUM_CHOICES = 4
STRING_FIELDS = ("annot_id", "img_id", "img_fn", "movie")
SENTENCE_FIELDS = ("question", "answer_choices", "rationale_choices")
LABEL_FIELDS = ("answer_label", "rationale_label")
# image_key fields with sample values
IMAGE_KEY_FIELDS = {"img_id": "val-3", "img_fn": "lsmdc_1054_Harry_Potter/1054_Harry_Potter_00.01.21.867@12.jpg",
                    "img_fn_stem": "lsmdc_1054_Harry_Potter/1054_Harry_Potter_00.01.21.867@12",
                    "movie": "1054_Harry_Potter"}
# text type ids (ChenRocks/UNITER ``data/vcr.py``): question (with [CLS]), answer, rationale
TYPE_QUESTION, TYPE_ANSWER, TYPE_RATIONALE = 0, 2, 3
IMAGE_TYPE = 1


@dataclass(frozen=True)
class VcrRecord:
    """One line of a VCR file; sentences keep their mixed tokens (str or tuple of ints)."""

    annot_id: str
    img_id: str
    img_fn: str
    movie: str
    objects: tuple[str, ...]
    question: tuple
    answer_choices: tuple[tuple, ...]
    rationale_choices: tuple[tuple, ...]
    answer_label: int  # -1 when the line has no labels (test)
    rationale_label: int
    line: int


@dataclass(frozen=True)
class VcrExample:
    """A record tokenised: word-pieces (object tokens included) of the question, the 4 answers and
    the 4 rationales, concatenated in ``pieces`` with part ``i`` at ``bounds[i]:bounds[i+1]``
    (one int32 array per example keeps 200k+ examples small)."""

    annot_id: str
    image: str
    pieces: np.ndarray
    bounds: tuple[int, ...]
    answer_label: int
    rationale_label: int
    num_objects: int
    line: int

    def part(self, i: int) -> list[int]:
        return self.pieces[self.bounds[i]:self.bounds[i + 1]].tolist()


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def _check_sentence(value, where: str, field: str, num_objects: int) -> tuple:
    """A mixed-token list as a tuple of words (str) and mentions (tuple of object indices)."""
    expect = ("expected a list of words (strings) and object mentions (non-empty lists of 0-based "
              f"indices into the {num_objects} objects)")
    if not isinstance(value, list):
        raise ValueError(f"{where}: {field} is {_describe(value)}; {expect}")
    out = []
    for pos, tok in enumerate(value):
        if isinstance(tok, str):
            out.append(tok)
            continue
        if not (isinstance(tok, list) and tok and all(isinstance(i, int) and not isinstance(i, bool) for i in tok)):
            raise ValueError(f"{where}: {field} token {pos} is {_describe(tok)}; {expect}")
        bad = [i for i in tok if not 0 <= i < num_objects]
        if bad:
            raise ValueError(f"{where}: {field} token {pos} mentions object {bad[0]}, but the line has "
                             f"{num_objects} objects (valid indices 0..{num_objects - 1})")
        out.append(tuple(tok))
    return tuple(out)


def _parse_record(rec, where: str, require_labels: bool, lineno: int) -> VcrRecord:
    annot = rec.get("annot_id")
    if isinstance(annot, str):
        where = f"{where} (annot_id {annot!r})"
    for field in STRING_FIELDS:
        if not isinstance(rec.get(field), str) or not rec[field]:
            got = "missing" if field not in rec else _describe(rec[field])
            raise ValueError(f"{where}: field {field!r} is {got}; expected a non-empty string")
    objects = rec.get("objects")
    if not (isinstance(objects, list) and all(isinstance(o, str) and o.strip() for o in objects)):
        got = "missing" if "objects" not in rec else _describe(objects)
        raise ValueError(f"{where}: field 'objects' is {got}; expected a list of class names (strings)")
    n = len(objects)
    if "question" not in rec:
        raise ValueError(f"{where}: field 'question' is missing; expected a mixed-token list")
    question = _check_sentence(rec["question"], where, "question", n)
    choices = {}
    for field in SENTENCE_FIELDS[1:]:
        value = rec.get(field)
        if not (isinstance(value, list) and len(value) == NUM_CHOICES):
            got = "missing" if field not in rec else _describe(value)
            raise ValueError(f"{where}: field {field!r} is {got}; expected a list of {NUM_CHOICES} mixed-token lists")
        choices[field] = tuple(_check_sentence(c, where, f"{field}[{k}]", n) for k, c in enumerate(value))
    labels = []
    for field in LABEL_FIELDS:
        value = rec.get(field)
        if value is None:
            if require_labels:
                raise ValueError(f"{where}: field {field!r} is missing; expected an int 0..{NUM_CHOICES - 1} "
                                 "(train and val lines need labels; only the test file may omit them)")
            labels.append(-1)
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < NUM_CHOICES:
            raise ValueError(f"{where}: field {field!r} is {_describe(value)}; expected an int 0..{NUM_CHOICES - 1}")
        labels.append(value)
    if (labels[0] < 0) != (labels[1] < 0):
        raise ValueError(f"{where}: has {'rationale_label' if labels[0] < 0 else 'answer_label'} but not the other; "
                         "expected both labels or neither")
    return VcrRecord(annot, rec["img_id"], rec["img_fn"], rec["movie"], tuple(objects), question,
                     choices["answer_choices"], choices["rationale_choices"], labels[0], labels[1], lineno)


def read_vcr_records(path: str | Path, require_labels: bool = True) -> list[VcrRecord]:
    """Parse a VCR JSON-lines file; a malformed line is an error naming file, line and expectation.
    ``require_labels=False`` (test files) accepts lines without answer/rationale labels."""
    records, seen = [], {}
    fields = ", ".join(STRING_FIELDS + ("objects",) + SENTENCE_FIELDS)
    for lineno, where, rec in read_json_lines(path, "VCR", fields):
        record = _parse_record(rec, where, require_labels, lineno)
        if record.annot_id in seen:
            raise ValueError(f"{where}: annot_id {record.annot_id!r} already used on line {seen[record.annot_id]}")
        seen[record.annot_id] = lineno
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no VCR examples; expected JSON lines with "
                         f"{', '.join(STRING_FIELDS + ('objects',) + SENTENCE_FIELDS)}")
    return records


def image_key_pattern(image_key: str | ImageKeyPattern = "{img_id}") -> ImageKeyPattern:
    """VCR's ``image_key`` checked: fields ``{img_id}``, ``{img_fn}``, ``{img_fn_stem}``, ``{movie}``."""
    return key_pattern(image_key, IMAGE_KEY_FIELDS, "VCR image_key")


def image_key_of(record: VcrRecord, image_key: str | ImageKeyPattern = "{img_id}") -> str:
    """The store key of a record's image (see the module docstring for the fields)."""
    stem = record.img_fn.rsplit(".", 1)[0] if "." in record.img_fn.rsplit("/", 1)[-1] else record.img_fn
    return image_key_pattern(image_key).format(img_id=record.img_id, img_fn=record.img_fn, img_fn_stem=stem,
                                               movie=record.movie)


class MixedTokenEncoder:
    """Word-pieces of VCR's mixed-token sentences. Every distinct word is word-pieced once (one
    batched tokenizer call per file); an object mention becomes its object token(s)."""

    def __init__(self, tokenizer, object_token_offset: int, num_object_tokens: int = 81):
        self.tokenizer = tokenizer
        self.offset = object_token_offset
        self.num_object_tokens = num_object_tokens
        self._pieces: dict[str, list[int]] = {}

    def _words(self, sentence, objects) -> list[str]:
        words = []
        for tok in sentence:
            if isinstance(tok, str):
                words += tok.split()
            else:
                words.append("and")
                words += [w for i in tok if i >= self.num_object_tokens for w in objects[i].split()]
        return words

    def prime(self, records: list[VcrRecord]) -> None:
        """Word-piece every word of ``records`` not seen yet, in one batched call."""
        new = set()
        for r in records:
            for sentence in (r.question, *r.answer_choices, *r.rationale_choices):
                new.update(w for w in self._words(sentence, r.objects) if w not in self._pieces)
        words = sorted(new)
        for word, ids in zip(words, encode_uniter_batch(self.tokenizer, words, 1 << 30)):
            self._pieces[word] = ids[1:-1]  # without [CLS] / [SEP]

    def _word(self, word: str) -> list[int]:
        if word not in self._pieces:
            self._pieces[word] = encode_uniter_batch(self.tokenizer, [word], 1 << 30)[0][1:-1]
        return self._pieces[word]

    def mention(self, indices: tuple[int, ...], objects: tuple[str, ...]) -> list[int]:
        """Object token per index (class-name pieces past ``num_object_tokens``), joined by "and"."""
        out: list[int] = []
        for k, i in enumerate(indices):
            if k:
                out += self._word("and")
            if i < self.num_object_tokens:
                out.append(self.offset + i)
            else:
                out += [p for w in objects[i].split() for p in self._word(w)]
        return out

    def encode(self, sentence: tuple, objects: tuple[str, ...]) -> list[int]:
        out: list[int] = []
        for tok in sentence:
            if isinstance(tok, str):
                out += [p for w in tok.split() for p in self._word(w)]
            else:
                out += self.mention(tok, objects)
        return out


def truncate_longest_first(parts: list[list[int]], max_len: int) -> list[list[int]]:
    """Shorten ``parts`` to at most ``max_len`` pieces in total: repeatedly drop the last piece of
    the longest part (the later part on a tie)."""
    lengths = [len(p) for p in parts]
    excess = sum(lengths) - max_len
    while excess > 0:
        longest = max(range(len(lengths)), key=lambda k: (lengths[k], k))
        lengths[longest] -= 1
        excess -= 1
    return [p[:n] for p, n in zip(parts, lengths)]


def build_rows(example: VcrExample, cls: int, sep: int, max_txt_len: int) -> list[tuple[list[int], list[int]]]:
    """The 8 ``(input_ids, txt_type_ids)`` of an example: 4 × Q→A, then 4 × QA→R with the gt
    answer (answer 0 for unlabeled examples)."""
    q = example.part(0)
    rows = []
    for i in range(NUM_CHOICES):
        qt, at = truncate_longest_first([q, example.part(1 + i)], max_txt_len)
        ids = [cls, *qt, sep, *at, sep]
        types = [TYPE_QUESTION] * (1 + len(qt)) + [TYPE_ANSWER] * (len(at) + 2)
        rows.append((ids, types))
    gt = example.part(1 + max(example.answer_label, 0))
    for j in range(NUM_CHOICES):
        qt, at, rt = truncate_longest_first([q, gt, example.part(5 + j)], max_txt_len)
        ids = [cls, *qt, sep, *at, sep, *rt, sep]
        types = ([TYPE_QUESTION] * (1 + len(qt)) + [TYPE_ANSWER] * (1 + len(at))
                 + [TYPE_RATIONALE] * (len(rt) + 2))
        rows.append((ids, types))
    return rows


def object_token_start(tokenizer, object_token_offset: Optional[int] = None) -> int:
    """The id of object 0's token: ``object_token_offset``, by default ``len(tokenizer)``. An
    offset below ``len(tokenizer)`` would give object tokens the ids of real word-pieces: a
    ``ValueError`` naming the tokenizer, its size and the offset."""
    size = len(tokenizer)
    if object_token_offset is None:
        return size
    if object_token_offset < size:
        path = getattr(tokenizer, "uniter_vocab_path", None) or "in use"
        raise ValueError(f"object_token_offset {object_token_offset} is below the size of tokenizer {path} "
                         f"({size} tokens, ids 0..{size - 1}): VCR's object tokens would reuse word-piece ids; "
                         f"expected object_token_offset >= {size}, or null for {size} (UNITER: 28996 with "
                         "bert-base-cased)")
    return object_token_offset


def read_vcr(path: str | Path, tokenizer, image_key: str | ImageKeyPattern = "{img_id}",
             object_token_offset: Optional[int] = None, num_object_tokens: int = 81,
             require_labels: bool = True) -> list[VcrExample]:
    """Records of ``path`` word-pieced (object mentions as object tokens), with their store keys."""
    image_key = image_key_pattern(image_key)
    offset = object_token_start(tokenizer, object_token_offset)
    records = read_vcr_records(path, require_labels)
    encoder = MixedTokenEncoder(tokenizer, offset, num_object_tokens)
    encoder.prime(records)
    examples = []
    for r in records:
        parts = [encoder.encode(s, r.objects) for s in (r.question, *r.answer_choices, *r.rationale_choices)]
        bounds = tuple(np.cumsum([0] + [len(p) for p in parts]).tolist())
        pieces = np.asarray([i for p in parts for i in p], dtype=np.int32)
        examples.append(VcrExample(r.annot_id, image_key_of(r, image_key), pieces, bounds, r.answer_label,
                                   r.rationale_label, len(r.objects), r.line))
    return examples


class VcrDataset(Dataset):
    """Examples whose images are in ``store`` with at least one region per object (checked here,
    for every example at once); items are the example's 8 rows."""

    def __init__(self, examples: list[VcrExample], store: RegionFeatureStore, cls: int, sep: int,
                 max_txt_len: int, source: str = ""):
        store.require(((ex.image, f"annot_id {ex.annot_id}") for ex in examples), source or "the VCR examples")
        regions: dict[str, int] = {}
        for ex in examples:
            if ex.image not in regions:
                regions[ex.image] = store.num_boxes(ex.image)
            if regions[ex.image] < ex.num_objects:
                capped = f" (max_boxes={store.max_boxes})" if store.max_boxes is not None else ""
                raise ValueError(
                    f"{store.path}: image {ex.image!r} has {regions[ex.image]} regions{capped}, but {source}, line "
                    f"{ex.line} (annot_id {ex.annot_id}) lists {ex.num_objects} objects; expected the image's "
                    "ground-truth boxes first, one per object in `objects` order, then detected boxes")
        self.examples = examples
        self.store = store
        self.cls, self.sep, self.max_txt_len = cls, sep, max_txt_len
        self.source = source

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        feat, pos = self.store.get(ex.image, example=f"annot_id {ex.annot_id}")
        img_types = torch.full((len(feat),), IMAGE_TYPE, dtype=torch.long)
        rows = [{"input_ids": torch.tensor(ids, dtype=torch.long), "txt_type_ids": torch.tensor(types, dtype=torch.long),
                 "img_feat": feat, "img_pos_feat": pos, "img_type_ids": img_types}
                for ids, types in build_rows(ex, self.cls, self.sep, self.max_txt_len)]
        return {"rows": rows, "target": (ex.answer_label, ex.rationale_label), "id": ex.annot_id}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        """Rows 8k..8k+3 = Q→A, 8k+4..8k+7 = QA→R of example k; ``targets`` (B, 2) per example."""
        batch = collate_rows([row for item in items for row in item["rows"]])
        batch["targets"] = torch.tensor([item["target"] for item in items], dtype=torch.long).reshape(-1, 2)
        if bool((batch["targets"] < 0).any()):
            batch["unlabeled"] = True  # VCR's test file: predictions only, metrics refuse it
        batch["ids"] = [item["id"] for item in items]
        return batch


class VcrDataModule(VLDataModule):
    """VCR in its public format: ``train_file`` / ``val_file`` / ``test_file`` are the JSON-lines
    files ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (train and val need labels; test lines
    may lack them → targets -1). ``batch_size`` counts examples (each is 8 rows).
    ``image_key``: store key pattern over ``{img_id}``, ``{img_fn}``, ``{img_fn_stem}``, ``{movie}``
    (the demo world stores images under their ``img_id``). ``object_token_offset``: id of the token
    for object 0 (default: the tokenizer's size, 28996 for bert-base-cased, as UNITER; smaller is
    refused at setup, it would overlap real word-pieces — see ``object_token_ids``);
    ``num_object_tokens``: objects with a token of their own (UNITER: 81). ``max_txt_len``: word-
    pieces per row without [CLS]/[SEP]s (UNITER's VCR: 220). Other arguments: see ``VLDataModule``."""

    labels = None

    def __init__(
        self,
        train_file: str,
        val_file: str,
        test_file: Optional[str] = None,
        image_key: str = "{img_id}",
        object_token_offset: Optional[int] = None,
        num_object_tokens: int = 81,
        max_txt_len: int = 220,
        **kwargs,
    ):
        super().__init__(max_txt_len=max_txt_len, **kwargs)
        self.set_image_key(image_key, image_key_pattern)
        if num_object_tokens < 0 or (object_token_offset is not None and object_token_offset < 0):
            raise ValueError(f"need num_object_tokens >= 0 and object_token_offset >= 0 (or None), got "
                             f"{num_object_tokens} and {object_token_offset}")
        self.set_split_files(train_file, val_file, test_file)
        self.object_token_offset = object_token_offset
        self.num_object_tokens = num_object_tokens

    @property
    def object_token_ids(self) -> range:
        """The ids of the object tokens, ``object_token_offset .. + num_object_tokens`` (offset
        default: ``len(tokenizer)``); loads the tokenizer and refuses an offset that overlaps its
        words. The model appends ``extra_word_rows`` (81) rows after its ``vocab_size`` for them, so
        ``object_token_ids.start`` must equal the model's ``vocab_size`` (``VLModule.setup`` checks)."""
        start = object_token_start(self.tokenizer, self.object_token_offset)
        return range(start, start + self.num_object_tokens)

    def setup(self, stage: Optional[str] = None) -> None:
        object_token_start(self.tokenizer, self.object_token_offset)  # a bad offset fails before any file is read
        super().setup(stage)

    def build_dataset(self, split: str, path: str) -> VcrDataset:
        examples = read_vcr(path, self.tokenizer, self.key_pattern, self.object_token_offset, self.num_object_tokens,
                            require_labels=split != "test")
        special = self.special_ids
        return VcrDataset(examples, self.store, special["cls"], special["sep"], self.max_txt_len, source=str(path))
