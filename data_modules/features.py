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

A resumable writer (``resume=True``, used by the converters) writes ``.<name>.partial`` next to the
store instead of an anonymous temporary file, appends the index at every flush and records how many
images are committed (attribute ``committed_images``); a new writer on the same path continues
from there. Only ``close`` gives the file its ``format`` attribute and moves it into place.

Reading checks what a store written by another tool (or damaged later) could hold: a file that
is empty, cut short or not HDF5 fails with ``UnreadableStoreError`` naming it, at open and when a
read fails later; rows holding NaN/inf fail with ``NonFiniteFeaturesError`` naming the file, the
image and the example. ``python -m data_modules.check_store FILE`` scans a whole store.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
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


class RegionFeatureWriter:
    """Writes a store, validating every image; the file appears (atomically) only on ``close``.

    Images are buffered and appended in large slices: one HDF5 write per image is slow.
    """

    def __init__(self, path: str | os.PathLike, feat_dim: int, chunk_rows: int = 64, flush_rows: int = 16384,
                 resume: bool = False, meta: dict | None = None, soft_label_names=None):
        """``resume``: keep the unfinished file at ``partial_path(path)`` and continue one left there
        (``resumed`` images; it must have the same ``feat_dim`` and ``meta``). ``meta``: JSON-able
        provenance stored as the ``meta`` attribute. ``soft_label_names``: the class names of the
        soft labels (their number fixes C); the first image added decides whether the store has
        soft labels at all, and every later one must agree."""
        self.path = Path(path)
        self.feat_dim = int(feat_dim)
        if self.feat_dim <= 0:
            raise ValueError(f"{self.path}: feat_dim must be positive, got {feat_dim}")
        self._soft_names = check_soft_label_names(soft_label_names, str(self.path))
        self._soft_dim: int | None = None if self._soft_names is None else len(self._soft_names)
        self._has_soft: bool | None = None  # decided by the first image (or the resumed file)
        self._soft_ds = None
        self._chunk_rows = chunk_rows
        self.resume = bool(resume)
        self._meta = None if meta is None else json.dumps(meta, sort_keys=True)
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._nbb: list[int] = []
        self._wh: list[tuple[int, int]] = []
        self._rows = 0
        self._committed = 0  # images whose index is on disk (resumable writer)
        self.resumed = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._pending_rows = 0
        self._flush_rows = flush_rows
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self._tmp = str(partial_path(self.path))
            if Path(self._tmp).exists():
                self._open_partial()
                return
            self._h5 = h5py.File(self._tmp, "w")
        else:
            fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            os.close(fd)
            self._h5 = h5py.File(self._tmp, "w")
        # ~chunk_rows regions per chunk: an image (10-100 regions) touches one or two chunks.
        self._feats = self._h5.create_dataset(
            "features", (0, self.feat_dim), maxshape=(None, self.feat_dim), dtype="float16",
            chunks=(chunk_rows, self.feat_dim))
        self._boxes = self._h5.create_dataset(
            "norm_bb", (0, 6), maxshape=(None, 6), dtype="float32", chunks=(max(chunk_rows, 1024), 6))
        if self.resume:
            self._h5.create_dataset("img_ids", (0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                    chunks=(4096,))
            self._h5.create_dataset("num_boxes", (0,), maxshape=(None,), dtype="int32", chunks=(4096,))
            self._h5.create_dataset("img_wh", (0, 2), maxshape=(None, 2), dtype="int32", chunks=(4096, 2))
            self._h5.attrs["partial_format"] = PARTIAL_FORMAT
            self._h5.attrs["feat_dim"] = self.feat_dim
            self._h5.attrs["committed_images"] = 0
            if self._meta is not None:
                self._h5.attrs["meta"] = self._meta
            self._h5.flush()

    def _open_partial(self) -> None:
        """Continue an unfinished store: keep its committed images, drop rows written after them."""
        where = f"{self._tmp} (unfinished store for {self.path})"
        try:
            self._h5 = h5py.File(self._tmp, "r+")
        except OSError as err:
            raise ValueError(f"{where} cannot be opened ({err}); it was probably cut off mid-write: "
                             "delete it to start again") from None
        f = self._h5
        try:
            fmt = f.attrs.get("partial_format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode()
            if fmt != PARTIAL_FORMAT or "committed_images" not in f.attrs:
                raise ValueError(f"{where} is not a resumable region-feature store (attribute "
                                 f"partial_format={fmt!r}, expected {PARTIAL_FORMAT!r}); delete it to start again")
            if int(f.attrs["feat_dim"]) != self.feat_dim:
                raise ValueError(f"{where} holds {int(f.attrs['feat_dim'])}-d features, expected {self.feat_dim}-d; "
                                 "delete it to start again")
            old_meta = f.attrs.get("meta")
            if isinstance(old_meta, bytes):
                old_meta = old_meta.decode()
            if old_meta != self._meta:
                raise ValueError(f"{where} was written with other settings ({old_meta}) than now ({self._meta}); "
                                 "rerun with the same settings or delete it to start again")
            n = int(f.attrs["committed_images"])
            ids = list(f["img_ids"].asstr()[:n])
            nbb = f["num_boxes"][:n].astype(np.int64)
            wh = f["img_wh"][:n]
            if len(ids) != n or len(nbb) != n or len(wh) != n or len(set(ids)) != n:
                raise ValueError(f"{where}: index holds fewer than the {n} committed images (or repeats one); "
                                 "delete it to start again")
            rows = int(nbb.sum())
            self._feats, self._boxes = f["features"], f["norm_bb"]
            if len(self._feats) < rows or len(self._boxes) < rows:
                raise ValueError(f"{where}: {len(self._feats)} feature rows, fewer than the {rows} of its "
                                 "committed images; delete it to start again")
            old_names = read_soft_label_names(f.attrs.get("soft_label_names"), where)
            if self._soft_names is not None and old_names is not None and old_names != self._soft_names:
                raise ValueError(f"{where} was written with other soft_label_names than now; rerun with the same "
                                 "settings or delete it to start again")
            if SOFT_LABELS in f and not n:  # nothing committed yet: the first image decides again
                del f[SOFT_LABELS]
                for name in ("soft_label_dim", "soft_label_names"):
                    if name in f.attrs:
                        del f.attrs[name]
            if SOFT_LABELS in f:
                soft = f[SOFT_LABELS]
                if len(soft) < rows or (self._soft_dim is not None and soft.shape[1] != self._soft_dim):
                    raise ValueError(f"{where}: soft_labels {soft.shape} do not fit its {rows} committed rows "
                                     f"(or the {self._soft_dim} soft_label_names); delete it to start again")
                self._soft_ds, self._soft_dim = soft, int(soft.shape[1])
                self._soft_names = self._soft_names or old_names
                self._has_soft = True if n else None
            elif n:
                self._has_soft = False
        except BaseException:
            f.close()
            raise
        for name in ("img_ids", "num_boxes", "img_wh"):
            f[name].resize(n, axis=0)
        self._feats.resize(rows, axis=0)
        self._boxes.resize(rows, axis=0)
        if self._soft_ds is not None:
            self._soft_ds.resize(rows, axis=0)
        self._ids, self._seen = ids, set(ids)
        self._nbb = nbb.tolist()
        self._wh = [(int(w), int(h)) for w, h in wh]
        self._rows = rows
        self._committed = self.resumed = n

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, img_id: object) -> bool:
        """Whether ``img_id`` was added (or resumed)."""
        return img_id in self._seen

    @property
    def has_soft_labels(self) -> bool | None:
        """Whether the store keeps soft labels: decided by the first image (None before it)."""
        return self._has_soft

    @property
    def soft_label_dim(self) -> int | None:
        """C, the soft labels' classes (None while unknown or without soft labels)."""
        return self._soft_dim if self._has_soft is not False else None

    def _check_soft_labels(self, where: str, soft_labels, n: int) -> np.ndarray | None:
        """The image's soft labels as float32 (n, C), checked; None if it has none."""
        if soft_labels is None:
            if self._has_soft is None and self._soft_names is not None:
                raise ValueError(f"{where}: no soft labels, but soft_label_names ({len(self._soft_names)} classes) were "
                                 "given for them")
            if self._has_soft:
                raise ValueError(f"{where}: no soft labels, but the images added before have them "
                                 f"({self._soft_dim} classes per region); a store keeps soft labels for every image "
                                 "or for none")
            return None
        if self._has_soft is False:
            raise ValueError(f"{where}: soft labels given, but the images added before have none; a store keeps "
                             "soft labels for every image or for none")
        soft = np.asarray(soft_labels)
        if not np.issubdtype(soft.dtype, np.number):
            raise ValueError(f"{where}: soft_labels must be a numeric array, got {soft.dtype}")
        classes = "C" if self._soft_dim is None else self._soft_dim
        if soft.ndim != 2 or soft.shape[0] != n or soft.shape[1] == 0 or (
                self._soft_dim is not None and soft.shape[1] != self._soft_dim):
            named = " (the number of soft_label_names)" if self._soft_names is not None else \
                (" like the images added before" if self._soft_dim is not None else "")
            raise ValueError(f"{where}: soft_labels have shape {soft.shape}, expected ({n}, {classes}): one class "
                             f"distribution per region{named}")
        soft = soft.astype(np.float64, copy=False)
        if not np.isfinite(soft).all():
            raise ValueError(f"{where}: soft_labels contain NaN or inf")
        if (soft < 0).any():
            i = int(np.argmax((soft < 0).any(axis=1)))
            raise ValueError(f"{where}: soft_labels of region {i} hold negative values (min {soft[i].min():.4g}); "
                             "expected class probabilities")
        sums = soft.sum(axis=1)
        off = np.abs(sums - 1) > SOFT_LABEL_SUM_TOL
        if off.any():
            i = int(np.argmax(off))
            raise ValueError(f"{where}: soft_labels of region {i} sum to {sums[i]:.4g}; expected a class distribution "
                             f"summing to 1 (within {SOFT_LABEL_SUM_TOL})")
        return soft.astype(np.float32)

    def add(self, img_id: str, features, boxes, width: int, height: int, soft_labels=None) -> None:
        """Add one image: ``features`` (n, D), ``boxes`` (n, 4) pixel ``x1, y1, x2, y2`` inside a
        ``width`` x ``height`` image, optionally ``soft_labels`` (n, C): each region's class
        distribution (see the module docstring)."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer already closed")
        if not isinstance(img_id, str) or not img_id:
            raise ValueError(f"{self.path}: image id {img_id!r} must be a non-empty string")
        where = f"{self.path}: image {img_id!r}"
        if img_id in self._seen:
            raise ValueError(f"{where} was added twice; image ids must be unique")
        feats = np.asarray(features)
        boxes = np.asarray(boxes)
        if not (np.issubdtype(feats.dtype, np.number) and np.issubdtype(boxes.dtype, np.number)):
            raise ValueError(f"{where}: features and boxes must be numeric arrays, got {feats.dtype} and {boxes.dtype}")
        feats = feats.astype(np.float32, copy=False)
        boxes = boxes.astype(np.float64, copy=False)
        if feats.ndim != 2 or feats.shape[1] != self.feat_dim:
            raise ValueError(f"{where}: features have shape {feats.shape}, expected (n, {self.feat_dim})")
        if feats.shape[0] == 0:
            raise ValueError(f"{where}: no regions; expected at least one")
        if boxes.shape != (feats.shape[0], 4):
            raise ValueError(f"{where}: boxes have shape {boxes.shape}, expected ({feats.shape[0]}, 4) pixel x1, y1, x2, y2")
        if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer)) and width > 0 and height > 0):
            raise ValueError(f"{where}: image size {width!r} x {height!r} is not positive; expected positive integer pixels")
        if not np.isfinite(feats).all():
            raise ValueError(f"{where}: features contain NaN or inf (or overflow float16 after conversion)")
        if np.abs(feats).max() > np.finfo(np.float16).max:
            raise ValueError(f"{where}: features exceed the float16 range (|x| <= 65504)")
        if not np.isfinite(boxes).all():
            raise ValueError(f"{where}: boxes contain NaN or inf")
        x1, y1, x2, y2 = boxes.T
        bad = (x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height) | (x1 >= x2) | (y1 >= y2)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where}: box {i} = {boxes[i].tolist()} is outside the image or empty; expected 0 <= x1 < x2 <= {width} (width), "
                f"0 <= y1 < y2 <= {height} (height)"
            )
        soft = self._check_soft_labels(where, soft_labels, len(feats))
        norm = np.stack([x1 / width, y1 / height, x2 / width, y2 / height,
                         (x2 - x1) / width, (y2 - y1) / height], axis=1).astype(np.float32)
        if self._has_soft is None:
            self._has_soft = soft is not None
            if soft is not None:
                self._soft_dim = soft.shape[1]
        self._pending.append((feats.astype(np.float16), norm, None if soft is None else soft.astype(np.float16)))
        self._pending_rows += len(norm)
        self._ids.append(img_id)
        self._seen.add(img_id)
        self._nbb.append(len(norm))
        self._wh.append((int(width), int(height)))
        if self._pending_rows >= self._flush_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        feats = np.concatenate([f for f, _, _ in self._pending])
        boxes = np.concatenate([b for _, b, _ in self._pending])
        n = len(feats)
        self._feats.resize(self._rows + n, axis=0)
        self._boxes.resize(self._rows + n, axis=0)
        self._feats[self._rows:] = feats
        self._boxes[self._rows:] = boxes
        if self._has_soft:
            soft = np.concatenate([s for _, _, s in self._pending])
            if self._soft_ds is None:
                self._soft_ds = self._h5.create_dataset(
                    SOFT_LABELS, (self._rows, self._soft_dim), maxshape=(None, self._soft_dim), dtype="float16",
                    chunks=(self._chunk_rows, self._soft_dim))
                self._h5.attrs["soft_label_dim"] = self._soft_dim
                if self._soft_names is not None:
                    self._h5.attrs["soft_label_names"] = json.dumps(self._soft_names)
            self._soft_ds.resize(self._rows + n, axis=0)
            self._soft_ds[self._rows:] = soft
        self._rows += n
        self._pending, self._pending_rows = [], 0
        if self.resume:
            self._commit_index()

    def _commit_index(self) -> None:
        """Append the flushed images' index; ``committed_images`` is written last, so a file cut off
        before it still reads as the previous, consistent state."""
        new = slice(self._committed, len(self._ids))
        k = len(self._ids)
        for name, values in (("img_ids", np.asarray(self._ids[new], dtype=object)),
                             ("num_boxes", np.asarray(self._nbb[new], dtype=np.int32)),
                             ("img_wh", np.asarray(self._wh[new], dtype=np.int32).reshape(-1, 2))):
            self._h5[name].resize(k, axis=0)
            self._h5[name][self._committed:] = values
        self._h5.attrs["committed_images"] = k
        self._committed = k
        self._h5.flush()

    def checkpoint(self) -> None:
        """Write everything added so far to disk (a resumable writer commits it for a later resume)."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer already closed")
        self._flush()
        self._h5.flush()

    def close(self) -> Path:
        """Write the index and move the finished file into place."""
        if self._closed:
            return self.path
        try:
            self._flush()
            nbb = np.asarray(self._nbb, dtype=np.int64)
            if self.resume:
                self._commit_index()  # the index datasets already exist; bring them up to date
                for name in ("partial_format", "committed_images"):
                    del self._h5.attrs[name]
            else:
                self._h5.create_dataset("img_ids", data=np.asarray(self._ids, dtype=object),
                                        dtype=h5py.string_dtype("utf-8"))
                self._h5.create_dataset("num_boxes", data=nbb.astype(np.int32))
                self._h5.create_dataset("img_wh", data=np.asarray(self._wh, dtype=np.int32).reshape(-1, 2))
            self._h5.create_dataset("offsets", data=(np.cumsum(nbb) - nbb).astype(np.int64))
            self._h5.attrs["format"] = FORMAT
            self._h5.attrs["version"] = VERSION
            self._h5.attrs["feat_dim"] = self.feat_dim
            if self._meta is not None:
                self._h5.attrs["meta"] = self._meta
            if self._has_soft:
                self._h5.attrs["soft_label_dim"] = self._soft_dim
                if self._soft_names is not None:
                    self._h5.attrs["soft_label_names"] = json.dumps(self._soft_names)
            self._h5.close()
        except BaseException:
            if self.resume:
                self.suspend()
            else:
                self.abort()
            raise
        os.replace(self._tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop the partial file; ``path`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._h5.close()
        finally:
            Path(self._tmp).unlink(missing_ok=True)

    def suspend(self) -> Path:
        """Resumable writer: commit what was added and close, keeping the unfinished file for a
        later writer with ``resume=True``; ``path`` is left as it was."""
        if not self.resume:
            raise RuntimeError(f"{self.path}: only a writer made with resume=True can be suspended")
        if not self._closed:
            self._closed = True
            try:
                if self._h5.id.valid:
                    self._flush()
            finally:
                if self._h5.id.valid:
                    self._h5.close()
        return Path(self._tmp)

    def __enter__(self) -> "RegionFeatureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.resume:
            self.suspend()
        else:
            self.abort()


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
