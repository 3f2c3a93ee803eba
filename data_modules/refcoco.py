"""RefCOCO+ (and RefCOCO / RefCOCOg): which region does a referring expression mean?

Reads the refer toolkit's files: ``refs(unc).p`` (a Python-2 pickle of a list of ref dicts; a
``.json`` file holding the same list is accepted too) and the COCO-style ``instances.json``.
Every sentence of every ref of the chosen split is one example and one row: ``[CLS] sent [SEP]``
plus all regions the store holds for the ref's image (up to ``max_boxes``). Example ids are
``f"{ref_id}-{sent_id}"`` (unique even where a file reuses sentence ids across refs).

The target is the region with the highest IoU with the referred annotation's box, so the same
code serves ground-truth-box stores (one region per COCO annotation: the target is that
annotation's own region, IoU 1) and detected-box stores (the best-matching detection).

Splits are matched **exactly**. The toolkit's ``REFER.getRefIds(split="testA")`` tests
``split in ref["split"]`` (a substring test), so a ref tagged e.g. ``"testAB"`` would count for
both testA and testB there; no released file has such tags, and here such a ref belongs only to
the split named ``"testAB"``.

IoU here (``data_modules.boxes.box_iou``, which the accuracy metric in ``lightning_vl.tasks.metrics``
shares) is the continuous one: boxes are real-valued x1, y1, x2, y2, area = (x2 - x1) * (y2 - y1).
UNITER's evaluation uses the inclusive-pixel convention (+1 on widths and heights) and a strict
``> 0.5``; the study's metric is IoU >= 0.5 with continuous boxes, as MAttNet and the usual
statement of the task. The two differ only for tiny boxes or exact ties.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import Dataset

from .base import VLDataModule
from .batching import collate_rows
from .boxes import box_iou
from .features import RegionFeatureStore
from .image_keys import ImageKeyPattern, key_pattern
from .jsonl import read_json
from .tokenization import encode_uniter_batch

REF_FIELDS = {"ref_id": int, "ann_id": int, "image_id": int, "split": str, "sentences": list}
SENT_FIELDS = {"sent_id": int, "sent": str}
IOU_THRESHOLD = 0.5
IMAGE_KEY_FIELDS = {"image_id": 1}  # image_key fields with sample values (COCO's int image_id)


def image_key_pattern(image_key: str | ImageKeyPattern = "{image_id}") -> ImageKeyPattern:
    """RefCOCO's ``image_key`` checked: field ``{image_id}`` (an int)."""
    return key_pattern(image_key, IMAGE_KEY_FIELDS, "RefCOCO image_key")


def xywh_to_xyxy(bbox) -> list[float]:
    """COCO's ``[x, y, w, h]`` as ``[x1, y1, x2, y2]``."""
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Reads plain containers only: any class or function reference is refused, so a crafted
    file cannot run code. The refs pickle holds dicts, lists, strings and numbers, which need no
    globals in any protocol."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refuses to load {module}.{name}: a refs file holds only dicts, lists, strings and numbers")


