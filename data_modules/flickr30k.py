"""Flickr30k image-text retrieval (UNITER's ITM fine-tuning) from Karpathy's ``dataset_flickr30k.json``.

Training follows UNITER's ``train_itm.py`` without hard negatives: every caption is one example
of three rows, ``[caption + its image, caption + a random other image, a random caption of
another image + the image]``; the model's rank scores of a group are compared with a hinge loss,
the positive first (``targets`` are all 0, ``group_size`` = 3).

Evaluation is UNITER's full ``itm_eval``: every caption of the split is scored against every
image of the split. Rows run image-major (row ``r`` = image ``r // T``, caption ``r % T``), so
consecutive rows share an image and its features are read once. Each batch carries
``txt_index`` / ``img_index`` (positions in the split's caption / image lists), ``targets``
(1 where the caption describes the image), and the split sizes ``num_texts`` / ``num_images``,
from which the model assembles the (T, I) score matrix (rows repeated by a distributed sampler's
padding are harmless: the metric keeps one score per (txt_index, img_index)).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import VLDataModule
from .batching import collate_rows
from .features import RegionFeatureStore
from .image_keys import ImageKeyPattern, key_pattern
from .jsonl import read_json
from .tokenization import encode_uniter_batch

GROUP_SIZE = 3  # positive, negative image, negative caption (UNITER's negative_size 1)
# image_key fields with sample values
IMAGE_KEY_FIELDS = {"stem": "1000092795", "filename": "1000092795.jpg", "imgid": 0}


@dataclass(frozen=True)
class KarpathyImage:
    filename: str
    imgid: int
    split: str
    sentids: tuple[int, ...]
    captions: tuple[str, ...]  # the ``raw`` sentences, in the file's order
    position: int  # index in the file's ``images`` list (for error messages)


def image_key_pattern(image_key: str | ImageKeyPattern = "{stem}") -> ImageKeyPattern:
    """Flickr30k's ``image_key`` checked: fields ``{stem}``, ``{filename}``, ``{imgid}``."""
    return key_pattern(image_key, IMAGE_KEY_FIELDS, "Flickr30k image_key")


def store_key(image: KarpathyImage, pattern: str | ImageKeyPattern = "{stem}") -> str:
    """The store key of an image: ``pattern`` with ``{stem}`` (file name without extension),
    ``{filename}`` and ``{imgid}``."""
    return image_key_pattern(pattern).format(stem=os.path.splitext(image.filename)[0], filename=image.filename,
                                             imgid=image.imgid)


def _check_type(value, kind, where: str, what: str):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = "missing" if value is None else f"{type(value).__name__} {value!r}"
        raise ValueError(f"{where}: {what} is {got}; expected {kind.__name__ if isinstance(kind, type) else kind}")
    return value


def read_karpathy(path: str | Path) -> list[KarpathyImage]:
    """Every image of a Karpathy split file, checked: an image without sentences, a duplicate
    ``imgid`` or ``sentid``, or ``sentids`` disagreeing with the sentences is an error that names
    the file, the image (position, filename) and what was expected."""
    path = Path(path)
    data = read_json(path, "a Karpathy split file (dataset_flickr30k.json: {\"dataset\": ..., \"images\": [...]})")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a JSON object with an \"images\" list (Karpathy's dataset_flickr30k.json)")
    images: list[KarpathyImage] = []
    seen_img: dict[int, int] = {}
    seen_sent: dict[int, int] = {}
    for pos, rec in enumerate(data["images"]):
        where = f"{path}, images[{pos}]"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: a JSON {type(rec).__name__}, expected an object with filename, imgid, "
                             "split, sentids, sentences")
        filename = _check_type(rec.get("filename"), str, where, "field 'filename'")
        where = f"{where} (filename {filename!r})"
        imgid = _check_type(rec.get("imgid"), int, where, "field 'imgid'")
        split = _check_type(rec.get("split"), str, where, "field 'split'")
        sentences = _check_type(rec.get("sentences"), list, where, "field 'sentences'")
        if not sentences:
            raise ValueError(f"{where}: the image has no sentences; expected its captions (5 in Flickr30k)")
        if imgid in seen_img:
            raise ValueError(f"{where}: imgid {imgid} already used by images[{seen_img[imgid]}]; expected unique imgids")
        seen_img[imgid] = pos
        sentids, captions = [], []
        for k, sent in enumerate(sentences):
            swhere = f"{where}, sentences[{k}]"
            if not isinstance(sent, dict):
                raise ValueError(f"{swhere}: a JSON {type(sent).__name__}, expected an object with raw, tokens, imgid, sentid")
            sentid = _check_type(sent.get("sentid"), int, swhere, "field 'sentid'")
            raw = _check_type(sent.get("raw"), str, swhere, "field 'raw'")
            if "imgid" in sent and sent["imgid"] != imgid:
                raise ValueError(f"{swhere}: imgid {sent['imgid']!r}, expected the image's imgid {imgid}")
            if sentid in seen_sent:
                raise ValueError(f"{swhere}: sentid {sentid} already used by images[{seen_sent[sentid]}]; "
                                 "expected unique sentids")
            seen_sent[sentid] = pos
            sentids.append(sentid)
            captions.append(raw)
        if "sentids" in rec and rec["sentids"] != sentids:
            raise ValueError(f"{where}: sentids {rec['sentids']!r} disagree with the sentences' sentids {sentids}")
        images.append(KarpathyImage(filename, imgid, split, tuple(sentids), tuple(captions), pos))
    if not images:
        raise ValueError(f"{path}: the \"images\" list is empty")
    return images


