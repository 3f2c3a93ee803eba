"""The region-feature store: one HDF5 file per image set, shared by every task.

Flat layout, so one image is two contiguous slices (fast, uncompressed reads)::

    img_ids    (N,)          utf-8 strings   image keys
    num_boxes  (N,)          int32
    offsets    (N,)          int64           first row of each image in features / norm_bb
    img_wh     (N, 2)        int32           image width, height in pixels
    features   (sum_n, D)    float16         region features (2048-d for bottom-up attention)
    norm_bb    (sum_n, 6)    float32         x1, y1, x2, y2, w, h divided by image width/height

File attributes: ``format = "lightning-vl/region-features"``, ``version = 1``, ``feat_dim = D``,
optionally ``meta`` (a JSON string: how the store was made, e.g. by ``data_modules.convert``).
The model's 7-d position feature is ``norm_bb`` plus the area ``w * h`` (UNITER's layout).

Soft labels (optional; what UNITER's masked region classification, MRC / MRC-kl, learns from):
the detector's class distribution of every region, as UNITER's img_db keeps it (1,601 Visual
Genome classes, index 0 = background)::

    soft_labels  (sum_n, C)  float16         row r: the class probabilities of region r

with file attributes ``soft_label_dim = C`` and optionally ``soft_label_names`` (a JSON list of
the C class names). A store holds them for every image or for none; the writer checks each
image's rows (shape (n, C), finite, non-negative, each row summing to 1 within
``SOFT_LABEL_SUM_TOL``). Readers without soft-label support ignore the dataset (the version stays
1); ``RegionFeatureStore.get_soft_labels`` reads them, ``soft_label_dim`` / ``soft_label_names``
describe them (None without).

This module reads stores (``RegionFeatureStore``, what every DataModule uses); the writer
(``RegionFeatureWriter``, resumable, what the converters and the demo world use) lives in
``data_modules.convert.writer``.

Reading checks what a store written by another tool (or damaged later) could hold: a file that
is empty, cut short or not HDF5 fails with ``UnreadableStoreError`` naming it, at open and when a
read fails later; rows holding NaN/inf fail with ``NonFiniteFeaturesError`` naming the file, the
image and the example. ``python -m data_modules.check_store FILE`` scans a whole store.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import torch

FORMAT = "lightning-vl/region-features"
VERSION = 1
INDEX_DATASETS = ("img_ids", "num_boxes", "offsets", "img_wh")
PARTIAL_FORMAT = "lightning-vl/region-features-partial"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHECK_HINT = "python -m data_modules.check_store"
SOFT_LABELS = "soft_labels"  # the optional dataset (sum_n, C) of per-region class distributions
SOFT_LABEL_SUM_TOL = 0.02  # a row of class probabilities sums to 1 within this (float16 sources, 1,601 classes)


def read_soft_label_names(value, where: str) -> list[str] | None:
    """The ``soft_label_names`` attribute (a JSON list of strings) as a list; None when absent."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        names = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        raise ValueError(f"{where}: attribute soft_label_names is not JSON; expected a JSON list of class names") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{where}: attribute soft_label_names must be a JSON list of non-empty strings")
    return names


def check_soft_label_names(names, where: str) -> list[str] | None:
    """``names`` as a list of distinct non-empty strings (None passes through)."""
    if names is None:
        return None
    names = list(names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{where}: soft_label_names must be a non-empty list of non-empty strings")
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"{where}: soft_label_names lists {dup!r} twice")
    return names


def partial_path(path: str | os.PathLike) -> Path:
    """Where a resumable writer keeps the unfinished store for ``path``."""
    path = Path(path)
    return path.parent / f".{path.name}.partial"


class MissingImageError(KeyError):
    """An image id that the feature store does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message, quoting it
        return str(self.args[0])


class StoreError(ValueError):
    """A region-feature store that cannot be used as it is (the message names the file)."""


class UnreadableStoreError(StoreError):
    """The file cannot be opened or read as HDF5: empty, truncated, not HDF5, or damaged."""


class NonFiniteFeaturesError(StoreError):
    """An image's region features or boxes in the store hold NaN or inf."""


