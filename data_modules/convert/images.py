"""Pre-resize a folder of images into an image store (the format: ``data_modules.images``).

    python -m data_modules.convert images --src data/coco --out data/images/coco.h5
    python -m data_modules.convert images --src data/nlvr2 --out data/images/nlvr2.h5 --workers 8

Every ``.jpg`` / ``.jpeg`` / ``.png`` below ``--src`` is decoded, made RGB and resized by ViLT's rule
(``--image-size`` 384, ``--max-image-size`` int(1333/800·384) = 639, ``--size-divisor`` 32) and
stored as uint8 under its file stem. Interrupted, it resumes: the unfinished store
``.<name>.partial`` beside ``--out`` keeps the images committed so far (every ``--flush-images``) and
a rerun with the same settings continues after them (``--restart`` starts again). A file that
cannot be decoded stops the conversion naming it (nothing is skipped silently): replace or remove
it and rerun — the work done is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from ..features import partial_path
from ..images import IMAGE_FORMAT, IMAGE_VERSION, PARTIAL_IMAGE_FORMAT, ImageFolder, decode_with_size
from ..pixels import ImageTransform
from .writer import ResumableStoreWriter

CLI_DESCRIPTION = __doc__
CHUNK_BYTES = 1 << 20  # uncompressed pixels: one read touches one or two chunks
COMPRESSED_CHUNK_BYTES = 1 << 16  # compressed: a random read decompresses a few small chunks, not 1 MiB


class ImageStoreWriter(ResumableStoreWriter):
    """Writes an image store; the file appears (atomically) only on ``close``.

    Args:
        path: the store to write.
        transform: the resize rule its images follow (kept as attributes; a data module checks it).
        resume: keep the unfinished file at ``partial_path(path)`` and continue one left there
            (``resumed`` images); it must have the same ``transform`` and ``meta``.
        meta: JSON-able provenance, the ``meta`` attribute.
        flush_images: images buffered before one write (and, resumable, one commit).
        compression: h5py compression of ``pixels`` (None, ``"lzf"``, ``"gzip"`` at level 1); worth it
            for drawn images (the demo's: 60 KiB → 3 KiB each), not for photographs.

    Example:
        >>> with ImageStoreWriter("images.h5", ImageTransform(128)) as w:           # doctest: +SKIP
        ...     w.add("scene-0", np.zeros((128, 160, 3), np.uint8), orig_size=(640, 512))

    Raises:
        ValueError: (``add``) a repeated key, pixels that are not uint8 (H, W, 3), or a size the rule
            would resize (the store holds images already resized); (resume) an unfinished file
            written with other settings.
    """

    def __init__(self, path: str | os.PathLike, transform: ImageTransform, resume: bool = False,
                 meta: Optional[dict] = None, flush_images: int = 256, compression: Optional[str] = None):
        self.path = Path(path)
        self.transform = transform
        self.resume = bool(resume)
        self._meta = None if meta is None else json.dumps(meta, sort_keys=True)
        self._flush_images = max(1, int(flush_images))
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._shapes: list[tuple[int, int]] = []
        self._orig: list[tuple[int, int]] = []
        self._bytes = 0
        self._committed = 0
        self.resumed = 0
        self._pending: list[np.ndarray] = []
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self._tmp = str(partial_path(self.path))
            if Path(self._tmp).exists():
                self._open_partial()
                return
        else:
            fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            os.close(fd)
        self._h5 = h5py.File(self._tmp, "w")
        self._pixels = self._h5.create_dataset(
            "pixels", (0,), maxshape=(None,), dtype="uint8", compression=compression,
            chunks=(CHUNK_BYTES if compression is None else COMPRESSED_CHUNK_BYTES,),
            compression_opts=1 if compression == "gzip" else None)
        for name, shape, dtype in (("img_ids", (0,), h5py.string_dtype("utf-8")), ("shapes", (0, 2), "int32"),
                                   ("orig_wh", (0, 2), "int32")):
            self._h5.create_dataset(name, shape, maxshape=(None, *shape[1:]), dtype=dtype, chunks=(4096, *shape[1:]))
        self._h5.attrs["partial_format"] = PARTIAL_IMAGE_FORMAT
        self._h5.attrs["committed_images"] = 0
        for k, v in transform.as_attrs().items():
            self._h5.attrs[k] = v
        if self._meta is not None:
            self._h5.attrs["meta"] = self._meta
        self._h5.flush()

    def _open_partial(self) -> None:
        where = f"{self._tmp} (unfinished image store for {self.path})"
        try:
            self._h5 = h5py.File(self._tmp, "r+")
        except OSError as err:
            raise ValueError(f"{where} cannot be opened ({err}); it was probably cut off mid-write: delete it "
                             "(or pass --restart) to start again") from None
        f = self._h5
        try:
            fmt = f.attrs.get("partial_format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != PARTIAL_IMAGE_FORMAT:
                raise ValueError(f"{where} is not a resumable image store (partial_format={fmt!r}); delete it")
            old = {k: f.attrs.get(k) for k in ("shortest_edge", "longest_edge", "size_divisor")}
            new = {k: v for k, v in self.transform.as_attrs().items() if k in old}
            old_meta = f.attrs.get("meta")
            old_meta = old_meta.decode() if isinstance(old_meta, bytes) else old_meta
            if {k: int(v) for k, v in old.items()} != new or old_meta != self._meta:
                raise ValueError(f"{where} was written with other settings ({old}, meta {old_meta}) than now ({new}, "
                                 f"meta {self._meta}); rerun with the same settings or delete it to start again")
            n = int(f.attrs["committed_images"])
            ids = list(f["img_ids"].asstr()[:n])
            shapes = f["shapes"][:n]
            orig = f["orig_wh"][:n]
            nbytes = int((shapes[:, 0].astype(np.int64) * shapes[:, 1] * 3).sum()) if n else 0
            if len(ids) != n or len(shapes) != n or len(f["pixels"]) < nbytes:
                raise ValueError(f"{where}: holds less than its {n} committed images; delete it to start again")
        except BaseException:
            f.close()
            raise
        for name in ("img_ids", "shapes", "orig_wh"):
            f[name].resize(n, axis=0)
        self._pixels = f["pixels"]
        self._pixels.resize(nbytes, axis=0)
        self._ids, self._seen = ids, set(ids)
        self._shapes = [(int(h), int(w)) for h, w in shapes]
        self._orig = [(int(w), int(h)) for w, h in orig]
        self._bytes = nbytes
        self._committed = self.resumed = n

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def add(self, key: str, pixels: np.ndarray, orig_size: Optional[tuple[int, int]] = None) -> None:
        """Add one resized image: uint8 ``(H, W, 3)``; ``orig_size`` the source's ``(width, height)``
        (default: the image's own)."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer already closed")
        where = f"{self.path}: image {key!r}"
        if not isinstance(key, str) or not key:
            raise ValueError(f"{self.path}: image key {key!r} must be a non-empty string")
        if key in self._seen:
            raise ValueError(f"{where} was added twice; keys must be unique")
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"{where}: expected uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
        h, w = pixels.shape[:2]
        if not self.transform.is_fixed_point(w, h):
            raise ValueError(f"{where}: a {w} x {h} image is not resized by the store's rule ({self.transform}); "
                             f"it would become {self.transform.output_size(w, h)[::-1]}")
        self._pending.append(np.ascontiguousarray(pixels).reshape(-1))
        self._ids.append(key)
        self._seen.add(key)
        self._shapes.append((h, w))
        self._orig.append(tuple(int(v) for v in orig_size) if orig_size is not None else (w, h))
        if len(self._pending) >= self._flush_images:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            flat = np.concatenate(self._pending)
            self._pixels.resize(self._bytes + len(flat), axis=0)
            self._pixels[self._bytes:] = flat
            self._bytes += len(flat)
            self._pending = []
        new = slice(self._committed, len(self._ids))
        k = len(self._ids)
        for name, values in (("img_ids", np.asarray(self._ids[new], dtype=object)),
                             ("shapes", np.asarray(self._shapes[new], dtype=np.int32).reshape(-1, 2)),
                             ("orig_wh", np.asarray(self._orig[new], dtype=np.int32).reshape(-1, 2))):
            self._h5[name].resize(k, axis=0)
            self._h5[name][self._committed:] = values
        self._h5.attrs["committed_images"] = k  # last: a file cut off before it reads as the previous state
        self._committed = k
        self._h5.flush()

    def close(self) -> Path:
        """Write the offsets and move the finished file into place."""
        if self._closed:
            return self.path
        try:
            self._flush()
            sizes = np.asarray([h * w * 3 for h, w in self._shapes], dtype=np.int64)
            self._h5.create_dataset("offsets", data=np.cumsum(sizes) - sizes)
            for name in ("partial_format", "committed_images"):
                del self._h5.attrs[name]
            self._h5.attrs["format"] = IMAGE_FORMAT
            self._h5.attrs["version"] = IMAGE_VERSION
            self._h5.close()
        except BaseException:
            self.suspend() if self.resume else self.abort()
            raise
        os.replace(self._tmp, self.path)
        self._closed = True
        return self.path


def _decode_one(job):
    path, transform = job
    return decode_with_size(path, transform, key=Path(path).stem)


def convert_images(src: str | os.PathLike, out: str | os.PathLike, transform: ImageTransform = ImageTransform(),
                   workers: int = 0, restart: bool = False, overwrite: bool = False, flush_images: int = 256,
                   compression: Optional[str] = None, progress: bool = False) -> dict:
    """Convert every image file below ``src`` into the store ``out`` (resumable); returns a summary.

    Example:
        >>> convert_images("data/coco", "data/images/coco.h5", workers=8)     # doctest: +SKIP
        {'out': 'data/images/coco.h5', 'images': 123287, 'converted': 123287, 'resumed': 0, ...}

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is not set.
        CorruptImageError: a file cannot be decoded (named); the work done so far stays resumable.
        StoreError: two files share a stem.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if restart:
        partial_path(out).unlink(missing_ok=True)
    folder = ImageFolder(src, transform)
    folder._load(rescan=True)
    files = [folder.path / f for f in folder._files]
    meta = {"source": "folder", "src": str(Path(src).resolve())}
    started = time.perf_counter()
    writer = ImageStoreWriter(out, transform, resume=True, meta=meta, flush_images=flush_images,
                              compression=compression)
    todo = [f for f in files if f.stem not in writer]
    converted = 0
    try:
        jobs = ((str(f), transform) for f in todo)
        if workers > 0:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers)
            results = pool.imap(_decode_one, jobs, chunksize=8)
        else:
            pool, results = None, map(_decode_one, jobs)
        try:
            for f, (pixels, size) in zip(todo, results):
                writer.add(f.stem, pixels, orig_size=size)
                converted += 1
                if progress and converted % 1000 == 0:
                    print(f"{converted}/{len(todo)} images", file=sys.stderr)
        finally:
            if pool is not None:
                pool.terminate()
    except BaseException:
        writer.suspend()
        raise
    resumed = writer.resumed
    writer.close()
    seconds = time.perf_counter() - started
    return {"out": str(out), "images": resumed + converted, "converted": converted, "resumed": resumed,
            "seconds": round(seconds, 1), "images_per_s": round(converted / seconds, 1) if seconds else None,
            **transform.as_attrs()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, type=Path, help="folder of image files (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="the store to write, e.g. data/images/coco.h5")
    p.add_argument("--image-size", type=int, default=384, help="shorter side (default 384, ViLT)")
    p.add_argument("--max-image-size", type=int, default=None, help="longer side at most (default int(1333/800 x image-size))")
    p.add_argument("--size-divisor", type=int, default=32, help="sides rounded down to a multiple of it (default 32)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: in this process)")
    p.add_argument("--compression", choices=("lzf", "gzip"), default=None, help="compress the pixels (default: none)")
    p.add_argument("--restart", action="store_true", help="discard an unfinished conversion of OUT instead of resuming it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    transform = ImageTransform(args.image_size, args.max_image_size, args.size_divisor)
    try:
        summary = convert_images(args.src, args.out, transform, workers=args.workers, restart=args.restart,
                                 overwrite=args.overwrite, compression=args.compression, progress=not args.no_progress)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
