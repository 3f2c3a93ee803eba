"""Raw images for pixel models (ViLT): a folder of the public image files, or a pre-resized store.

A data module given ``images:`` instead of ``features:`` reads one of two sources, chosen by what
the path is:

* a **folder** (``ImageFolder``) of the files as they are published: COCO's
  ``train2014/COCO_train2014_000000xxxxxx.jpg`` / ``val2014/…`` (VQA), NLVR2's
  ``{split}-{set}-{pair}-img{0,1}.png`` — in numbered sub-folders for train
  (``images/train/{directory}/…``), flat for ``dev/`` and ``test1/`` (lil-lab/nlvr
  ``nlvr2/README.md``; dandelin/ViLT ``vilt/utils/write_nlvr2.py`` reads the same layout). The folder
  is walked once and its index (file stem → relative path) cached as JSON (``INDEX_NAME`` in the
  folder, or under ``cache_dir`` when the folder is read-only). Each read opens, decodes
  (PIL) and resizes one file (``data_modules.pixels.ImageTransform``); nothing stays open, so
  DataLoader workers need nothing of their own.
* an **HDF5 store** (``ImageStore``) of images already resized by that rule, as uint8, written by
  ``python -m data_modules.convert images`` (or the demo world). A read is one slice, no decoding.
  The handle is opened lazily in each process, like the region-feature store.

Keys: an image is found by its file stem (``dev-850-0-img0``: NLVR2's default ``image_key``), and
a COCO file (``COCO_val2014_000000000042``) also by its int image id as a string (``"42"``: VQA's
default ``image_key`` ``{image_id}``), so the region configs' patterns work unchanged.

Store layout (flat, like ``data_modules.features``)::

    img_ids   (N,)       utf-8   keys (file stems)
    shapes    (N, 2)     int32   height, width after resizing
    orig_wh   (N, 2)     int32   the source file's width, height
    offsets   (N,)       int64   first byte of each image in ``pixels``
    pixels    (sum,)     uint8   each image's (height, width, 3) RGB bytes

File attributes: ``format = "lightning-vl/images"``, ``version = 1``, the resize rule
(``shortest_edge``, ``longest_edge``, ``size_divisor``, ``resample``) and optionally ``meta`` (JSON).
A data module refuses a store resized by another rule than its own.

A missing image fails at ``setup`` for all of a split at once (``MissingImageError``, naming the
source, the images and the examples); a file that cannot be decoded fails when it is read
(``CorruptImageError``, naming the file, the key and the example) — no image is ever skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .features import MissingImageError, StoreError, UnreadableStoreError, open_h5
from .pixels import ImageTransform

IMAGE_FORMAT = "lightning-vl/images"
IMAGE_VERSION = 1
PARTIAL_IMAGE_FORMAT = "lightning-vl/images-partial"
INDEX_NAME = ".lightning-vl-image-index.json"
INDEX_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
COCO_NAME = re.compile(r"^COCO_[a-z]+\d{4}_(\d+)$")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning-vl" / "image-index"


class CorruptImageError(StoreError):
    """An image file that cannot be decoded (truncated, not an image, unsupported mode)."""


def aliases(stem: str) -> list[str]:
    """The keys an image is found by: its stem, and a COCO file's int image id.

    Example:
        >>> aliases("COCO_val2014_000000000042")
        ['COCO_val2014_000000000042', '42']
        >>> aliases("dev-850-0-img0")
        ['dev-850-0-img0']
    """
    m = COCO_NAME.match(stem)
    return [stem, str(int(m[1]))] if m else [stem]


def _keyed(stems, where_of) -> dict[str, int]:
    """key → position, over every alias of every stem; two images with one key is an error."""
    index: dict[str, int] = {}
    for i, stem in enumerate(stems):
        for key in aliases(stem):
            if key in index and index[key] != i:
                raise StoreError(f"{where_of(index[key])} and {where_of(i)} are both image {key!r}; keys must be "
                                 "unique (COCO ids across train2014/val2014/test2015 are)")
            index[key] = i
    return index


def decode(path: str | os.PathLike, transform: ImageTransform, key: str = "", example: Optional[str] = None) -> np.ndarray:
    """Open, decode and resize one file: uint8 ``(H, W, 3)``.

    Example:
        >>> decode("dev/dev-850-0-img0.png", ImageTransform()).shape   # doctest: +SKIP
        (384, 512, 3)

    Raises:
        MissingImageError: the file does not exist (any more).
        CorruptImageError: it cannot be decoded; the message names the file, ``key`` and ``example``.
    """
    return decode_with_size(path, transform, key, example)[0]


def decode_with_size(path: str | os.PathLike, transform: ImageTransform, key: str = "",
                     example: Optional[str] = None) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode`` plus the file's own ``(width, height)``; raises as ``decode`` does."""
    user = f" (image {key!r}{f', used by {example}' if example else ''})" if key else ""
    try:
        with Image.open(path) as image:
            image.load()
            return transform(image, where=f"{path}{user}"), image.size
    except FileNotFoundError:
        raise MissingImageError(f"{path}{user} does not exist (it was indexed before: moved or deleted?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(f"{path}{user} cannot be decoded as an image ({type(err).__name__}: "
                                f"{' '.join(str(err).split())}); replace the file") from None


class ImageSource:
    """What a dataset needs of an image source: ``require`` before training, ``get`` per row."""

    path: Path
    transform: ImageTransform
    kind = "image source"

    @property
    def index(self) -> dict[str, object]:
        raise NotImplementedError

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def sample_keys(self) -> list[str]:
        return list(self.index)[:3]

    def require(self, uses, source: str) -> None:
        """Every image a split uses must be there, checked for all at once (one error naming the
        first few with their examples). ``uses``: ``(key, which example uses it)`` pairs.

        Raises:
            MissingImageError: some are not.
        """
        missing: dict[str, str] = {}
        for key, user in uses:
            if key not in self.index and key not in missing:
                missing[key] = user
        if missing:
            shown = "; ".join(f"{key!r} ({user})" for key, user in list(missing.items())[:5])
            known = ", ".join(repr(k) for k in self.sample_keys())
            raise MissingImageError(
                f"{self.path}: {len(missing)} images used by {source} are not in the {self.kind}: {shown}"
                f"{' ...' if len(missing) > 5 else ''} (keys look like {known}; keys are file stems, or COCO "
                "image ids; check the data module's image_key pattern)")

    def get(self, key: str, example: Optional[str] = None) -> torch.Tensor:
        """uint8 ``(3, H, W)``: the image resized by ``transform``."""
        raise NotImplementedError

    def _missing(self, key: str) -> MissingImageError:
        known = ", ".join(repr(k) for k in self.sample_keys())
        return MissingImageError(f"{self.path}: no image {key!r} in the {self.kind} ({len(self)} images, e.g. {known})")


class ImageFolder(ImageSource):
    """The public image files under ``root``, found by stem wherever they are below it.

    Args:
        root: the folder (e.g. COCO's, holding ``train2014/`` and ``val2014/``; NLVR2's, holding
            ``images/train/0..99/``, ``dev/``, ``test1/``).
        transform: the resize rule.
        cache_dir: where the index goes when ``root`` is not writable (default
            ``~/.cache/lightning-vl/image-index``).

    Example:
        >>> folder = ImageFolder("data/nlvr2")                       # doctest: +SKIP
        >>> folder.get("dev-850-0-img0", example="example dev-850-0-0").shape   # doctest: +SKIP
        torch.Size([3, 384, 576])

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        StoreError: two files under it share a key.
    """

    kind = "image folder"

    def __init__(self, root: str | os.PathLike, transform: ImageTransform = ImageTransform(),
                 cache_dir: Optional[str | os.PathLike] = None):
        self.path = Path(root)
        if not self.path.is_dir():
            raise FileNotFoundError(f"image folder {self.path} does not exist")
        self.transform = transform
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
        self._files: Optional[list[str]] = None
        self._index: Optional[dict[str, int]] = None
        self._rescanned = False

    def __getstate__(self) -> dict:
        # workers get the index with the dataset (a list of strings, built once in the main process)
        return {k: v for k, v in self.__dict__.items()}

    def index_path(self) -> Path:
        """Where the cached index is read from and written to."""
        inside = self.path / INDEX_NAME
        if inside.exists() or os.access(self.path, os.W_OK):
            return inside
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:16]
        return self.cache_dir / f"{digest}.json"

    def scan(self) -> list[str]:
        """Every image file below the root (relative paths, sorted), walked now."""
        files = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.path)
            files += [str(rel / name) for name in filenames
                      if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")]
        return sorted(files)

    def _load(self, rescan: bool = False) -> None:
        path = self.index_path()
        files = None
        if not rescan and path.is_file():
            try:
                cached = json.loads(path.read_text())
                if cached.get("version") == INDEX_VERSION and cached.get("root") == str(self.path.resolve()):
                    files = list(cached["files"])
            except (OSError, ValueError, KeyError, TypeError):
                files = None  # an unreadable cache is rebuilt
        if files is None:
            files = self.scan()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"version": INDEX_VERSION, "root": str(self.path.resolve()), "files": files}))
                os.replace(tmp, path)
            except OSError:
                pass  # a cache that cannot be written only costs a walk next time
        self._files = files
        self._index = _keyed([Path(f).stem for f in files], lambda i: str(self.path / files[i]))

    @property
    def index(self) -> dict[str, int]:
        """key → position in the file list (aliases included)."""
        if self._index is None:
            self._load()
        return self._index

    def require(self, uses, source: str) -> None:
        uses = list(uses)
        if not self._rescanned and any(key not in self.index for key, _ in uses):
            self._load(rescan=True)  # files added since the index was cached
            self._rescanned = True
        super().require(uses, source)

    def file(self, key: str) -> Path:
        """The file of ``key``.

        Raises:
            MissingImageError: no file has that key.
        """
        if key not in self.index:
            raise self._missing(key)
        return self.path / self._files[self.index[key]]

    def get(self, key: str, example: Optional[str] = None) -> torch.Tensor:
        """Decode and resize ``key``'s file: uint8 ``(3, H, W)``.

        Raises:
            MissingImageError: no such key, or its file is gone.
            CorruptImageError: the file cannot be decoded (named with the key and ``example``).
        """
        pixels = decode(self.file(key), self.transform, key, example)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.path)!r}, {self.transform})"


