"""NLVR2: is a statement true of a pair of images? Reads NLVR2's public JSON-lines files.

Each example becomes two rows, UNITER's ``paired`` layout: row 2k = ``[CLS] sentence [SEP]`` +
the left image's regions (image type 1), row 2k+1 = the same text + the right image's regions
(image type 2). Image keys come from the identifier: ``dev-850-0-0`` → ``dev-850-0-img0`` and
``dev-850-0-img1`` (``image_key`` changes the pattern, e.g. ``nlvr2_{stem}-img{side}.npz`` for
stores converted from UNITER's img_db).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

from .base import VLDataModule
from .batching import collate_pixel_rows, collate_rows
from .features import RegionFeatureStore
from .images import ImageSource
from .image_keys import ImageKeyPattern, key_pattern
from .jsonl import read_json_lines
from .tokenization import encode_uniter_batch

LABELS = {"True": 1, "False": 0}
REQUIRED_FIELDS = ("identifier", "sentence", "label")
# image_key fields with sample values: the identifier without its sentence number, 0 left / 1 right
IMAGE_KEY_FIELDS = {"stem": "dev-850-0", "side": 0}
DEFAULT_IMAGE_KEY = "{stem}-img{side}"


@dataclass(frozen=True)
class Nlvr2Record:
    identifier: str
    sentence: str
    label: int
    line: int


@dataclass(frozen=True)
class Nlvr2Example:
    identifier: str
    input_ids: tuple[int, ...]
    images: tuple[str, str]
    label: int


def image_key_pattern(image_key: str | ImageKeyPattern = DEFAULT_IMAGE_KEY) -> ImageKeyPattern:
    """NLVR2's ``image_key`` checked: fields ``{stem}`` and ``{side}``."""
    return key_pattern(image_key, IMAGE_KEY_FIELDS, "NLVR2 image_key")


def image_keys(identifier: str, image_key: str | ImageKeyPattern = DEFAULT_IMAGE_KEY) -> tuple[str, str]:
    """Store keys of the left and right image: the identifier without its sentence number."""
    pattern = image_key_pattern(image_key)
    stem = identifier.rsplit("-", 1)[0]
    return pattern.format(stem=stem, side=0), pattern.format(stem=stem, side=1)


def read_nlvr2_records(path: str | Path) -> list[Nlvr2Record]:
    """Parse a JSON-lines file; a malformed line is an error naming file, line and expectation."""
    records = []
    seen: dict[str, int] = {}
    for lineno, where, rec in read_json_lines(path, "NLVR2", ", ".join(REQUIRED_FIELDS)):
        ident = rec.get("identifier")
        label_of = f" (identifier {ident!r})" if isinstance(ident, str) else ""
        for field in REQUIRED_FIELDS:
            if not isinstance(rec.get(field), str):
                got = "missing" if field not in rec else f"{type(rec[field]).__name__} {rec[field]!r}"
                raise ValueError(f"{where}{label_of}: field {field!r} is {got}; expected a string "
                                 "(identifier, sentence, and label \"True\" or \"False\")")
        if rec["label"] not in LABELS:
            raise ValueError(f"{where}{label_of}: label {rec['label']!r}, expected \"True\" or \"False\"")
        parts = ident.split("-")
        if len(parts) < 4 or not all(parts[1:]):
            raise ValueError(f"{where}: identifier {ident!r} is not split-set-pair-sentence "
                             "(e.g. 'dev-850-0-0')")
        if ident in seen:
            raise ValueError(f"{where}: identifier {ident!r} already used on line {seen[ident]}")
        seen[ident] = lineno
        records.append(Nlvr2Record(ident, rec["sentence"], LABELS[rec["label"]], lineno))
    if not records:
        raise ValueError(f"{path} holds no NLVR2 examples; expected JSON lines with "
                         f"{', '.join(REQUIRED_FIELDS)}")
    return records


def read_nlvr2(path: str | Path, tokenizer, max_txt_len: int,
               image_key: str | ImageKeyPattern = DEFAULT_IMAGE_KEY) -> list[Nlvr2Example]:
    """Records of ``path`` tokenised the UNITER way, with their image keys."""
    image_key = image_key_pattern(image_key)
    records = read_nlvr2_records(path)
    input_ids = encode_uniter_batch(tokenizer, [r.sentence for r in records], max_txt_len)
    return [Nlvr2Example(r.identifier, tuple(ids), image_keys(r.identifier, image_key), r.label)
            for r, ids in zip(records, input_ids)]


class Nlvr2Dataset(Dataset):
    """Examples whose images are all in ``store`` (checked here, for every example at once).

    ``store``: a region-feature store (rows carry regions) or an image source
    (``data_modules.images``: rows carry the resized image as uint8 ``pixels``)."""

    def __init__(self, examples: list[Nlvr2Example], store: RegionFeatureStore | ImageSource, source: str = ""):
        store.require(((img, f"example {ex.identifier}") for ex in examples for img in ex.images),
                      source or "the NLVR2 examples")
        self.examples = examples
        self.store = store
        self.source = source

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        ids = torch.tensor(ex.input_ids, dtype=torch.long)
        rows = []
        if isinstance(self.store, ImageSource):
            rows = [{"input_ids": ids, "pixels": self.store.get(img, example=f"example {ex.identifier}"),
                     "img_type_ids": torch.tensor(side + 1, dtype=torch.long)} for side, img in enumerate(ex.images)]
            return {"rows": rows, "target": ex.label, "id": ex.identifier}
        for side, img in enumerate(ex.images):
            feat, pos = self.store.get(img, example=f"example {ex.identifier}")
            rows.append({"input_ids": ids, "img_feat": feat, "img_pos_feat": pos,
                         "img_type_ids": torch.full((len(feat),), side + 1, dtype=torch.long)})
        return {"rows": rows, "target": ex.label, "id": ex.identifier}

    def collate(self, items: list[dict]) -> dict:
        """Rows 2k / 2k+1 = example k with its left / right image; ``targets`` one per example.
        With an image source the rows are pixel rows (``collate_pixel_rows``), ``img_type_ids`` (R,)
        1 for a left image, 2 for a right one (ViLT's NLVR2 recipe: the right image's own modality type)."""
        rows = [row for item in items for row in item["rows"]]
        if isinstance(self.store, ImageSource):
            batch = collate_pixel_rows(rows, self.store.transform.size_divisor)
        else:
            batch = collate_rows(rows)
        batch["targets"] = torch.tensor([item["target"] for item in items], dtype=torch.long)
        batch["ids"] = [item["id"] for item in items]
        return batch


class Nlvr2DataModule(VLDataModule):
    """NLVR2 in its public format: ``train_file`` / ``val_file`` / ``test_file`` are JSON-lines
    files (``train.json``, ``dev.json``, ``test1.json``). ``batch_size`` counts examples (each is
    two rows). ``image_key`` maps ``{stem}`` (identifier without sentence number) and ``{side}``
    (0 left, 1 right) to the store key. Other arguments: see ``VLDataModule``."""

    labels = ["False", "True"]
    supports_images = True

    def __init__(
        self,
        train_file: str,
        val_file: str,
        test_file: Optional[str] = None,
        image_key: str = DEFAULT_IMAGE_KEY,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.set_image_key(image_key, image_key_pattern)
        self.set_split_files(train_file, val_file, test_file)

    def build_dataset(self, split: str, path: str) -> Nlvr2Dataset:
        examples = read_nlvr2(path, self.tokenizer, self.max_txt_len, self.key_pattern)
        return Nlvr2Dataset(examples, self.store, source=str(path))