def select_split(images: list[KarpathyImage], split: str, source: str = "", max_images: Optional[int] = None) -> list[KarpathyImage]:
    """The images of ``split`` in file order (the first ``max_images`` of them if given)."""
    chosen = [im for im in images if im.split == split]
    if not chosen:
        known = sorted({im.split for im in images})
        raise ValueError(f"{source or 'Karpathy file'}: no image has split {split!r}; the file's splits are {known}")
    return chosen if max_images is None else chosen[:max_images]


def _check_in_store(keys: list[str], images: list[KarpathyImage], store: RegionFeatureStore, source: str) -> None:
    """All images of a split must be in the store: one error lists the missing ones."""
    seen: dict[str, KarpathyImage] = {}
    for key, im in zip(keys, images):
        if key in seen:
            raise ValueError(f"{source}: images[{seen[key].position}] ({seen[key].filename!r}) and images[{im.position}] "
                             f"({im.filename!r}) both map to the store key {key!r}; check the image_key pattern")
        seen[key] = im
    store.require(((k, f"images[{im.position}], {im.filename!r}") for k, im in zip(keys, images)), source)


class _SplitData:
    """A split's captions (image-major) and images, tokenised and mapped to store keys."""

    def __init__(self, images: list[KarpathyImage], tokenizer, max_txt_len: int, pattern: str | ImageKeyPattern,
                 store: RegionFeatureStore, source: str):
        pattern = image_key_pattern(pattern)
        self.image_keys = [store_key(im, pattern) for im in images]
        _check_in_store(self.image_keys, images, store, source)
        self.filenames = [im.filename for im in images]
        self.sentids = [s for im in images for s in im.sentids]
        self.txt2img = np.asarray([i for i, im in enumerate(images) for _ in im.captions], dtype=np.int64)
        counts = np.asarray([len(im.captions) for im in images], dtype=np.int64)
        self.img_txt_start = np.cumsum(counts) - counts  # captions of image i: [start, start + count)
        self.img_txt_count = counts
        texts = [c for im in images for c in im.captions]
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in encode_uniter_batch(tokenizer, texts, max_txt_len)]
        self.store = store
        self.source = source

    def row(self, txt: int, feats: tuple[torch.Tensor, torch.Tensor]) -> dict:
        return {"input_ids": self.input_ids[txt], "img_feat": feats[0], "img_pos_feat": feats[1]}


class EpochIndexSampler(Sampler):
    """Yields ``(index, epoch)``: a fresh permutation per pass (drawn from torch's global generator,
    which ``seed_everything`` seeds, as ``RandomSampler``), with the pass number, so each example
    can seed its negatives from (seed, epoch, index) — reproducible, different every epoch, and
    independent of which DataLoader worker reads it. Lightning calls ``set_epoch`` with the fit
    loop's epoch before each epoch (so a resumed run continues the sequence); otherwise each pass
    counts one up. Under DDP, Lightning's DistributedSamplerWrapper splits these pairs across
    ranks (every rank draws the same permutation from its identically seeded generator)."""

    def __init__(self, num_items: int, shuffle: bool = True):
        self.num_items, self.shuffle, self.epoch = num_items, shuffle, 0

    def __len__(self) -> int:
        return self.num_items

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            order = range(self.num_items)
        return iter([(i, epoch) for i in order])


class Flickr30kTrainDataset(Dataset):
    """One example per caption: the positive and two random negatives. Index with ``(i, epoch)``
    (from ``EpochIndexSampler``) or a plain ``i`` (epoch 0); negatives come from
    ``numpy.random.default_rng([neg_seed, epoch, i])``."""

    def __init__(self, data: _SplitData, neg_seed: int = 0):
        if len(data.image_keys) < 2:
            raise ValueError(f"{data.source}: training needs at least 2 images to draw negatives, got {len(data.image_keys)}")
        self.data, self.neg_seed = data, int(neg_seed)

    def __len__(self) -> int:
        return len(self.data.input_ids)

    def negatives(self, i: int, epoch: int = 0) -> tuple[int, int]:
        """``(negative image, negative caption)`` of caption ``i``: uniform over the other images,
        and over the captions of the other images."""
        d = self.data
        img = int(d.txt2img[i])
        rng = np.random.default_rng([self.neg_seed, epoch, i])
        neg_img = int(rng.integers(len(d.image_keys) - 1))
        neg_img += neg_img >= img
        start, count = int(d.img_txt_start[img]), int(d.img_txt_count[img])
        neg_txt = int(rng.integers(len(d.input_ids) - count))
        neg_txt += count if neg_txt >= start else 0
        return neg_img, neg_txt

    def __getitem__(self, index) -> dict:
        i, epoch = index if isinstance(index, tuple) else (index, 0)
        d = self.data
        img = int(d.txt2img[i])
        neg_img, neg_txt = self.negatives(i, epoch)
        pos_feats = d.store.get(d.image_keys[img], example=f"caption sentid {d.sentids[i]}")
        neg_feats = d.store.get(d.image_keys[neg_img], example=f"the negative image of caption sentid {d.sentids[i]}")
        rows = [d.row(i, pos_feats), d.row(i, neg_feats), d.row(neg_txt, pos_feats)]
        return {"rows": rows, "id": str(d.sentids[i])}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        """Rows 3k..3k+2 = example k's [positive, negative image, negative caption]."""
        batch = collate_rows([row for item in items for row in item["rows"]])
        batch["targets"] = torch.zeros(len(items), dtype=torch.long)
        batch["group_size"] = GROUP_SIZE
        batch["ids"] = [item["id"] for item in items]
        return batch


