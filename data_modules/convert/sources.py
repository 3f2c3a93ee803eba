"""Readers of the public region-feature formats (docs/real-data.md, "Region-feature sources"), one record per image.

Every reader streams (one image, or one small block of an HDF5 file, in memory at a time) and
yields ``Record``s in a deterministic order, which is what makes a conversion resumable. A record
that cannot be decoded (bad base64, a short line, an unreadable npz) comes back with ``error`` set,
so the converter reports it by id and goes on. ``skip(raw_id, where)`` is asked before the heavy
decoding, so a resumed run passes over finished images cheaply.
"""
from __future__ import annotations

import base64
import binascii
import csv
import glob
import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np

from ..jsonl import read_json

Skip = Callable[[str, str], bool]


@dataclass
class Record:
    """One image as read from a source. Boxes are either pixel ``x1, y1, x2, y2`` (``boxes``) or
    divided by the image size (``norm_boxes``); ``width``/``height`` are None when the source does
    not say. ``nbb``: the number of leading regions the source's own box policy keeps (UNITER's
    nbb json), overriding the confidence rule. ``soft_labels`` (n, C): each region's class
    distribution where the source has one (UNITER's img_db, npz with ``soft_labels``)."""

    id: str
    where: str
    features: np.ndarray | None = None
    boxes: np.ndarray | None = None
    norm_boxes: np.ndarray | None = None
    conf: np.ndarray | None = None
    soft_labels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    nbb: int | None = None
    error: str | None = None
    skipped: bool = False
    advance: int = 1  # progress units (images, or bytes for TSV)