def _decode_py2(value: Any) -> Any:
    """Python-2 ``str`` objects arrive as bytes (``encoding="bytes"``); they were UTF-8 (or
    Latin-1) text. Decode them everywhere, dict keys included."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    if isinstance(value, dict):
        return {_decode_py2(k): _decode_py2(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decode_py2(v) for v in value]
    return value


def load_refs_file(path: str | Path) -> list:
    """The raw list of refs from ``refs(*).p`` (restricted unpickling) or a ``.json`` copy."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        refs = read_json(path, "a refs file (a JSON list of ref objects, as in the refer toolkit's refs(unc).p)")
    else:
        if not path.is_file():
            raise FileNotFoundError(f"refs file {path} does not exist (expected the refer toolkit's refs(unc).p "
                                    "or a .json list of the same refs)")
        raw = path.read_bytes()
        try:
            refs = _decode_py2(_NoGlobalsUnpickler(io.BytesIO(raw), encoding="bytes").load())
        except Exception as err:  # any unpickling failure: corrupt, truncated, or a refused global
            raise ValueError(f"{path}: cannot read as a refs pickle ({type(err).__name__}: {err}); expected a "
                             "pickle of a list of ref dicts (the refer toolkit's refs(unc).p) or a .json file") from None
    if not isinstance(refs, list):
        raise ValueError(f"{path}: holds a {type(refs).__name__}, expected a list of ref dicts")
    return refs


@dataclass(frozen=True)
class RefSentence:
    ref_id: int
    sent_id: int
    ann_id: int
    image_id: int
    split: str
    sent: str

    @property
    def id(self) -> str:
        return f"{self.ref_id}-{self.sent_id}"


def _type_ok(value: Any, kind: type) -> bool:
    if kind is int:  # bool is an int subclass, and no ref field is a bool
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def read_refs(path: str | Path) -> list[RefSentence]:
    """One ``RefSentence`` per sentence of every ref, validated; errors name file, ref and field."""
    path = Path(path)
    refs = load_refs_file(path)
    out: list[RefSentence] = []
    seen: dict[int, int] = {}
    for i, ref in enumerate(refs):
        where = f"{path}: ref #{i}"
        if not isinstance(ref, dict):
            raise ValueError(f"{where} is a {type(ref).__name__}, expected a dict with {', '.join(REF_FIELDS)}")
        if _type_ok(ref.get("ref_id"), int):
            where += f" (ref_id {ref['ref_id']})"
        for name, kind in REF_FIELDS.items():
            if not _type_ok(ref.get(name), kind):
                got = "missing" if name not in ref else f"{type(ref[name]).__name__} {ref[name]!r}"
                raise ValueError(f"{where}: field {name!r} is {got}; expected {kind.__name__}")
        if ref["ref_id"] in seen:
            raise ValueError(f"{where}: ref_id {ref['ref_id']} already used by ref #{seen[ref['ref_id']]}")
        seen[ref["ref_id"]] = i
        if not ref["sentences"]:
            raise ValueError(f"{where}: no sentences; expected at least one referring expression per ref")
        for j, sent in enumerate(ref["sentences"]):
            for name, kind in SENT_FIELDS.items():
                if not isinstance(sent, dict) or not _type_ok(sent.get(name), kind):
                    got = (type(sent).__name__ if not isinstance(sent, dict) else
                           "missing" if name not in sent else f"{type(sent[name]).__name__} {sent[name]!r}")
                    raise ValueError(f"{where}, sentence #{j}: field {name!r} is {got}; expected {kind.__name__} "
                                     "(sentences are {sent_id: int, sent: str, ...})")
            if not sent["sent"].strip():
                raise ValueError(f"{where}, sentence #{j} (sent_id {sent['sent_id']}): empty expression")
            out.append(RefSentence(ref["ref_id"], sent["sent_id"], ref["ann_id"], ref["image_id"],
                                   ref["split"], sent["sent"]))
    if not out:
        raise ValueError(f"{path} holds no refs; expected a list of ref dicts with sentences")
    return out


@dataclass(frozen=True)
class CocoIndex:
    """What RefCOCO needs from ``instances.json``: annotation boxes and image sizes."""

    path: str
    ann_box: dict[int, tuple[int, list[float]]]  # ann id -> (image id, [x1, y1, x2, y2])
    image_wh: dict[int, tuple[int, int]]  # image id -> (width, height)


def read_instances(path: str | Path) -> CocoIndex:
    """Annotation boxes (xywh → x1y1x2y2) and image sizes, validated."""
    path = Path(path)
    data = read_json(path, "a COCO instances file {images, annotations, categories} (the refer toolkit's instances.json)")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected a COCO instances object with lists 'images' and 'annotations'")
    image_wh: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(data["images"]):
        ok = isinstance(img, dict) and all(_type_ok(img.get(k), int) for k in ("id", "width", "height"))
        if not ok or img["width"] <= 0 or img["height"] <= 0:
            raise ValueError(f"{path}: images[{i}] = {str(img)[:200]}; expected id, width > 0 and height > 0 as integers")
        image_wh[img["id"]] = (img["width"], img["height"])
    ann_box: dict[int, tuple[int, list[float]]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _type_ok(ann.get("id"), int) or not _type_ok(ann.get("image_id"), int):
            raise ValueError(f"{path}: annotations[{i}] = {str(ann)[:200]}; expected integer id and image_id")
        bbox = ann.get("bbox")
        good = (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in bbox))
        if not good or bbox[2] <= 0 or bbox[3] <= 0:
            raise ValueError(f"{path}: annotation {ann['id']} (annotations[{i}]): bbox {bbox!r}; expected "
                             "[x, y, w, h] in pixels with w > 0 and h > 0")
        ann_box[ann["id"]] = (ann["image_id"], xywh_to_xyxy(bbox))
    return CocoIndex(str(path), ann_box, image_wh)


@dataclass(frozen=True)
class RefExample:
    id: str
    input_ids: tuple[int, ...]
    image: str
    gt_box: tuple[float, float, float, float]
    target: int
    max_iou: float


class RefcocoDataset(Dataset):
    """Examples of one split whose images are all in ``store`` with the sizes COCO gives."""

    def __init__(self, sentences: list[RefSentence], coco: CocoIndex, store: RegionFeatureStore, tokenizer,
                 max_txt_len: int, image_key: str | ImageKeyPattern = "{image_id}", source: str = ""):
        self.store, self.source = store, source
        image_key = image_key_pattern(image_key)
        gt_boxes, keys = [], []
        for s in sentences:
            if s.ann_id not in coco.ann_box:
                raise ValueError(f"{source}: ref {s.ref_id} refers to ann_id {s.ann_id}, which {coco.path} does "
                                 "not contain; expected the instances.json shipped with the refs file")
            ann_image, box = coco.ann_box[s.ann_id]
            if ann_image != s.image_id:
                raise ValueError(f"{source}: ref {s.ref_id} gives image_id {s.image_id} but its annotation "
                                 f"{s.ann_id} belongs to image {ann_image} in {coco.path}")
            if s.image_id not in coco.image_wh:
                raise ValueError(f"{source}: ref {s.ref_id}: image {s.image_id} is not among the images of {coco.path}")
            gt_boxes.append(box)
            keys.append(image_key.format(image_id=s.image_id))
        store.require(((key, f"ref {s.ref_id}, image_id {s.image_id}") for s, key in zip(sentences, keys)),
                      source or "the refs")
        checked: set[str] = set()
        for s, key in zip(sentences, keys):
            if key in checked:
                continue
            checked.add(key)
            if store.image_size(key) != coco.image_wh[s.image_id]:
                w, h = store.image_size(key)
                cw, ch = coco.image_wh[s.image_id]
                raise ValueError(f"image {s.image_id}: {store.path} stores it as {w} x {h} pixels (key {key!r}) but "
                                 f"{coco.path} says {cw} x {ch}; region boxes would not map to COCO's pixels "
                                 "(store extracted from other images?)")
        regions = store.pixel_boxes(checked)
        input_ids = encode_uniter_batch(tokenizer, [s.sent for s in sentences], max_txt_len)
        self.examples = []
        for s, key, box, ids in zip(sentences, keys, gt_boxes, input_ids):
            iou = box_iou(regions[key], torch.tensor(box, dtype=torch.float64))
            target = int(torch.argmax(iou))
            self.examples.append(RefExample(s.id, tuple(ids), key, tuple(box), target, float(iou[target])))

    @property
    def poor_matches(self) -> int:
        """Examples whose best region has IoU < 0.5 with the referred box (unreachable targets)."""
        return sum(ex.max_iou < IOU_THRESHOLD for ex in self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        feat, pos = self.store.get(ex.image, example=f"sentence {ex.id}")
        w, h = self.store.image_size(ex.image)
        row = {"input_ids": torch.tensor(ex.input_ids, dtype=torch.long), "img_feat": feat, "img_pos_feat": pos}
        # The inverse of the writer's normalisation (x / W, y / H): the regions' pixel boxes.
        boxes = pos[:, :4] * torch.tensor([w, h, w, h], dtype=pos.dtype)
        return {"row": row, "region_boxes": boxes, "gt_box": ex.gt_box, "target": ex.target, "id": ex.id}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        """One row per expression; ``targets`` index the row's regions; ``region_boxes`` (B, max_nb, 4)
        zero-padded and ``gt_boxes`` (B, 4) in pixels x1, y1, x2, y2."""
        batch = collate_rows([item["row"] for item in items])
        max_nb = max(len(item["region_boxes"]) for item in items)
        region_boxes = torch.zeros(len(items), max_nb, 4, dtype=torch.float32)
        for k, item in enumerate(items):
            region_boxes[k, : len(item["region_boxes"])] = item["region_boxes"]
        batch["targets"] = torch.tensor([item["target"] for item in items], dtype=torch.long)
        batch["region_boxes"] = region_boxes
        batch["gt_boxes"] = torch.tensor([item["gt_box"] for item in items], dtype=torch.float32)
        batch["ids"] = [item["id"] for item in items]
        return batch


class RefcocoDataModule(VLDataModule):
    """RefCOCO+ in the refer toolkit's format: ``refs_file`` (``refs(unc).p`` or a ``.json`` list
    of the same refs) and ``instances_file`` (``instances.json``). The splits are names inside the
    refs file (UNC: train, val, testA, testB), matched exactly; ``test_split: testB`` or
    ``--data.init_args.test_split testB`` evaluates the other test set. ``image_key`` maps the
    integer ``{image_id}`` to the store key (e.g. ``COCO_train2014_{image_id:012d}``).

    ``features`` serves training; ``eval_features`` (default: the same store) serves val and test.
    UNITER trains on ground-truth-box features and reports detected-box features (the study's
    val(det) column): give the detected-box store there. ``max_boxes`` caps regions per image
    (UNITER: 100). ``batch_size`` counts expressions. Other arguments: see ``VLDataModule``."""

    def __init__(
        self,
        refs_file: str,
        instances_file: str,
        train_split: str = "train",
        val_split: str = "val",
        test_split: Optional[str] = "testA",
        image_key: str = "{image_id}",
        eval_features: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.set_image_key(image_key, image_key_pattern)
        self.refs_file, self.instances_file = refs_file, instances_file
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}  # split names in the refs
        self.set_split_files(*(refs_file if name else None for name in self.split_names.values()))
        self.eval_features = eval_features
        self._eval_store: RegionFeatureStore | None = None
        self._refs: list[RefSentence] | None = None
        self._coco: CocoIndex | None = None

    @property
    def eval_store(self) -> RegionFeatureStore:
        """The store for val / test (``eval_features``, else the training store)."""
        if self.eval_features is None or self.eval_features == self.features:
            return self.store
        if self._eval_store is None:
            store = RegionFeatureStore(self.eval_features, max_boxes=self.max_boxes)
            store.check_dim(self.img_dim)
            self._eval_store = store
        return self._eval_store

    def build_dataset(self, split: str, path: str) -> RefcocoDataset:
        if self._refs is None:
            self._refs = read_refs(path)
            self._coco = read_instances(self.instances_file)
        name = self.split_names[split]
        sentences = [s for s in self._refs if s.split == name]
        if not sentences:
            known = sorted({s.split for s in self._refs})
            raise ValueError(f"{path}: no refs in split {name!r} (the {split} split); the file's splits are {known}")
        store = self.store if split == "train" else self.eval_store
        dataset = RefcocoDataset(sentences, self._coco, store, self.tokenizer, self.max_txt_len, self.key_pattern,
                                 source=f"{path} split {name!r}")
        poor = dataset.poor_matches
        rank_zero_info(f"RefCOCO {split} ({name}): {len(dataset)} expressions from {len({s.ref_id for s in sentences})} "
                       f"refs; {poor} ({poor / len(dataset):.1%}) have no region with IoU >= {IOU_THRESHOLD} "
                       f"with the referred box in {store.path}")
        return dataset