class Flickr30kEvalDataset(Dataset):
    """Every (caption, image) pair of a split, image-major; the current image's features are
    cached (per worker), so a batch of rows sharing an image reads the store once."""

    def __init__(self, data: _SplitData):
        self.data = data
        self.num_texts, self.num_images = len(data.input_ids), len(data.image_keys)
        self._cached: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return self.num_texts * self.num_images

    def features(self, img: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached is None or self._cached[0] != img:
            self._cached = (img, self.data.store.get(self.data.image_keys[img], example=f"evaluation image {img}"))
        return self._cached[1]

    def __getitem__(self, r: int) -> dict:
        img, txt = divmod(int(r), self.num_texts)
        return {"row": self.data.row(txt, self.features(img)), "txt": txt, "img": img,
                "target": int(self.data.txt2img[txt] == img), "num_texts": self.num_texts,
                "num_images": self.num_images}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        batch = collate_rows([item["row"] for item in items])
        batch["txt_index"] = torch.tensor([item["txt"] for item in items], dtype=torch.long)
        batch["img_index"] = torch.tensor([item["img"] for item in items], dtype=torch.long)
        batch["targets"] = torch.tensor([item["target"] for item in items], dtype=torch.long)
        batch["num_texts"] = items[0]["num_texts"]
        batch["num_images"] = items[0]["num_images"]
        batch["ids"] = [f"txt{item['txt']}-img{item['img']}" for item in items]
        return batch


class Flickr30kDataModule(VLDataModule):
    """Flickr30k retrieval from Karpathy's ``dataset_flickr30k.json`` (one file, all splits).

    ``train_split`` / ``val_split`` / ``test_split`` name the file's ``split`` values
    (``test_split=None``: no test). ``image_key`` maps an image to its store key with
    ``{stem}`` (file name without extension, the default), ``{filename}`` or ``{imgid}``.
    ``max_eval_images``: validate on the first N images of the val split and their captions
    (a quick check during training; test always uses the whole split). ``neg_seed`` seeds the
    training negatives, drawn per caption from (neg_seed, epoch, index); None = the run's
    ``seed_everything`` seed (``PL_GLOBAL_SEED``, else 0). ``batch_size`` counts captions (3
    rows each); ``eval_batch_size`` counts (caption, image) rows. Other arguments: see
    ``VLDataModule``."""

    def __init__(
        self,
        karpathy_file: str,
        train_split: str = "train",
        val_split: str = "val",
        test_split: Optional[str] = "test",
        image_key: str = "{stem}",
        max_eval_images: Optional[int] = None,
        neg_seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.set_image_key(image_key, image_key_pattern)
        if max_eval_images is not None and max_eval_images <= 0:
            raise ValueError(f"max_eval_images must be positive or None, got {max_eval_images}")
        self.karpathy_file = karpathy_file
        self.splits = {"train": train_split, "val": val_split, "test": test_split}  # split names in the file
        self.set_split_files(*(karpathy_file if name else None for name in self.splits.values()))
        self.max_eval_images = max_eval_images
        self.neg_seed = neg_seed
        self._images: list[KarpathyImage] | None = None

    def karpathy_images(self) -> list[KarpathyImage]:
        """The file's images, read (and checked) once for all splits."""
        if self._images is None:
            self._images = read_karpathy(self.karpathy_file)
        return self._images

    def build_dataset(self, split: str, path: str) -> Dataset:
        name = self.splits[split]
        source = f"{path} (split {name!r})"
        limit = self.max_eval_images if split == "val" else None
        images = select_split(self.karpathy_images(), name, str(path), limit)
        data = _SplitData(images, self.tokenizer, self.max_txt_len, self.key_pattern, self.store, source)
        if split == "train":
            seed = self.neg_seed if self.neg_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
            return Flickr30kTrainDataset(data, seed)
        return Flickr30kEvalDataset(data)

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.datasets:
            return self._loader("train", True)  # raises the base class's error
        dataset = self.datasets["train"]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochIndexSampler(len(dataset)),
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=dataset.collate,
        )