def describe_open_error(path: str | os.PathLike, err: BaseException) -> str:
    """What is wrong with a file that h5py cannot open, in words (size, signature, truncation)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as io_err:
        return f"{path} cannot be read ({io_err.strerror or io_err})"
    text = str(err)
    if size == 0:
        return f"{path} is empty (0 bytes): an interrupted copy or write? Copy or convert it again"
    m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if m:
        return (f"{path} is truncated: {int(m[1]):,} bytes on disk, but its HDF5 header says {int(m[2]):,} "
                "(a copy, download or write cut short?); copy or convert it again")
    if "signature not found" in text or (head != HDF5_SIGNATURE and "signature" in text):
        return (f"{path} is not an HDF5 file ({size:,} bytes starting {head!r}, no HDF5 signature); "
                "expected a region-feature store written by make features / RegionFeatureWriter")
    return f"{path} cannot be opened as HDF5 ({size:,} bytes): {' '.join(text.split())}"


def open_h5(path: str | os.PathLike) -> h5py.File:
    """``h5py.File(path, "r")``; a file that cannot be opened raises ``UnreadableStoreError`` saying why."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as err:
        raise UnreadableStoreError(describe_open_error(path, err)) from None


class RegionFeatureStore:
    """Reads a store. The HDF5 handle is opened lazily in each process — h5py handles cannot be
    pickled into DataLoader workers — and the small index once per process on first use."""

    def __init__(self, path: str | os.PathLike, max_boxes: int | None = None):
        self.path = Path(path)
        if max_boxes is not None and max_boxes <= 0:
            raise ValueError(f"{self.path}: max_boxes must be positive or None, got {max_boxes}")
        self.max_boxes = max_boxes
        if not self.path.is_file():
            raise FileNotFoundError(f"region-feature store {self.path} does not exist")
        self._reset()
        with open_h5(self.path) as f:
            try:
                self.feat_dim = self._validate(f)
            except OSError as err:  # metadata that cannot be read: a damaged file
                raise UnreadableStoreError(f"{self.path}: the index cannot be read ({' '.join(str(err).split())}); "
                                           f"the file is damaged: check it with {CHECK_HINT} {self.path}") from None

    def _reset(self) -> None:
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._index: dict[str, int] | None = None
        self._ids: list[str] | None = None

    def _validate(self, f: h5py.File) -> int:
        """The file's feature dimension, after checking it is a store this code can read."""
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT:
            raise ValueError(f"{self.path} is not a lightning-vl region-feature store "
                             f"(attribute format={fmt!r}, expected {FORMAT!r})")
        version = f.attrs.get("version")
        if version is None or int(version) != VERSION:
            shown = "missing" if version is None else int(version)
            raise ValueError(f"{self.path}: store version {shown}, expected {VERSION}")
        feat_dim = int(f.attrs.get("feat_dim", -1))
        absent = [k for k in (*INDEX_DATASETS, "features", "norm_bb") if k not in f]
        if absent:
            raise ValueError(f"{self.path}: datasets {absent} missing; expected {list(INDEX_DATASETS)} + features, norm_bb")
        n = len(f["img_ids"])
        expected_shapes = {"num_boxes": (n,), "offsets": (n,), "img_wh": (n, 2)}
        for name, shape in expected_shapes.items():
            if f[name].shape != shape:
                raise ValueError(f"{self.path}: dataset {name} has shape {f[name].shape}, expected {shape}")
        feats, boxes = f["features"], f["norm_bb"]
        if feats.ndim != 2 or feats.shape[1] != feat_dim:
            raise ValueError(f"{self.path}: features have shape {feats.shape}, expected (rows, {feat_dim}) "
                             f"from the attribute feat_dim={feat_dim}")
        if boxes.shape != (feats.shape[0], 6):
            raise ValueError(f"{self.path}: norm_bb has shape {boxes.shape}, expected ({feats.shape[0]}, 6)")
        self.soft_label_dim, self.soft_label_names = None, None
        dim_attr = f.attrs.get("soft_label_dim")
        if SOFT_LABELS in f:
            soft = f[SOFT_LABELS]
            if soft.ndim != 2 or soft.shape[0] != feats.shape[0] or soft.shape[1] == 0:
                raise ValueError(f"{self.path}: soft_labels have shape {soft.shape}, expected ({feats.shape[0]}, C): "
                                 "one class distribution per region")
            if dim_attr is None or int(dim_attr) != soft.shape[1]:
                raise ValueError(f"{self.path}: attribute soft_label_dim={None if dim_attr is None else int(dim_attr)} "
                                 f"but soft_labels have {soft.shape[1]} classes (shape {soft.shape})")
            names = read_soft_label_names(f.attrs.get("soft_label_names"), str(self.path))
            if names is not None and len(names) != soft.shape[1]:
                raise ValueError(f"{self.path}: attribute soft_label_names lists {len(names)} names for "
                                 f"{soft.shape[1]} soft-label classes")
            self.soft_label_dim, self.soft_label_names = int(soft.shape[1]), names
        elif dim_attr is not None:
            raise ValueError(f"{self.path}: attribute soft_label_dim={int(dim_attr)} but no soft_labels dataset")
        return feat_dim

    def __getstate__(self) -> dict:
        """Only the path and settings travel to DataLoader workers; each reopens the file."""
        return {"path": self.path, "max_boxes": self.max_boxes, "feat_dim": self.feat_dim,
                "soft_label_dim": self.soft_label_dim, "soft_label_names": self.soft_label_names}

    @property
    def has_soft_labels(self) -> bool:
        """Whether the store keeps each region's class distribution (``soft_labels``)."""
        return self.soft_label_dim is not None

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            # A handle inherited through fork is not ours to use: open our own. Each worker opens
            # the file itself, maybe long after __init__ checked it: a file replaced or cut short
            # since then is named here, not left to an h5py traceback.
            if not self.path.is_file():
                raise UnreadableStoreError(f"region-feature store {self.path} no longer exists (it was opened "
                                           "before: moved or deleted while in use?)")
            h5 = open_h5(self.path)
            try:
                self._nbb = h5["num_boxes"][:]
                self._off = h5["offsets"][:]
                self._wh = h5["img_wh"][:]
                self._features = h5["features"]
                self._norm_bb = h5["norm_bb"]
                self._soft = h5[SOFT_LABELS] if self.soft_label_dim is not None else None
            except (OSError, KeyError) as err:
                h5.close()
                raise UnreadableStoreError(f"{self.path}: the index cannot be read ({' '.join(str(err).split())}); "
                                           f"the file changed or was damaged since it was opened: check it with "
                                           f"{CHECK_HINT} {self.path}") from None
            self._h5, self._pid = h5, os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    @property
    def index(self) -> dict[str, int]:
        """Image id → row."""
        if self._index is None:
            f = self._file()
            try:
                ids = list(f["img_ids"].asstr()[:])
            except (OSError, UnicodeDecodeError) as err:
                raise UnreadableStoreError(f"{self.path}: the image ids cannot be read ({' '.join(str(err).split())}); "
                                           f"the file is damaged: check it with {CHECK_HINT} {self.path}") from None
            self._ids = ids
            self._index = {k: i for i, k in enumerate(self._ids)}
        return self._index

    @property
    def ids(self) -> list[str]:
        self.index
        return list(self._ids)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, img_id: object) -> bool:
        return img_id in self.index

    def check_dim(self, expected: int, setting: str = "data.init_args.img_dim") -> None:
        """Refuse a store whose features the model's image embedding cannot take; ``setting``
        names the option that gave ``expected``."""
        if self.feat_dim != expected:
            raise ValueError(
                f"{self.path}: the store's feat_dim is {self.feat_dim} (its region features are {self.feat_dim}-d), "
                f"but {setting} is {expected} (img_dim={expected}); set {setting} and model.uniter.img_dim to "
                f"{self.feat_dim}, or use a store extracted for the model"
            )

    def require(self, uses, source: str) -> None:
        """Every image a split uses must be in the store, checked for all at once before training.

        ``uses``: ``(store key, which example uses it)`` pairs. One error names the store, how many
        images are missing, the first few with their examples, and what the store's keys look like."""
        missing: dict[str, str] = {}
        for key, user in uses:
            if key not in self.index and key not in missing:
                missing[key] = user
        if missing:
            shown = "; ".join(f"{key!r} ({user})" for key, user in list(missing.items())[:5])
            known = ", ".join(repr(k) for k in self.ids[:3])
            raise MissingImageError(
                f"{self.path}: {len(missing)} images used by {source} are not in the region-feature store: "
                f"{shown}{' ...' if len(missing) > 5 else ''} (store keys look like {known}; check the data "
                "module's image_key pattern)")

    def row(self, img_id: str) -> int:
        try:
            return self.index[img_id]
        except KeyError:
            known = ", ".join(repr(k) for k in self._ids[:3])
            raise MissingImageError(
                f"{self.path}: no image {img_id!r} in the region-feature store "
                f"({len(self._ids)} images, e.g. {known})"
            ) from None

    def num_boxes(self, img_id: str) -> int:
        """Regions returned by ``get`` (after ``max_boxes``)."""
        row = self.row(img_id)
        self._file()
        n = int(self._nbb[row])
        return n if self.max_boxes is None else min(n, self.max_boxes)

    def _where(self, img_id: str, example: str | None) -> str:
        return f"{self.path}: image {img_id!r}" + (f" (used by {example})" if example else "")

    def _opened(self, img_id: str, example: str | None) -> None:
        try:
            self._file()
        except UnreadableStoreError as err:
            raise UnreadableStoreError(f"{err} [while reading image {img_id!r}"
                                       f"{f' for {example}' if example else ''}]") from None

    def get(self, img_id: str, example: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(img_feat (n, D) float32, img_pos_feat (n, 7) float32)`` of one image; the 7-d
        position is ``[x1, y1, x2, y2, w, h, w*h]`` normalised by the image size.

        ``example`` (e.g. ``"question 42"``) only names the caller in errors: a read that fails
        raises ``UnreadableStoreError``, NaN/inf in the rows read ``NonFiniteFeaturesError``."""
        self._opened(img_id, example)
        row = self.row(img_id)
        start, n = int(self._off[row]), int(self._nbb[row])
        if self.max_boxes is not None:
            n = min(n, self.max_boxes)
        try:
            # numpy's float16 -> float32 conversion: torch's multi-threaded .float() on small tensors
            # was 25x slower on a 2-core machine.
            feats = self._features[start:start + n].astype(np.float32)
            boxes = self._norm_bb[start:start + n]
        except OSError as err:
            raise self._read_error(img_id, example, start, n, err) from None
        # Stores written by other tools (or damaged) may hold NaN/inf: checked on the rows just
        # read. 55 x 2048 regions, one thread of a 2-core EPYC: 12-20 us, ~6 % of a get() (~210 us,
        # mostly numpy's float16 -> float32) and about a quarter of the HDF5 slice read alone.
        if not (np.isfinite(feats).all() and np.isfinite(boxes).all()):
            self._check_finite(img_id, example, start, feats, boxes)
        feats, boxes = torch.from_numpy(feats), torch.from_numpy(boxes)
        return feats, torch.cat([boxes, boxes[:, 4:5] * boxes[:, 5:6]], dim=1)

    def get_soft_labels(self, img_id: str, example: str | None = None) -> torch.Tensor:
        """``(n, C)`` float32: the class distribution of each region ``get`` returns (same rows,
        ``max_boxes`` applied). A store without soft labels raises ``StoreError``; NaN/inf in the
        rows read ``NonFiniteFeaturesError``."""
        if self.soft_label_dim is None:
            raise StoreError(f"{self._where(img_id, example)}: the store has no soft labels (no soft_labels dataset); "
                             "convert features from a source that has them (UNITER's img_db, npz with soft_labels)")
        self._opened(img_id, example)
        row = self.row(img_id)
        start, n = int(self._off[row]), int(self._nbb[row])
        if self.max_boxes is not None:
            n = min(n, self.max_boxes)
        try:
            soft = self._soft[start:start + n].astype(np.float32)
        except OSError as err:
            raise self._read_error(img_id, example, start, n, err) from None
        if not np.isfinite(soft).all():
            bad = np.flatnonzero(~np.isfinite(soft).all(axis=1))
            raise NonFiniteFeaturesError(
                f"{self._where(img_id, example)}: soft labels hold NaN or inf in {len(bad)} of {n} regions (first: "
                f"region {int(bad[0])}, store row {start + int(bad[0])}); list every affected image with "
                f"{CHECK_HINT} {self.path}")
        return torch.from_numpy(soft)

    def _read_error(self, img_id, example, start, n, err) -> UnreadableStoreError:
        return UnreadableStoreError(
            f"{self._where(img_id, example)}: rows {start}..{start + n - 1} cannot be read "
            f"({' '.join(str(err).split())}); the file is damaged (truncated or overwritten while in use?): "
            f"check it with {CHECK_HINT} {self.path}")

    def _check_finite(self, img_id, example, start, feats: np.ndarray, boxes: np.ndarray) -> None:
        """Raise ``NonFiniteFeaturesError`` naming what in the image's rows is NaN or inf."""
        problems = []
        for name, values in (("region features", feats), ("norm_bb boxes", boxes)):
            bad = ~np.isfinite(values).all(axis=1)
            if bad.any():
                rows = np.flatnonzero(bad)
                kinds = "/".join(k for k, hit in (("NaN", np.isnan(values).any()), ("inf", np.isinf(values).any())) if hit)
                problems.append(f"{name} hold {kinds} in {len(rows)} of {len(values)} regions "
                                f"(first: region {int(rows[0])}, store row {start + int(rows[0])})")
        if problems:
            raise NonFiniteFeaturesError(
                f"{self._where(img_id, example)}: {'; '.join(problems)}. The store was written by another tool "
                f"or damaged (RegionFeatureWriter refuses such values); list every affected image with "
                f"{CHECK_HINT} {self.path}, then convert the source again without them")

    def pixel_boxes(self, img_ids) -> dict[str, torch.Tensor]:
        """Pixel x1, y1, x2, y2 (float64) of the regions ``get`` returns (``max_boxes`` applied),
        without reading any feature: for setting up targets (RefCOCO+) at startup."""
        self._file()
        try:
            norm_bb = self._norm_bb[:, :4]
        except OSError as err:
            raise UnreadableStoreError(f"{self.path}: norm_bb cannot be read ({' '.join(str(err).split())}); "
                                       f"the file is damaged: check it with {CHECK_HINT} {self.path}") from None
        out = {}
        for img_id in img_ids:
            row = self.row(img_id)
            start, n = int(self._off[row]), int(self._nbb[row])
            if self.max_boxes is not None:
                n = min(n, self.max_boxes)
            w, h = (float(v) for v in self._wh[row])
            boxes = norm_bb[start:start + n]
            if not np.isfinite(boxes).all():
                i = int(np.argmax(~np.isfinite(boxes).all(axis=1)))
                raise NonFiniteFeaturesError(
                    f"{self.path}: image {img_id!r}: norm_bb boxes hold NaN or inf (first: region {i}, store row "
                    f"{start + i}); list every affected image with {CHECK_HINT} {self.path}")
            boxes = torch.from_numpy(boxes.astype(np.float64))
            out[img_id] = boxes * torch.tensor([w, h, w, h], dtype=torch.float64)
        return out

    def image_size(self, img_id: str) -> tuple[int, int]:
        """``(width, height)`` in pixels (to map boxes back to pixels, e.g. for RefCOCO+)."""
        row = self.row(img_id)
        self._file()
        return int(self._wh[row, 0]), int(self._wh[row, 1])

    def __repr__(self) -> str:
        soft = f", soft_label_dim={self.soft_label_dim}" if self.soft_label_dim is not None else ""
        return f"RegionFeatureStore({str(self.path)!r}, feat_dim={self.feat_dim}, max_boxes={self.max_boxes}{soft})"