def expand_sources(patterns: list[str], suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Paths named by ``patterns`` (files, folders, globs), in a stable order; a folder gives its
    files ending in ``suffixes`` when those are given, else itself."""
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise FileNotFoundError(f"--src {pattern}: no such file or folder")
        for m in matches:
            p = Path(m)
            if p.is_dir() and suffixes:
                found = sorted(q for q in p.iterdir() if q.is_file() and q.name.endswith(suffixes))
                if not found:
                    raise FileNotFoundError(f"--src {p}: folder has no files ending in {' or '.join(suffixes)}")
                out.extend(found)
            else:
                out.append(p)
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def _int(text: str, name: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"{name} = {text!r} is not an integer")
    return int(value)


# --------------------------------------------------------------------------------------------- TSV

BUTD_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
LXMERT_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                 "num_boxes", "boxes", "features")
_ROLES = {
    "id": ("image_id", "img_id"),
    "width": ("image_w", "img_w", "width"),
    "height": ("image_h", "img_h", "height"),
    "num_boxes": ("num_boxes",),
    "boxes": ("boxes",),
    "features": ("features",),
    "conf": ("objects_conf", "conf", "confidence"),
}
TSV_FIELD_LIMIT = 1 << 30  # one line holds 100 x 2048 base64 floats (~1.1 MB); csv allows 128 KB


def tsv_roles(fields: tuple[str, ...]) -> dict[str, int]:
    """Column index of each role in ``fields``; the id, size, num_boxes, boxes and features are required."""
    roles = {}
    for role, names in _ROLES.items():
        hits = [i for i, f in enumerate(fields) if f in names]
        if len(hits) > 1:
            raise ValueError(f"TSV fields {list(fields)} name the {role} twice")
        if hits:
            roles[role] = hits[0]
        elif role != "conf":
            raise ValueError(f"TSV fields {list(fields)} lack the {role} column (one of {list(names)})")
    return roles


def _b64(text: str, dtype, name: str) -> np.ndarray:
    """A base64 column as a flat array; ``dtype`` an int n: float64 if it holds n of them, else float32."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"column {name} is not valid base64") from None
    if isinstance(dtype, int):  # confidences: float64 in UNITER's intermediate, float32 in LXMERT's
        dtype = np.float64 if len(raw) == 8 * dtype else np.float32
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise ValueError(f"column {name} decodes to {len(raw)} bytes, not a whole number of {np.dtype(dtype).name}")
    return np.frombuffer(raw, dtype=dtype)


class TsvSource:
    """bottom-up-attention TSV files (peteanderson80/bottom-up-attention ``tools/generate_tsv.py``;
    LXMERT's ``src/utils.py``), several files into one store.

    Columns come from ``fields`` or, per file, from a header line (first cell ``image_id`` or
    ``img_id``) or from the column count: 6 = BUTD (``image_w`` before ``image_h``), 10 = LXMERT
    (``img_h`` before ``img_w``). A 6-column file with height first needs ``fields``; the converter
    stops early if boxes only fit with width and height swapped. ``objects_conf``/``confidence``
    columns (float32 or float64, told apart by length) give the confidences for box selection.
    """

    name = "tsv"
    unit = "B"

    def __init__(self, paths: list[Path], fields: tuple[str, ...] | None = None):
        self.paths = paths
        self.fields = tuple(fields) if fields else None
        if self.fields:
            tsv_roles(self.fields)
        if csv.field_size_limit() < TSV_FIELD_LIMIT:
            csv.field_size_limit(TSV_FIELD_LIMIT)  # an explicit int: sys.maxsize overflows on Windows

    def total(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def settings(self) -> dict:
        return {"tsv_fields": list(self.fields) if self.fields else "auto"}

    def records(self, skip: Skip) -> Iterator[Record]:
        for path in self.paths:
            yield from self._file(path, skip)

    def _file(self, path: Path, skip: Skip) -> Iterator[Record]:
        fields = self.fields
        roles = tsv_roles(fields) if fields else None
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{path}:{lineno}"
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    yield Record(id="", where=where, skipped=True, advance=len(raw))
                    continue
                try:
                    cells = next(csv.reader([line.decode("utf-8")], delimiter="\t"))
                except (UnicodeDecodeError, csv.Error) as err:
                    yield Record(id=f"<line {lineno}>", where=where, advance=len(raw),
                                 error=f"line is not a readable TSV row ({err})")
                    continue
                if lineno == 1 and self.fields is None and cells[0] in ("image_id", "img_id"):
                    fields = tuple(cells)  # a header line names the columns
                    try:
                        roles = tsv_roles(fields)
                    except ValueError as err:
                        raise ValueError(f"{where}: header {err}") from None
                    yield Record(id="", where=where, skipped=True, advance=len(raw))
                    continue
                if roles is None:
                    guess = {len(BUTD_FIELDS): BUTD_FIELDS, len(LXMERT_FIELDS): LXMERT_FIELDS}.get(len(cells))
                    if guess is None:
                        raise ValueError(f"{where}: {len(cells)} tab-separated columns; expected 6 (BUTD: "
                                         f"{','.join(BUTD_FIELDS)}) or 10 (LXMERT: {','.join(LXMERT_FIELDS)}), "
                                         "or name them with --tsv-fields")
                    fields, roles = guess, tsv_roles(guess)
                yield self._record(cells, fields, roles, where, len(raw), skip)

    @staticmethod
    def _record(cells, fields, roles, where, advance, skip: Skip) -> Record:
        if len(cells) != len(fields):
            first = cells[roles["id"]] if len(cells) > roles["id"] else f"<{where}>"
            return Record(id=first, where=where, advance=advance,
                          error=f"{len(cells)} columns, expected {len(fields)} ({','.join(fields)})")
        img_id = cells[roles["id"]]
        if skip(img_id, where):
            return Record(id=img_id, where=where, skipped=True, advance=advance)
        rec = Record(id=img_id, where=where, advance=advance)
        try:
            n = _int(cells[roles["num_boxes"]], "num_boxes")
            rec.width = _int(cells[roles["width"]], fields[roles["width"]])
            rec.height = _int(cells[roles["height"]], fields[roles["height"]])
            boxes = _b64(cells[roles["boxes"]], np.float32, "boxes")
            feats = _b64(cells[roles["features"]], np.float32, "features")
            if boxes.size != 4 * n:
                raise ValueError(f"boxes hold {boxes.size} floats, expected num_boxes * 4 = {4 * n}")
            if n == 0 or feats.size % n:
                raise ValueError(f"features hold {feats.size} floats, not a multiple of num_boxes = {n}"
                                 if n else "num_boxes is 0: no regions")
            rec.boxes, rec.features = boxes.reshape(n, 4), feats.reshape(n, -1)
            if "conf" in roles:
                rec.conf = _b64(cells[roles["conf"]], n, fields[roles["conf"]])
        except ValueError as err:
            rec.error = str(err)
        return rec


# -------------------------------------------------------------------------------- BUTD / BAN HDF5


class _RefusingUnpickler(pickle.Unpickler):
    """Builds only plain Python values (a dict of ints needs no classes); refuses every global."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_imgid2idx(path: Path) -> dict[str, int]:
    """``image_id -> row`` from a ``*_imgid2idx.pkl`` (read without running code: a dict of int
    to int only) or its JSON equivalent (``{"42": 0, ...}``)."""
    if path.suffix == ".json":
        mapping = read_json(path, "an image-id mapping (JSON {\"image_id\": row})")
    else:
        try:
            with open(path, "rb") as f:
                mapping = _RefusingUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise ValueError(f"{path}: not a readable image-id mapping ({err}); expected a pickled dict of int -> int "
                             "(or JSON {\"image_id\": row}); convert one holding numpy ints to JSON first") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{path}: expected a non-empty dict image_id -> row, got {type(mapping).__name__}")
    out = {}
    for k, v in mapping.items():
        key_ok = isinstance(k, int) and not isinstance(k, bool) or isinstance(k, str) and k != ""
        if not key_ok or not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{path}: entry {k!r}: {v!r} is not image_id -> non-negative int row")
        out[str(k)] = v
    if len(set(out.values())) != len(out):
        raise ValueError(f"{path}: several image ids map to the same row")
    if len(out) != len(mapping):
        raise ValueError(f"{path}: image ids repeat once written as strings (e.g. 42 and '42')")
    return out


def find_imgid2idx(h5_path: Path) -> Path:
    """The mapping next to ``train36.hdf5`` (``train36_imgid2idx.pkl``) or ``train.hdf5``."""
    for suffix in (".pkl", ".json"):
        candidate = h5_path.with_name(f"{h5_path.stem}_imgid2idx{suffix}")
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{h5_path}: no {h5_path.stem}_imgid2idx.pkl or .json next to it; "
                            "name the image-id mapping with --imgid2idx")


class ButdH5Source:
    """bottom-up-attention-vqa (fixed 36: ``image_features`` (N, 36, D)) and ban-vqa (adaptive:
    flat ``image_features`` (rows, D) + ``pos_boxes`` (N, 2) row ranges) HDF5 files, with the
    ``*_imgid2idx`` mapping (hengyuan-hu/bottom-up-attention-vqa
    ``tools/detection_features_converter.py``, jnhwkim/ban-vqa
    ``tools/adaptive_detection_features_converter.py``). Image sizes are recovered from ``image_bb``
    (pixels) over ``spatial_features`` (normalised); without ``spatial_features`` they must be
    given (``--image-sizes``)."""

    name = "butd-h5"
    unit = "img"
    BLOCK = 64       # images per read (fixed layout)
    BLOCK_ROWS = 4096  # regions per read (adaptive layout)

    def __init__(self, paths: list[Path], imgid2idx: Path | None = None):
        if imgid2idx is not None and len(paths) != 1:
            raise ValueError("--imgid2idx names the mapping of one HDF5 file; give one --src, or put "
                             "<stem>_imgid2idx.pkl next to each file")
        self.paths = paths
        self.mappings = [imgid2idx or find_imgid2idx(p) for p in paths]
        self._maps = [load_imgid2idx(m) for m in self.mappings]
        self.dims = []
        for p, mapping in zip(paths, self._maps):
            with h5py.File(p, "r") as f:
                self.dims.append(self._check(p, f, mapping))

    @staticmethod
    def _check(path: Path, f: h5py.File, mapping: dict[str, int]) -> int:
        for name in ("image_features", "image_bb"):
            if name not in f:
                raise ValueError(f"{path}: no dataset {name!r}; expected a bottom-up-attention-vqa / ban-vqa file "
                                 f"(image_features, image_bb, spatial_features[, pos_boxes]); it has {sorted(f)}")
        feats, bb = f["image_features"], f["image_bb"]
        if "pos_boxes" in f:
            n_img = len(f["pos_boxes"])
            if feats.ndim != 2 or bb.shape != (feats.shape[0], 4) or f["pos_boxes"].shape != (n_img, 2):
                raise ValueError(f"{path}: adaptive layout expects image_features (rows, D), image_bb (rows, 4), "
                                 f"pos_boxes (images, 2); got {feats.shape}, {bb.shape}, {f['pos_boxes'].shape}")
        else:
            n_img = feats.shape[0]
            if feats.ndim != 3 or bb.shape != (*feats.shape[:2], 4):
                raise ValueError(f"{path}: fixed layout expects image_features (images, boxes, D) and image_bb "
                                 f"(images, boxes, 4); got {feats.shape}, {bb.shape}")
        if "spatial_features" in f and f["spatial_features"].shape != (*bb.shape[:-1], 6):
            raise ValueError(f"{path}: spatial_features have shape {f['spatial_features'].shape}, "
                             f"expected {(*bb.shape[:-1], 6)}")
        top = max(mapping.values())
        if top >= n_img:
            raise ValueError(f"{path}: the image-id mapping points at row {top}, but the file has {n_img} images")
        return int(feats.shape[-1])

    def total(self) -> int:
        return sum(len(m) for m in self._maps)

    def settings(self) -> dict:
        return {"imgid2idx": [str(m) for m in self.mappings]}

    def records(self, skip: Skip) -> Iterator[Record]:
        for path, mapping in zip(self.paths, self._maps):
            with h5py.File(path, "r") as f:
                yield from self._file(path, f, mapping, skip)

    def _file(self, path: Path, f: h5py.File, mapping: dict[str, int], skip: Skip) -> Iterator[Record]:
        adaptive = "pos_boxes" in f
        pos = f["pos_boxes"][:] if adaptive else None
        spatial = f["spatial_features"] if "spatial_features" in f else None
        names = ("image_features", "image_bb") + (("spatial_features",) if spatial is not None else ())
        window: tuple[int, int, list[np.ndarray]] | None = None
        for img_id, row in sorted(mapping.items(), key=lambda kv: kv[1]):
            where = f"{path}#{row}"
            if skip(img_id, where):
                yield Record(id=img_id, where=where, skipped=True)
                continue
            if adaptive:
                start, end = int(pos[row, 0]), int(pos[row, 1])
                if not 0 <= start <= end <= len(f["image_features"]):
                    yield Record(id=img_id, where=where, error=f"pos_boxes [{start}, {end}) is not a row range of "
                                 f"image_features ({len(f['image_features'])} rows)")
                    continue
                limit, block = len(f["image_features"]), self.BLOCK_ROWS
            else:
                start, end, limit, block = row, row + 1, f["image_features"].shape[0], self.BLOCK
            if window is None or not (window[0] <= start and end <= window[1]):
                hi = min(limit, max(end, start + block))
                window = (start, hi, [f[n][start:hi] for n in names])
            lo = window[0]
            arrays = [a[start - lo:end - lo] for a in window[2]]
            if not adaptive:
                arrays = [a[0] for a in arrays]
            rec = Record(id=img_id, where=where, features=arrays[0], boxes=arrays[1])
            if spatial is not None:
                try:
                    rec.width, rec.height = size_from_spatial(arrays[1], arrays[2])
                except ValueError as err:
                    rec.error = str(err)
            yield rec


def size_from_spatial(boxes: np.ndarray, spatial: np.ndarray) -> tuple[int, int]:
    """Image ``(width, height)`` from pixel boxes and the same boxes divided by the size."""
    boxes, spatial = np.asarray(boxes, np.float64), np.asarray(spatial, np.float64)
    if len(boxes) == 0 or not (np.isfinite(boxes).all() and np.isfinite(spatial).all()):
        raise ValueError("image size cannot be recovered: no regions, or NaN/inf in image_bb / spatial_features")
    size = []
    for col in (2, 3):  # x2 / (x2 / W): the largest coordinate gives the most precise ratio
        i = int(np.argmax(spatial[:, col]))
        if spatial[i, col] <= 0:
            raise ValueError("image size cannot be recovered: spatial_features x2/y2 are not positive")
        size.append(int(round(boxes[i, col] / spatial[i, col])))
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size recovered from image_bb / spatial_features is {w} x {h}, not positive")
    expected = boxes[:, :4] / np.array([w, h, w, h])
    if not np.allclose(expected, spatial[:, :4], rtol=1e-3, atol=1e-3):
        raise ValueError(f"spatial_features disagree with image_bb divided by the recovered size {w} x {h}")
    return w, h


# ------------------------------------------------------------------------------------ UNITER img_db

_NBB_RE = re.compile(r"^feat_th(?P<th>[-0-9.]+)_max(?P<max>\d+)_min(?P<min>\d+)$")
_NUMBB_RE = re.compile(r"^feat_numbb(?P<num>\d+)$")


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"reading UNITER img_db needs the {module!r} package: pip install lmdb msgpack") from None


IMG_DB_EXPECTED = ("UNITER's img_db folder (e.g. img_db/nlvr2_dev, holding one LMDB sub-folder such as "
                   "feat_th0.2_max100_min10/ with data.mdb) or that LMDB folder itself")


def find_lmdb_env(src: Path) -> Path:
    """The LMDB environment folder: ``src`` itself (holds ``data.mdb``) or its only such sub-folder."""
    src = Path(src)
    if not src.exists():
        raise ValueError(f"--src {src}: no such folder; expected {IMG_DB_EXPECTED}")
    if src.is_file():
        hint = (f" (the LMDB folder is {src.parent})" if src.name == "data.mdb" else "")
        raise ValueError(f"--src {src} is a file, not an LMDB folder{hint}; expected {IMG_DB_EXPECTED}")
    if (src / "data.mdb").is_file():
        return src
    envs = sorted(p for p in src.iterdir() if p.is_dir() and (p / "data.mdb").is_file())
    if len(envs) != 1:
        if envs:
            raise ValueError(f"--src {src}: {len(envs)} LMDB sub-folders ({', '.join(p.name for p in envs)}); "
                             "name one of them as --src")
        files = sorted(p.name for p in src.iterdir())
        shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "") if files else "nothing"
        raise ValueError(f"--src {src} is not an LMDB img_db: no data.mdb in it or in a sub-folder (it holds {shown}); "
                         f"expected {IMG_DB_EXPECTED}")
    return envs[0]


def env_box_policy(env: Path) -> tuple[float, int, int] | None:
    """``(conf_th, min_boxes, max_boxes)`` encoded in a UNITER env name (``numbb36`` = fixed: th -1)."""
    name = env.name.removesuffix("_compressed")
    if m := _NBB_RE.match(name):
        return float(m["th"]), int(m["min"]), int(m["max"])
    if m := _NUMBB_RE.match(name):
        return -1.0, int(m["num"]), int(m["num"])
    return None


def _msgpack_numpy_hook(obj: dict):
    """Arrays encoded the msgpack-numpy way (``{nd, type, kind, shape, data}``), without pickle."""
    get = lambda k: obj.get(k.encode(), obj.get(k))  # noqa: E731  (keys are bytes or str)
    nd = get("nd")
    if nd is None or get("data") is None:
        return obj
    kind, descr = get("kind") or b"", get("type")
    if kind in (b"O", "O", b"V", "V") or not isinstance(descr, (str, bytes)):
        raise ValueError("msgpack value holds an object or structured array; only plain numeric arrays are read")
    dtype = np.dtype(descr.decode() if isinstance(descr, bytes) else descr)
    data = np.frombuffer(get("data"), dtype=dtype)
    return data.reshape(tuple(get("shape"))) if nd is True else data[0]


def decode_img_db_value(value: bytes, compressed: bool, msgpack=None) -> dict[str, np.ndarray]:
    """One img_db value: compressed envs hold ``np.savez_compressed`` bytes, the others msgpack."""
    if compressed:
        with np.load(io.BytesIO(value), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    msgpack = msgpack or _require("msgpack")
    out = msgpack.unpackb(value, raw=False, object_hook=_msgpack_numpy_hook)
    if not isinstance(out, dict):
        raise ValueError(f"value decodes to a {type(out).__name__}, expected a dict of arrays")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in out.items()}


class ImgDbSource:
    """UNITER's LMDB img_db (ChenRocks/UNITER ``scripts/convert_imgdir.py``,
    ``data/data.py:DetectFeatLmdb``): keys = npz file names,
    values = ``{features, norm_bb, conf, soft_labels}`` (float16, all four read) as msgpack, or npz
    bytes in a ``*_compressed`` env (told by the folder name, never by sniffing). ``nbb_*.json`` next to the
    env, when its policy is the one in use, gives each image's nbb exactly as UNITER reads it
    (recomputing from float16 ``conf`` can differ at the threshold). Boxes are normalised: the
    image sizes come from ``--image-sizes`` (or are declared unknown)."""

    name = "img-db"
    unit = "img"

    def __init__(self, paths: list[Path], policy: tuple[float, int, int]):
        self.lmdb = _require("lmdb")
        self.msgpack = _require("msgpack")
        self.envs = [find_lmdb_env(p) for p in paths]
        self._entries = []
        for env in self.envs:  # a data.mdb that LMDB cannot open is named here, not mid-conversion
            try:
                with self._open(env) as e:
                    self._entries.append(e.stat()["entries"])
            except self.lmdb.Error as err:
                raise ValueError(f"--src {env}: not a readable LMDB environment ({' '.join(str(err).split())}); "
                                 f"expected {IMG_DB_EXPECTED}") from None
        self.nbb: list[dict[str, int] | None] = []
        for env in self.envs:
            table = None
            if env_box_policy(env) == policy:
                js = env.parent / ("nbb" + env.name.removesuffix("_compressed")[len("feat"):] + ".json")
                if js.exists():
                    table = read_json(js, "UNITER's nbb json (a dict npz name -> number of boxes)")
                    if not isinstance(table, dict):
                        raise ValueError(f"{js}: expected a dict npz name -> number of boxes")
            self.nbb.append(table)

    def _open(self, env: Path):
        return self.lmdb.open(str(env), readonly=True, lock=False, readahead=False, subdir=True, max_readers=1)

    def total(self) -> int:
        return sum(self._entries)

    def settings(self) -> dict:
        return {"lmdb": [str(e) for e in self.envs], "nbb_json": [t is not None for t in self.nbb]}

    def records(self, skip: Skip) -> Iterator[Record]:
        for env_path, table in zip(self.envs, self.nbb):
            compressed = env_path.name.endswith("_compressed")
            try:
                with self._open(env_path) as env, env.begin() as txn:
                    for raw_key, value in txn.cursor():
                        key = raw_key.decode("utf-8", errors="replace")
                        where = f"{env_path}[{key}]"
                        if key == "__keys__" or skip(key, where):
                            yield Record(id=key, where=where, skipped=True)
                            continue
                        yield self._record(key, where, value, compressed, table)
            except self.lmdb.Error as err:
                raise ValueError(f"{env_path}: the LMDB environment cannot be read on "
                                 f"({' '.join(str(err).split())}); is data.mdb damaged?") from None

    def _record(self, key, where, value, compressed, table) -> Record:
        rec = Record(id=key, where=where)
        try:
            arrays = decode_img_db_value(value, compressed, self.msgpack)
            missing = [k for k in ("features", "norm_bb") if k not in arrays]
            if missing:
                raise ValueError(f"value lacks {missing}; has {sorted(arrays)}")
            rec.features = arrays["features"]
            rec.norm_boxes = np.asarray(arrays["norm_bb"])
            if rec.norm_boxes.ndim == 2 and rec.norm_boxes.shape[1] in (4, 6):
                rec.norm_boxes = rec.norm_boxes[:, :4]
            if "conf" in arrays:
                rec.conf = np.asarray(arrays["conf"]).reshape(-1)
            if "soft_labels" in arrays:
                rec.soft_labels = np.asarray(arrays["soft_labels"])
            if table is not None and key in table:
                rec.nbb = int(table[key])
        except Exception as err:  # any decoding failure is this record's, reported by id
            rec.error = f"value cannot be decoded ({type(err).__name__}: {err})"
        return rec


# ---------------------------------------------------------------------------------------- npz files

_NPZ_FEATURES = ("features", "x", "feat")
_NPZ_BOXES = ("boxes", "bbox", "bboxes")
_NPZ_CONF = ("conf", "objects_conf", "confidence")
_NPZ_SIZES = (("image_w", "image_h"), ("width", "height"), ("img_w", "img_h"))


class NpzSource:
    """One ``.npz`` per image (UNITER's extractor output, OpenVQA, bua; docs/real-data.md):
    features ``features``/``x``/``feat`` (OpenVQA's channel-first ``x`` (D, N) is transposed, told
    by the box count), boxes ``boxes``/``bbox``/``bboxes`` in pixels or ``norm_bb`` normalised,
    optional ``conf``/``objects_conf``, ``soft_labels`` (n, C) class distributions (UNITER's
    extractor), size ``image_w``/``image_h`` or ``width``/``height`` (or ``--image-sizes``). Loaded
    with ``allow_pickle=False``; the id is the file name."""

    name = "npz"
    unit = "img"

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def total(self) -> int:
        return len(self.paths)

    def settings(self) -> dict:
        return {}

    def records(self, skip: Skip) -> Iterator[Record]:
        for path in self.paths:
            where = str(path)
            if skip(path.name, where):
                yield Record(id=path.name, where=where, skipped=True)
                continue
            yield self._record(path)

    @staticmethod
    def _record(path: Path) -> Record:
        rec = Record(id=path.name, where=str(path))
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                fkey = next((k for k in _NPZ_FEATURES if k in keys), None)
                bkey = next((k for k in (*_NPZ_BOXES, "norm_bb") if k in keys), None)
                if fkey is None or bkey is None:
                    raise ValueError(f"needs features ({'/'.join(_NPZ_FEATURES)}) and boxes "
                                     f"({'/'.join(_NPZ_BOXES)}/norm_bb); has {sorted(keys)}")
                feats, boxes = np.asarray(npz[fkey]), np.asarray(npz[bkey])
                if bkey == "norm_bb":
                    rec.norm_boxes = boxes[:, :4] if boxes.ndim == 2 and boxes.shape[1] in (4, 6) else boxes
                else:
                    rec.boxes = boxes
                n = len(boxes)
                if fkey == "x" and feats.ndim == 2 and feats.shape[0] != n and feats.shape[1] == n:
                    feats = feats.T  # OpenVQA's VQA features are stored channel-first
                rec.features = feats
                ckey = next((k for k in _NPZ_CONF if k in keys), None)
                if ckey is not None:
                    rec.conf = np.asarray(npz[ckey]).reshape(-1)
                if "soft_labels" in keys:
                    rec.soft_labels = np.asarray(npz["soft_labels"])
                for wk, hk in _NPZ_SIZES:
                    if wk in keys and hk in keys:
                        rec.width = _int(str(np.asarray(npz[wk]).item()), wk)
                        rec.height = _int(str(np.asarray(npz[hk]).item()), hk)
                        break
        except (ValueError, OSError, zipfile.BadZipFile, KeyError, EOFError) as err:
            rec.error = f"npz cannot be read ({type(err).__name__}: {err})"
        return rec
