"""Writing a region-feature store (the format: ``data_modules.features``): what the converters,
``merge``, ``concat`` and the demo world use; training only reads (``RegionFeatureStore``).

A resumable writer (``resume=True``, used by the converters) writes ``.<name>.partial`` next to the
store instead of an anonymous temporary file, appends the index at every flush and records how many
images are committed (attribute ``committed_images``); a new writer on the same path continues
from there. Only ``close`` gives the file its ``format`` attribute and moves it into place.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from ..features import (FORMAT, PARTIAL_FORMAT, SOFT_LABEL_SUM_TOL, SOFT_LABELS, VERSION, check_soft_label_names,
                        partial_path, read_soft_label_names)


class ResumableStoreWriter:
    """What the HDF5 store writers share: a store is written to a temporary file beside ``path`` and
    renamed over it only by ``close``; ``abort`` drops it; ``suspend`` (``resume=True``) keeps it
    for a later writer; as a context manager a failure suspends or aborts. Subclasses set
    ``path``, ``resume``, ``_h5``, ``_tmp``, ``_closed`` and implement ``_flush`` and ``close``."""

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

    def __enter__(self) -> "ResumableStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.resume:
            self.suspend()
        else:
            self.abort()


class RegionFeatureWriter(ResumableStoreWriter):
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

    @property
    def ids(self) -> list[str]:
        """The image ids added (or resumed) so far, in order."""
        return list(self._ids)

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