class ImageStore(ImageSource):
    """Reads a pre-resized image store (layout: the module docstring). The HDF5 handle is opened
    lazily in each process; only the path travels to DataLoader workers.

    Args:
        path: the ``.h5`` file.
        transform: the resize rule the caller expects; the store must have been written with it.

    Example:
        >>> store = ImageStore("data/demo/images.h5", ImageTransform(128))   # doctest: +SKIP
        >>> store.get("nlvr2-train-0-0-img0").shape                            # doctest: +SKIP
        torch.Size([3, 128, 160])

    Raises:
        FileNotFoundError: no such file.
        UnreadableStoreError: not HDF5, empty or truncated.
        StoreError: not an image store, another version, or resized by another rule than ``transform``.
    """

    kind = "image store"

    def __init__(self, path: str | os.PathLike, transform: Optional[ImageTransform] = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"image store {self.path} does not exist")
        with open_h5(self.path) as f:
            fmt = f.attrs.get("format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != IMAGE_FORMAT:
                raise StoreError(f"{self.path} is not a lightning-vl image store (attribute format={fmt!r}, expected "
                                 f"{IMAGE_FORMAT!r}; write one with python -m data_modules.convert images)")
            version = f.attrs.get("version")
            if version is None or int(version) != IMAGE_VERSION:
                raise StoreError(f"{self.path}: image store version {version}, expected {IMAGE_VERSION}")
            absent = [k for k in ("img_ids", "shapes", "orig_wh", "offsets", "pixels") if k not in f]
            if absent:
                raise StoreError(f"{self.path}: datasets {absent} missing")
            stored = ImageTransform(int(f.attrs["shortest_edge"]), int(f.attrs["longest_edge"]),
                                    int(f.attrs["size_divisor"]))
        if transform is not None and transform != stored:
            raise StoreError(f"{self.path} holds images resized with shortest_edge={stored.shortest_edge}, "
                             f"longest_edge={stored.longest_edge}, size_divisor={stored.size_divisor}, but the data "
                             f"module asks for {transform.shortest_edge}, {transform.longest_edge}, "
                             f"{transform.size_divisor} (image_size, max_image_size, size_divisor); set those to the "
                             "store's or convert the images again")
        self.transform = stored
        self._reset()

    def _reset(self) -> None:
        self._h5 = None
        self._pid = None
        self._index: Optional[dict[str, int]] = None
        self._ids: Optional[list[str]] = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "transform": self.transform}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise UnreadableStoreError(f"image store {self.path} no longer exists (moved or deleted while in use?)")
            h5 = open_h5(self.path)
            try:
                self._shapes = h5["shapes"][:]
                self._off = h5["offsets"][:]
                self._pixels = h5["pixels"]
            except (OSError, KeyError) as err:
                h5.close()
                raise UnreadableStoreError(f"{self.path}: the index cannot be read ({' '.join(str(err).split())}); "
                                           "the file is damaged") from None
            self._h5, self._pid = h5, os.getpid()
        return self._h5

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            f = self._file()
            self._ids = list(f["img_ids"].asstr()[:])
            self._index = _keyed(self._ids, lambda i: f"{self.path}: image {self._ids[i]!r}")
        return self._index

    @property
    def ids(self) -> list[str]:
        self.index
        return list(self._ids)

    def sample_keys(self) -> list[str]:
        return self.ids[:3]

    def image_size(self, key: str) -> tuple[int, int]:
        """``(width, height)`` as stored (after resizing)."""
        self._file()
        if key not in self.index:
            raise self._missing(key)
        h, w = (int(v) for v in self._shapes[self.index[key]])
        return w, h

    def get(self, key: str, example: Optional[str] = None) -> torch.Tensor:
        """One slice of the store: uint8 ``(3, H, W)``.

        Raises:
            MissingImageError: no such key.
            UnreadableStoreError: the bytes cannot be read (named with the key and ``example``).
        """
        self._file()
        if key not in self.index:
            raise self._missing(key)
        row = self.index[key]
        h, w = (int(v) for v in self._shapes[row])
        start = int(self._off[row])
        try:
            flat = self._pixels[start:start + h * w * 3]
        except OSError as err:
            raise UnreadableStoreError(f"{self.path}: image {key!r}{f' (used by {example})' if example else ''}: bytes "
                                       f"{start}..{start + h * w * 3 - 1} cannot be read ({' '.join(str(err).split())}); "
                                       "the file is damaged") from None
        return torch.from_numpy(np.ascontiguousarray(flat.reshape(h, w, 3).transpose(2, 0, 1)))

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __repr__(self) -> str:
        return f"ImageStore({str(self.path)!r}, {self.transform})"


def open_images(path: str | os.PathLike, transform: ImageTransform = ImageTransform(),
                cache_dir: Optional[str | os.PathLike] = None) -> ImageSource:
    """``ImageStore`` for a file, ``ImageFolder`` for a folder.

    Example:
        >>> open_images("data/demo/images.h5", ImageTransform(128))   # doctest: +SKIP
        ImageStore('data/demo/images.h5', ...)

    Raises:
        FileNotFoundError: ``path`` does not exist.
        StoreError: a file that is not an image store of this rule (see ``ImageStore``).
    """
    path = Path(path)
    if path.is_dir():
        return ImageFolder(path, transform, cache_dir)
    if path.is_file():
        return ImageStore(path, transform)
    raise FileNotFoundError(f"images {path} do not exist: expected a folder of image files or an image store (.h5)")
