"""SNLI-VE (visual entailment): does the image entail, contradict, or leave open a hypothesis?

Reads the public ``snli_ve_{train,dev,test}.jsonl``. As in UNITER, the text is the hypothesis
(``sentence2``) alone; the premise caption ``sentence1`` is not used, the image takes its place.
One row per hypothesis: ``[CLS] sentence2 [SEP]`` + the regions of the Flickr30k image.
``targets`` use UNITER's class order (``utils/misc.py``): contradiction 0, entailment 1, neutral 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

from .base import VLDataModule
from .batching import collate_rows
from .features import RegionFeatureStore
from .image_keys import ImageKeyPattern, key_pattern
from .jsonl import read_json_lines
from .tokenization import encode_uniter_batch

LABELS = ("contradiction", "entailment", "neutral")
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
# The public files say Flickr30K_ID; the SNLI-VE repository's own sample reader says Flikr30kID.
IMAGE_ID_FIELDS = ("Flickr30K_ID", "Flikr30kID")
IMAGE_KEY_FIELDS = {"flickr_id": "3416050480"}  # image_key fields with sample values


@dataclass(frozen=True)
class SnliVeExample:
    pair_id: str
    flickr_id: str
    hypothesis: str
    label: int
    line: int


def read_snli_ve(path: str | Path) -> list[SnliVeExample]:
    """Parse a JSON-lines file; a malformed line is an error naming file, line, pairID and expectation."""
    examples: list[SnliVeExample] = []
    seen: dict[str, int] = {}
    for lineno, where, rec in read_json_lines(path, "SNLI-VE", "pairID, Flickr30K_ID, sentence2, gold_label",
                                              missing_hint=" (expected snli_ve_<split>.jsonl)"):
        pair_id = rec.get("pairID")
        if not isinstance(pair_id, str) or not pair_id:
            got = "missing" if pair_id is None else repr(pair_id)
            raise ValueError(f"{where}: pairID is {got}; expected a non-empty string (e.g. '3416050480.jpg#4r1n')")
        where = f"{where} (pairID {pair_id!r})"
        image_field = next((k for k in IMAGE_ID_FIELDS if k in rec), None)
        flickr_id = rec.get(image_field) if image_field else None
        if isinstance(flickr_id, int) and not isinstance(flickr_id, bool):
            flickr_id = str(flickr_id)
        if not isinstance(flickr_id, str) or not flickr_id:
            got = "missing" if image_field is None else f"{image_field}={flickr_id!r}"
            raise ValueError(f"{where}: image id is {got}; expected a Flickr30k id string in Flickr30K_ID "
                             "(or Flikr30kID), e.g. '3416050480'")
        hypothesis = rec.get("sentence2")
        if not isinstance(hypothesis, str):
            got = "missing" if hypothesis is None else f"{type(hypothesis).__name__} {hypothesis!r}"
            raise ValueError(f"{where}: sentence2 (the hypothesis) is {got}; expected a string")
        label = rec.get("gold_label")
        if label not in LABEL_INDEX:
            raise ValueError(f"{where}: gold_label {label!r}, expected one of {list(LABELS)} "
                             "(SNLI's '-' pairs are not part of SNLI-VE)")
        if pair_id in seen:
            raise ValueError(f"{where}: pairID already used on line {seen[pair_id]}")
        seen[pair_id] = lineno
        examples.append(SnliVeExample(pair_id, flickr_id, hypothesis, LABEL_INDEX[label], lineno))
    if not examples:
        raise ValueError(f"{path} holds no SNLI-VE pairs; expected JSON lines with pairID, Flickr30K_ID, "
                         "sentence2, gold_label")
    return examples


def image_key_pattern(image_key: str | ImageKeyPattern = "{flickr_id}") -> ImageKeyPattern:
    """SNLI-VE's ``image_key`` checked: field ``{flickr_id}``."""
    return key_pattern(image_key, IMAGE_KEY_FIELDS, "SNLI-VE image_key")


def store_key(flickr_id: str, pattern: str | ImageKeyPattern = "{flickr_id}") -> str:
    """The store key of a Flickr30k id under ``pattern`` (``{flickr_id}``)."""
    return image_key_pattern(pattern).format(flickr_id=flickr_id)


class SnliVeDataset(Dataset):
    """Hypotheses whose images are all in ``store`` (checked here, for every pair at once)."""

    def __init__(self, examples: list[SnliVeExample], input_ids: list[list[int]], store: RegionFeatureStore,
                 pattern: str | ImageKeyPattern = "{flickr_id}", source: str = ""):
        pattern = image_key_pattern(pattern)
        keys = [store_key(ex.flickr_id, pattern) for ex in examples]
        store.require(((key, f"line {ex.line}, pairID {ex.pair_id}") for key, ex in zip(keys, examples)),
                      source or "the SNLI-VE pairs")
        self.examples, self.keys, self.store, self.source = examples, keys, store, source
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in input_ids]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        feat, pos = self.store.get(self.keys[i], example=f"line {ex.line}, pairID {ex.pair_id}")
        return {"row": {"input_ids": self.input_ids[i], "img_feat": feat, "img_pos_feat": pos},
                "target": ex.label, "id": ex.pair_id}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        batch = collate_rows([item["row"] for item in items])
        batch["targets"] = torch.tensor([item["target"] for item in items], dtype=torch.long)
        batch["ids"] = [item["id"] for item in items]
        return batch


class SnliVeDataModule(VLDataModule):
    """SNLI-VE in its public format: ``train_file`` / ``val_file`` / ``test_file`` are
    ``snli_ve_{train,dev,test}.jsonl``. ``image_key`` maps ``{flickr_id}`` (Flickr30K_ID) to the
    store key (default: the id itself, e.g. ``3416050480``). Other arguments: see ``VLDataModule``."""

    labels = list(LABELS)

    def __init__(
        self,
        train_file: str,
        val_file: str,
        test_file: Optional[str] = None,
        image_key: str = "{flickr_id}",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.set_image_key(image_key, image_key_pattern)
        self.set_split_files(train_file, val_file, test_file)

    def build_dataset(self, split: str, path: str) -> SnliVeDataset:
        examples = read_snli_ve(path)
        input_ids = encode_uniter_batch(self.tokenizer, [ex.hypothesis for ex in examples], self.max_txt_len)
        return SnliVeDataset(examples, input_ids, self.store, self.key_pattern, source=str(path))
