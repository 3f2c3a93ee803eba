"""Convert public region-feature files into the project's HDF5 store (``make features``).

Sources (``--format``; docs/real-data.md, "Region-feature sources"):

* ``tsv``     bottom-up-attention TSV (BUTD ``image_id, image_w, image_h, num_boxes, boxes, features``;
              LXMERT ``img_id, img_h, img_w, ...``), several files or a glob into one store.
* ``butd-h5`` bottom-up-attention-vqa ``train36.hdf5`` (fixed 36) or ban-vqa ``train.hdf5``
              (adaptive, ``pos_boxes``), each with its ``*_imgid2idx.pkl`` (or ``.json``).
* ``img-db``  UNITER's LMDB img_db folder (``pip install lmdb msgpack``).
* ``npz``     a folder of one ``.npz`` per image.

Every record is checked (feature dimension, boxes vs feature rows, finite values, boxes inside
the image, at least one region). A bad record is written to the report (JSON lines ``{"id",
"key", "where", "reason"}``, default ``OUT.report.jsonl``) and skipped; the others are converted.
Each finished run appends one ``{"summary": ...}`` line: counts, every rejection kind with its
count and one reason quoted verbatim, and the box selection. A run that converts no image
writes no store (exit status 1; the report says why).
Boxes that stick out of the image by at most ``--box-tol`` of its side (default 1 %, e.g. a
detector's float rounding) are clipped to it and counted; further out, or with zero width or
height, the image is rejected.

Box selection: by default every region of the source is kept (fixed-box features such as
LXMERT's 36 per image stay as they are). UNITER's rule (``_compute_nbb``) is applied only when
asked, ``--conf-th 0.2 --min-boxes 10 --max-boxes 100``: where the source has confidences, keep
``nbb = min(max_boxes, max(min_boxes, #(conf > conf_th)))`` regions, the most confident ones,
in source order (UNITER truncates its confidence-sorted npz to the first nbb: the same regions;
BUTD's adaptive output is not sorted, so "first nbb" would be wrong there); ``--min-boxes`` /
``--max-boxes`` default to UNITER's 10 / 100 once ``--conf-th`` is given. ``--conf-th -1``: keep
the first ``--max-boxes`` (UNITER's fixed ``numbb`` policy). Sources without confidences (BUTD
TSV, the HDF5 layouts) keep every region under a threshold (their extractor selected); ``-1``
still caps them at ``--max-boxes``. UNITER
img_db envs are named after the policy they were made for (``feat_th0.2_max100_min10``,
``feat_numbb36``): that policy is the default for them, with the ``nbb_*.json`` next to the env
used as is (``--conf-th none`` keeps every region instead). What the selection drops (regions in
and out, images affected) is printed at the end and written to the report's summary line.

Soft labels: where the source has each region's class distribution (UNITER's img_db values and
npz files with a ``soft_labels`` array, (n, C); UNITER's detector has 1,601 Visual Genome classes,
0 = background) they are kept in the store's ``soft_labels`` (what masked region classification
learns from) with the same box selection as the features; ``--no-soft-labels`` leaves them out,
``--soft-label-names FILE`` (a JSON list, or one name per line) names the C classes. A store
holds them for every image or none: the first image converted decides, a later record without
them is rejected (reported), and the summary says whether they were kept.

Store keys (``--key-format``, fields ``{id}`` the source's id, ``{stem}`` the id without
``.npz``/``.npy`` and image extensions and without ``--strip-prefix``, ``{num}`` the last number
in the stem as an int, so ``{num:012d}`` re-pads). What the task data modules look up:

=========  =============================  ==================================  ==========================================
task       store key                      source                              flags
=========  =============================  ==================================  ==========================================
NLVR2      ``dev-850-0-img0``             UNITER ``img_db/nlvr2_dev``         ``--strip-prefix nlvr2_``
                                          LXMERT ``nlvr2_imgfeat/*.tsv``      (default ``{stem}``)
VQA        ``str(image_id)``: ``42``      BUTD TSV / butd-h5                  (default)
                                          LXMERT ``COCO_val2014_000...42``    ``--key-format {num}``
                                          UNITER ``coco_val2014_000...42.npz`` ``--key-format {num}``
                                          OpenVQA ``COCO_..._000...42.jpg.npz`` ``--key-format {num}``
GQA        ``imageId``: ``2375429``       LXMERT ``vg_gqa_obj36.tsv``         (default)
RefCOCO+   COCO ``image_id``              UNITER ``re_coco_gt`` / ``_det``    ``--key-format {num}`` and ``--image-sizes``
                                                                              COCO ``instances.json`` (pixels needed)
SNLI-VE,   Flickr30k id ``1000092795``    UNITER ``img_db/flickr30k``         ``--strip-prefix flickr30k_``
Flickr30k  (file name stem)               BUTD TSV                            (default)
=========  =============================  ==================================  ==========================================

The data modules' defaults (``image_key``): VQA/GQA/RefCOCO+ ``{image_id}``, SNLI-VE
``{flickr_id}``, Flickr30k ``{stem}`` of the Karpathy file name, NLVR2 ``{stem}-img{side}``, VCR
``{img_id}``. VCR needs the ground-truth boxes first, then the detected ones, in one store entry:
UNITER's ``vcr_gt_*`` and ``vcr_*`` dbs are two sources per image, which this converter does not
merge. When in doubt, ``RegionFeatureStore(path).ids[:5]`` shows the keys.

Image sizes: TSV and npz carry them, butd-h5 recovers them from ``image_bb`` / ``spatial_features``.
Normalised sources (img_db, npz ``norm_bb``) need ``--image-sizes`` (JSON ``{key: [w, h]}`` or
``{key: {"width", "height"}}`` or a COCO file with ``images: [{id, width, height, file_name}]``),
or ``--unknown-size``: sizes are stored as 1 x 1 (boxes stay normalised) — fine for every task
except RefCOCO+, which maps regions back to pixels.

Resuming: the store is written to ``.OUT.partial`` next to OUT and moved into place only when
complete. Rerunning the same command after an interruption continues there (images already in
it and records already reported are skipped); other settings than the interrupted run's are
refused (``--restart`` starts over). An existing OUT is only replaced with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..features import partial_path
from ..image_keys import ImageKeyPattern
from ..jsonl import read_json
from . import sources as S
from .writer import RegionFeatureWriter

FORMATS = ("tsv", "butd-h5", "img-db", "npz")
UNITER_POLICY = (0.2, 10, 100)  # conf_th, min_boxes, max_boxes: UNITER's rule, applied only when asked
KEEP_ALL = "none"  # --conf-th none: every region, even where an img_db env names a policy
SHOWN_REASONS = 10  # rejection kinds printed at the end (the report's summary line has all)
_STRIP_EXT = (".npz", ".npy", ".jpg", ".jpeg", ".png")
_KEY_FIELDS = {"id": "x_1.npz", "stem": "x_1", "num": 1}  # --key-format fields with sample values
_SWAP_HINT = "width and height look swapped"

CLI_DESCRIPTION = __doc__


class ConvertError(RuntimeError):
    """The conversion as a whole cannot go on (not one bad record: those are reported)."""


class SourceError(ConvertError, ValueError):
    """A source cannot be read on (a TSV with an unknown column count, an unreadable file)."""


class NothingConverted(ConvertError):
    """Every record was rejected (or there were none): no store was written; ``summary`` says why."""

    def __init__(self, message: str, summary: "ConvertSummary"):
        super().__init__(message)
        self.summary = summary


class Reject(ValueError):
    """This record is skipped and reported."""


_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")
_QUOTED = re.compile(r"""(?<!\w)'[^'\n]{0,200}?'(?!\w)|(?<!\w)"[^"\n]{0,200}?"(?!\w)""")


def reason_kind(reason: str, prefix: str = "") -> str:
    """The group a rejection reason is counted in: numbers and quoted values replaced by ``#`` and
    ``'...'``, whitespace (newlines too) collapsed, a leading ``prefix`` (the writer's
    ``"<store>: image '<key>'"``) dropped; never cut short."""
    text = " ".join(reason.split())
    if prefix and text.startswith(prefix):
        text = text[len(prefix):].lstrip(": ")
    text = _QUOTED.sub("'...'", text)
    return _NUMBER.sub("#", text) or "(no reason given)"


def _quote(text: str) -> str:
    """One line, quotes and newlines escaped: json.dumps keeps the reason exact and readable."""
    return json.dumps(text, ensure_ascii=False)


@dataclass
class ConvertSummary:
    out: Path
    report: Path
    feat_dim: int
    converted: int = 0       # images added in this run
    resumed: int = 0         # images found in the unfinished store
    rejected: int = 0        # records reported in this run
    clipped_boxes: int = 0   # boxes moved inside the image (within --box-tol)
    dropped_boxes: int = 0   # regions left out by box selection (images converted in this run)
    reasons: dict[str, int] = field(default_factory=dict)  # reason kind -> records (see reason_kind)
    reason_examples: dict[str, tuple[str, str]] = field(default_factory=dict)  # kind -> first (reason, where)
    selection: str = "none: every region kept"  # the box selection in use, in words
    boxes_in: int = 0        # source regions of the images converted in this run
    boxes_out: int = 0       # regions written for them
    thinned_images: int = 0  # images that lost regions to the selection
    thinned_examples: list[tuple[str, int, int]] = field(default_factory=list)  # (key, kept, of) for the first few
    source_boxes: tuple[int, int] | None = None  # (min, max) regions per source image converted
    soft_labels: str = "none: the source has no soft labels"  # what became of them, in words
    soft_label_dim: int | None = None  # C when kept
    soft_labels_ignored: int = 0  # records whose soft labels were left out (the first image had none)

    def add_reason(self, reason: str, where: str, prefix: str = "") -> None:
        kind = reason_kind(reason, prefix)
        self.reasons[kind] = self.reasons.get(kind, 0) + 1
        self.reason_examples.setdefault(kind, (reason, where))

    def add_image(self, key: str, n_source: int, n_kept: int) -> None:
        self.boxes_in += n_source
        self.boxes_out += n_kept
        self.dropped_boxes += n_source - n_kept
        if n_kept < n_source:
            self.thinned_images += 1
            if len(self.thinned_examples) < 5:
                self.thinned_examples.append((key, n_kept, n_source))
        lo, hi = self.source_boxes or (n_source, n_source)
        self.source_boxes = (min(lo, n_source), max(hi, n_source))

    def sorted_reasons(self) -> list[tuple[str, int]]:
        """Kinds by count, most frequent first (ties: first seen first)."""
        return sorted(self.reasons.items(), key=lambda kv: -kv[1])

    def line(self) -> str:
        """The one-line summary (counts)."""
        return (f"{self.out}: {self.converted + self.resumed} images ({self.converted} converted now, {self.resumed} "
                f"resumed), {self.rejected} rejected{f' (see {self.report})' if self.rejected else ''}, "
                f"{self.clipped_boxes} boxes clipped into the image, {self.dropped_boxes} regions dropped by box selection")

    def selection_lines(self) -> list[str]:
        lines = [f"box selection: {self.selection}"]
        if not self.converted:
            return lines
        if self.dropped_boxes:
            share = 100 * self.dropped_boxes / max(self.boxes_in, 1)
            shown = ", ".join(f"{k!r} ({kept} of {of})" for k, kept, of in self.thinned_examples)
            lines.append(f"  DROPPED {self.dropped_boxes:,} of {self.boxes_in:,} source regions ({share:.1f} %): "
                         f"{self.boxes_out:,} written; {self.thinned_images:,} of {self.converted:,} images converted now "
                         f"lost regions, e.g. {shown}")
            lo, hi = self.source_boxes
            if lo == hi:
                lines.append(f"  every source image had {lo} regions (fixed-box features?): omit --conf-th to keep "
                             "them all")
        else:
            lines.append(f"  every source region kept ({self.boxes_in:,} regions in {self.converted:,} images)")
        return lines

    def reason_lines(self) -> list[str]:
        if not self.rejected:
            return []
        lines = [f"rejected {self.rejected:,} records ({len(self.reasons)} kinds; every one in {self.report}):"]
        for kind, count in self.sorted_reasons()[:SHOWN_REASONS]:
            reason, where = self.reason_examples[kind]
            lines.append(f"  {count:>7,}  {kind}")
            lines.append(f"           e.g. {where}: {_quote(reason)}")
        if len(self.reasons) > SHOWN_REASONS:
            lines.append(f"  ... and {len(self.reasons) - SHOWN_REASONS} more kinds: see the summary line at the end "
                         f"of {self.report}")
        return lines

    def soft_label_line(self) -> str:
        return f"soft labels: {self.soft_labels}"

    def text(self) -> str:
        """Everything printed at the end of a run: counts, box selection, soft labels, rejection kinds."""
        return "\n".join([self.line(), *self.selection_lines(), self.soft_label_line(), *self.reason_lines()])

    def as_dict(self) -> dict:
        """The report's summary line."""
        return {
            "out": str(self.out), "feat_dim": self.feat_dim, "converted": self.converted, "resumed": self.resumed,
            "rejected": self.rejected, "clipped_boxes": self.clipped_boxes,
            "box_selection": {"policy": self.selection, "regions_in": self.boxes_in, "regions_out": self.boxes_out,
                              "dropped": self.dropped_boxes, "images_affected": self.thinned_images,
                              "examples": [{"key": k, "kept": kept, "of": of} for k, kept, of in self.thinned_examples],
                              "source_regions_per_image": list(self.source_boxes) if self.source_boxes else None},
            "soft_labels": {"kept": self.soft_label_dim is not None, "classes": self.soft_label_dim,
                            "ignored_records": self.soft_labels_ignored, "note": self.soft_labels},
            "reasons": [{"kind": kind, "count": count, "example": self.reason_examples[kind][0],
                         "where": self.reason_examples[kind][1]} for kind, count in self.sorted_reasons()],
            "note": "counts are of this run; images resumed from an interrupted run are not recounted",
        }


class KeyMapper:
    """Source id -> store key (``--key-format``, ``--strip-prefix``)."""

    def __init__(self, key_format: str = "{stem}", strip_prefix: list[str] | tuple[str, ...] = ()):
        self.pattern = ImageKeyPattern(key_format, _KEY_FIELDS, where="--key-format")  # the task modules' check
        used = set(self.pattern.used)
        self.key_format, self.prefixes, self.used = key_format, tuple(strip_prefix), used
        try:
            self("x_1.npz") if "num" in used else self("x")
        except Reject:
            pass  # a prefix that the sample lacks
        except (ValueError, IndexError, KeyError) as err:
            raise ValueError(f"--key-format {key_format!r} cannot be applied ({err})") from None

    def __call__(self, raw_id: str) -> str:
        stem = raw_id
        for ext in _STRIP_EXT:  # COCO_..._42.jpg.npz -> COCO_..._42
            if stem.lower().endswith(ext):
                stem = stem[:-len(ext)]
        if self.prefixes:
            hit = next((p for p in self.prefixes if stem.startswith(p)), None)
            if hit is None:
                raise Reject(f"id does not start with --strip-prefix {' or '.join(map(repr, self.prefixes))}")
            stem = stem[len(hit):]
        num = None
        if "num" in self.used:
            digits = re.findall(r"\d+", stem)
            if not digits:
                raise Reject("id has no number for {num} in --key-format")
            num = int(digits[-1])
        key = self.pattern.format(id=raw_id, stem=stem, num=num)
        if not key:
            raise Reject(f"--key-format {self.key_format!r} gives an empty key")
        return key


def load_image_sizes(path: Path) -> dict[str, tuple[int, int]]:
    """``{key: (width, height)}`` from ``{key: [w, h]}``, ``{key: {"width", "height"}}`` or COCO
    ``{"images": [{"id", "width", "height", "file_name"}]}`` (keyed by id and file stem)."""
    data = read_json(path, "an image-size file (JSON {key: [w, h]}, {key: {width, height}} or COCO "
                           "{images: [{id, width, height, file_name}]})")
    out: dict[str, tuple[int, int]] = {}

    def size(where, w, h):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
            raise ValueError(f"{path}: {where}: size {w!r} x {h!r} is not two positive integers")
        return int(w), int(h)

    if isinstance(data, dict) and isinstance(data.get("images"), list):
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not {"id", "width", "height"} <= set(img):
                raise ValueError(f"{path}: images[{i}] lacks id/width/height")
            wh = size(f"images[{i}]", img["width"], img["height"])
            out[str(img["id"])] = wh
            if isinstance(img.get("file_name"), str):
                out[Path(img["file_name"]).stem] = wh
        return out
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict key -> [width, height] or a COCO file with 'images'")
    for k, v in data.items():
        if isinstance(v, dict) and {"width", "height"} <= set(v):
            out[str(k)] = size(repr(k), v["width"], v["height"])
        elif isinstance(v, (list, tuple)) and len(v) == 2:
            out[str(k)] = size(repr(k), *v)
        else:
            raise ValueError(f"{path}: entry {k!r} is {v!r}; expected [width, height] or {{'width', 'height'}}")
    return out


def load_soft_label_names(path: Path) -> list[str]:
    """Class names from a JSON list or a text file with one name per line (blank lines ignored)."""
    from ..jsonl import parse_json, read_text

    what = "soft-label class names (a JSON list of strings, or one name per line)"
    text = read_text(path, what)
    if text.lstrip().startswith("["):
        names = parse_json(text, path, what)
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"{path}: expected {what}")
        names = [n.strip() for n in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no names; expected {what}")
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"{path}: the class name {dup!r} is listed twice")
    return names


def select_boxes(n: int, conf: np.ndarray | None, conf_th: float | None, min_boxes: int | None,
                 max_boxes: int | None, nbb: int | None = None) -> np.ndarray:
    """Row indices kept, in source order (see the module docstring for the rule); ``conf_th``
    None keeps every row."""
    if nbb is not None:
        return np.arange(min(max(nbb, 0), n))
    if conf_th is None:
        return np.arange(n)
    if conf_th < 0:
        return np.arange(min(n, max_boxes))
    if conf is None:
        return np.arange(n)
    count = int((conf > conf_th).sum())
    keep = min(max_boxes, max(min_boxes, count))
    order = np.argsort(-conf.astype(np.float64), kind="stable")[:keep]
    return np.sort(order)


@dataclass
class Options:
    key_format: str = "{stem}"
    strip_prefix: tuple[str, ...] = ()
    conf_th: float | None = None  # None: every region kept
    min_boxes: int | None = None
    max_boxes: int | None = None
    box_tol: float = 0.01
    feat_dim: int | None = None
    image_sizes: Path | None = None
    unknown_size: bool = False
    soft_labels: bool = True  # keep the source's soft labels where it has them


def prepare(rec: S.Record, opts: Options, feat_dim: int, sizes: dict | None, key: str):
    """``(features, pixel boxes, width, height, source regions, boxes clipped, soft labels or None)``
    ready for the writer, or ``Reject`` with the reason."""
    if rec.error:
        raise Reject(rec.error)
    feats = np.asarray(rec.features)
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number):
        raise Reject(f"features have shape {feats.shape} ({feats.dtype}), expected (regions, {feat_dim}) numbers")
    n = len(feats)
    if n == 0:
        raise Reject("no regions")
    if feats.shape[1] != feat_dim:
        raise Reject(f"features are {feats.shape[1]}-d, expected {feat_dim}-d like the rest of the store")
    pixel = rec.boxes is not None
    boxes = np.asarray(rec.boxes if pixel else rec.norm_boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.number):
        raise Reject(f"boxes have shape {boxes.shape}, expected ({n}, 4) x1, y1, x2, y2")
    if len(boxes) != n:
        raise Reject(f"{len(boxes)} boxes for {n} feature rows")
    conf = None if rec.conf is None else np.asarray(rec.conf, np.float64).reshape(-1)
    if conf is not None and len(conf) != n:
        raise Reject(f"{len(conf)} confidences for {n} regions")
    soft = None
    if opts.soft_labels and rec.soft_labels is not None:
        soft = np.asarray(rec.soft_labels)
        if soft.ndim != 2 or len(soft) != n or not np.issubdtype(soft.dtype, np.number):
            raise Reject(f"soft_labels have shape {soft.shape} ({soft.dtype}), expected ({n}, classes) numbers: one "
                         "class distribution per region (--no-soft-labels leaves them out)")
    width, height = rec.width, rec.height
    if width is None or height is None:
        wh = None
        if sizes is not None:
            wh = next((sizes[c] for c in _size_keys(rec.id, key) if c in sizes), None)
        if wh is None and opts.unknown_size and not pixel:
            wh = (1, 1)
        if wh is None:
            raise Reject(f"image size unknown (not in {opts.image_sizes})" if sizes is not None else
                         "image size unknown: give --image-sizes" + ("" if pixel else " or --unknown-size"))
        width, height = wh
    if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer)) and width > 0 and height > 0):
        raise Reject(f"image size {width!r} x {height!r} is not positive")
    keep = select_boxes(n, conf, opts.conf_th, opts.min_boxes, opts.max_boxes, rec.nbb)
    if len(keep) == 0:
        raise Reject("no regions left after box selection")
    feats = np.asarray(feats[keep], np.float32)
    boxes = np.asarray(boxes[keep], np.float64)
    if soft is not None:
        soft = np.asarray(soft[keep], np.float32)
    if not pixel:
        boxes = boxes * np.array([width, height, width, height], np.float64)
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        raise Reject(f"features of region {int(np.argmax(bad))} contain NaN or inf")
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        raise Reject(f"box {int(np.argmax(bad))} contains NaN or inf")
    tol = np.array([width, height, width, height], np.float64) * opts.box_tol
    lo, hi = np.zeros(4), np.array([width, height, width, height], np.float64)
    out = (boxes < lo - tol) | (boxes > hi + tol)
    if out.any():
        i = int(np.argmax(out.any(axis=1)))
        box = [round(float(v), 2) for v in boxes[i]]
        shown = box if pixel else [round(float(v), 4) for v in np.asarray(rec.norm_boxes)[keep][i]]
        msg = (f"box {i} = {shown} lies outside the {width} x {height} image by more than --box-tol "
               f"{opts.box_tol:g} of its side")
        swapped = np.array([height, width, height, width], np.float64)
        if pixel and not ((boxes < -tol[[1, 0, 3, 2]]) | (boxes > swapped + tol[[1, 0, 3, 2]])).any():
            msg += f"; every box fits a {height} x {width} image: {_SWAP_HINT} (set --tsv-fields)"
        raise Reject(msg)
    clipped = np.clip(boxes, lo, hi)
    n_clipped = int((clipped != boxes).any(axis=1).sum())
    degenerate = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if degenerate.any():
        i = int(np.argmax(degenerate))
        raise Reject(f"box {i} = {[round(float(v), 2) for v in clipped[i]]} has no width or height")
    if np.abs(feats).max() > np.finfo(np.float16).max:
        raise Reject("features exceed the float16 range of the store (|x| <= 65504)")
    return feats, clipped, int(width), int(height), n, n_clipped, soft


def _size_keys(raw_id: str, key: str) -> list[str]:
    stem = raw_id
    for ext in _STRIP_EXT:
        if stem.lower().endswith(ext):
            stem = stem[:-len(ext)]
    digits = re.findall(r"\d+", stem)
    return [key, raw_id, stem] + ([str(int(digits[-1]))] if digits else [])


def make_source(fmt: str, src: list[str], opts: Options, tsv_fields=None, imgid2idx=None):
    if fmt == "tsv":
        return S.TsvSource(S.expand_sources(src, (".tsv",) + tuple(f".tsv.{i}" for i in range(10))), tsv_fields)
    if fmt == "butd-h5":
        return S.ButdH5Source(S.expand_sources(src, (".hdf5", ".h5")), imgid2idx)
    if fmt == "img-db":
        return S.ImgDbSource(S.expand_sources(src), (opts.conf_th, opts.min_boxes, opts.max_boxes))
    if fmt == "npz":
        return S.NpzSource(S.expand_sources(src, (".npz",)))
    raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _progress(total, unit: str, enabled: bool):
    """tqdm when available, else a line every 10 s on stderr."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit=unit, unit_scale=unit == "B", mininterval=1.0, desc="features", file=sys.stderr)
    except ImportError:
        class Lines:
            def __init__(self):
                self.n, self.last = 0, time.monotonic()

            def update(self, k):
                self.n += k
                if time.monotonic() - self.last > 10:
                    self.last = time.monotonic()
                    print(f"features: {self.n}{'' if total is None else f' / {total}'} {unit}", file=sys.stderr)

            def set_postfix_str(self, s):
                pass

            def close(self):
                pass
        return Lines()


def _read_report(path: Path) -> set[str]:
    """``where`` of every record already reported (a resumed run does not report them again)."""
    done = set()
    if path.exists():
        with open(path) as f:
            for line in f:
                try:
                    done.add(json.loads(line)["where"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut off by the interruption
    return done


def convert_features(src: list[str], fmt: str, out: str | Path, *, key_format: str = "{stem}",
                     strip_prefix=(), conf_th: float | None = None, min_boxes: int | None = None,
                     max_boxes: int | None = None, box_tol: float = 0.01, feat_dim: int | None = None,
                     image_sizes: str | Path | None = None, unknown_size: bool = False,
                     tsv_fields=None, imgid2idx: str | Path | None = None, report: str | Path | None = None,
                     restart: bool = False, overwrite: bool = False, progress: bool = True,
                     flush_rows: int = 16384, soft_labels: bool = True,
                     soft_label_names: str | Path | None = None) -> ConvertSummary:
    """Convert ``src`` (files / folders / globs in ``fmt``) into the store ``out``; see the module doc."""
    out = Path(out)
    report = Path(report) if report else out.with_name(out.name + ".report.jsonl")
    partial = _check_output(out, restart, overwrite)
    keys, opts, selection = _options(src, fmt, key_format, strip_prefix, conf_th, min_boxes, max_boxes, box_tol,
                                     feat_dim, image_sizes, unknown_size, soft_labels)
    try:
        sizes = load_image_sizes(opts.image_sizes) if opts.image_sizes else None
        if soft_label_names is not None and not opts.soft_labels:
            raise ValueError("--soft-label-names names the soft labels that --no-soft-labels leaves out; give one of them")
        names = load_soft_label_names(Path(soft_label_names)) if soft_label_names is not None else None
        source = make_source(fmt, list(src), opts, tsv_fields, Path(imgid2idx) if imgid2idx else None)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise ConvertError(str(err)) from None
    meta = _store_meta(fmt, source, opts, unknown_size, names, soft_label_names)

    resuming = partial.exists()
    reported = _read_report(report) if resuming else set()
    if not resuming:
        report.unlink(missing_ok=True)
    dim = _feature_dim(source, opts, partial if resuming else None)
    try:
        writer = RegionFeatureWriter(out, dim, flush_rows=flush_rows, resume=True, meta=meta, soft_label_names=names)
    except ValueError as err:
        raise ConvertError(f"{err} (or pass --restart)") from None
    stats = ConvertSummary(out=out, report=report, feat_dim=dim, resumed=writer.resumed, selection=selection)
    bar = _progress(source.total(), source.unit, progress)
    try:
        with open(report, "a") as rep:
            _convert_records(source, _ResumeSkip(reported, keys, writer), keys, writer, opts, dim, sizes, stats,
                             rep, bar)
            _describe_soft_labels(stats, writer, opts, names, soft_label_names)
            if len(writer) == 0:
                writer.abort()  # no empty store left behind (nor an unfinished one)
            else:
                writer.close()
            rep.write(json.dumps({"summary": stats.as_dict()}) + "\n")
    except BaseException:
        writer.suspend()  # what was committed stays for a rerun (no-op once closed or aborted)
        raise
    finally:
        if bar is not None:
            bar.close()
    if len(writer) == 0:
        raise NothingConverted(_nothing_converted(stats, source), stats)
    return stats


def _check_output(out: Path, restart: bool, overwrite: bool) -> Path:
    """The unfinished store's path (removed with ``restart``); a finished ``out`` is replaced only
    with ``overwrite``."""
    partial = partial_path(out)
    if restart:
        partial.unlink(missing_ok=True)
    if out.exists() and not overwrite and not partial.exists():
        raise ConvertError(f"{out} exists; pass --overwrite to replace it (it stays in place until the new store is complete)")
    return partial


def _options(src, fmt: str, key_format: str, strip_prefix, conf_th, min_boxes, max_boxes, box_tol: float, feat_dim,
             image_sizes, unknown_size: bool, soft_labels: bool) -> tuple[KeyMapper, Options, str]:
    """The key mapper, the checked ``Options`` and the box selection in words."""
    try:
        keys = KeyMapper(key_format, strip_prefix)
        paths = S.expand_sources(list(src))
        policy, selection = box_policy(fmt, paths, conf_th, min_boxes, max_boxes)
    except (ValueError, FileNotFoundError) as err:
        raise ConvertError(str(err)) from None
    opts = Options(key_format, tuple(strip_prefix), *policy, float(box_tol),
                   feat_dim, Path(image_sizes) if image_sizes else None, unknown_size, bool(soft_labels))
    if not 0 <= opts.box_tol < 0.5:
        raise ConvertError(f"--box-tol {opts.box_tol}: expected a fraction of the image side in [0, 0.5)")
    return keys, opts, selection


def _store_meta(fmt: str, source, opts: Options, unknown_size: bool, names, soft_label_names) -> dict:
    """The store's ``meta`` attribute: how it was made (a resumed conversion must match it)."""
    meta = {"converter": "data_modules.convert.features", "version": 1, "format": fmt,
            "sources": [str(Path(p).resolve()) for p in getattr(source, "paths", [])],
            "key_format": opts.key_format, "strip_prefix": list(opts.strip_prefix), "conf_th": opts.conf_th,
            "min_boxes": opts.min_boxes, "max_boxes": opts.max_boxes, "box_tol": opts.box_tol,
            "image_sizes": str(opts.image_sizes.resolve()) if opts.image_sizes else ("unknown (1 x 1)" if unknown_size else None),
            **source.settings()}
    if not opts.soft_labels:  # only when not the default: unfinished stores of earlier versions still resume
        meta["soft_labels"] = "dropped (--no-soft-labels)"
    if names is not None:
        meta["soft_label_names"] = str(Path(soft_label_names).resolve())
    return meta


class _ResumeSkip:
    """Which records a resumed conversion passes over: those reported before, and — records come
    in a fixed order and images are committed in that order — while every record is already in
    the store, the part done before the interruption."""

    def __init__(self, reported: set, keys: KeyMapper, writer: RegionFeatureWriter):
        self.reported, self.keys, self.writer = reported, keys, writer
        self.before_resume_point = writer.resumed > 0

    def __call__(self, raw_id: str, where: str) -> bool:
        if where in self.reported:
            return True
        if self.before_resume_point:
            try:
                if self.keys(raw_id) in self.writer:
                    return True
            except Reject:
                pass
            self.before_resume_point = False
        return False


def _convert_records(source, skip: _ResumeSkip, keys: KeyMapper, writer: RegionFeatureWriter, opts: Options,
                     dim: int, sizes, stats: ConvertSummary, rep, bar) -> None:
    """Every record of ``source`` into the store, or into the report (``rep``) with its reason."""
    examined = swapped = 0
    for rec in _read(source.records(skip)):
        if bar is not None:
            bar.update(rec.advance)
        if rec.skipped:
            continue
        key = None
        try:
            key = keys(rec.id)
            _add_image(rec, key, writer, opts, dim, sizes, stats)
        except Reject as err:
            reason = str(err)
            rep.write(json.dumps({"id": rec.id, "key": key, "where": rec.where, "reason": reason}) + "\n")
            rep.flush()
            stats.rejected += 1
            stats.add_reason(reason, rec.where, f"{writer.path}: image {key!r}" if key else "")
            swapped += _SWAP_HINT in reason
        examined += 1
        if examined <= 20 and swapped >= 5:
            raise ConvertError(f"{rec.where}: the boxes of {swapped} of the first {examined} "
                               f"images fit only with {_SWAP_HINT.split(' look')[0]} swapped: give the column order "
                               "with --tsv-fields (e.g. image_id,image_h,image_w,num_boxes,boxes,features) and --restart")


def _add_image(rec, key: str, writer: RegionFeatureWriter, opts: Options, dim: int, sizes,
               stats: ConvertSummary) -> None:
    """One record's image into the store under ``key``, or ``Reject`` saying why not."""
    if key in writer:
        raise Reject(f"duplicate: key {key!r} was already converted from an earlier record")
    feats, boxes, w, h, n_source, n_clipped, soft = prepare(rec, opts, dim, sizes, key)
    if soft is None and writer.has_soft_labels and opts.soft_labels:
        raise Reject(f"no soft_labels, but the images converted before have them ({writer.soft_label_dim} "
                     "classes per region) and a store keeps them for every image or none: "
                     "--no-soft-labels leaves them out of every image")
    if soft is not None and writer.has_soft_labels is False:
        soft = None  # the first image had none: so has the store
        stats.soft_labels_ignored += 1
    try:
        writer.add(key, feats, boxes, w, h, soft_labels=soft)
    except ValueError as err:
        hint = " (--no-soft-labels leaves them out)" if "soft_labels" in str(err) and soft is not None else ""
        raise Reject(str(err) + hint) from None
    stats.converted += 1
    stats.clipped_boxes += n_clipped
    stats.add_image(key, n_source, len(feats))


def _describe_soft_labels(stats: ConvertSummary, writer: RegionFeatureWriter, opts: Options, names, names_path) -> None:
    """``stats.soft_labels``: whether the store keeps soft labels, in words."""
    if not opts.soft_labels:
        stats.soft_labels = "dropped (--no-soft-labels): the store has none"
    elif writer.has_soft_labels:
        stats.soft_label_dim = writer.soft_label_dim
        stats.soft_labels = (f"kept: {writer.soft_label_dim} classes per region"
                             + (f", named from {names_path}" if names is not None else ", unnamed (--soft-label-names)"))
    elif stats.soft_labels_ignored:
        stats.soft_labels = (f"not kept: the first image converted had none, so the store has none; "
                             f"{stats.soft_labels_ignored:,} later records had them (left out)")


def _read(records):
    """The source's records; a source that cannot be read on is a ``SourceError`` (no traceback)."""
    last = None
    while True:
        try:
            rec = next(records)
        except StopIteration:
            return
        except SourceError:
            raise
        except (ValueError, OSError) as err:
            text = " ".join(str(err).split())
            if last is not None and re.split(r"[:#\[]", last)[0] not in text:
                text += f" (reading on after {last})"
            raise SourceError(text) from None
        last = rec.where
        yield rec


def _nothing_converted(stats: ConvertSummary, source) -> str:
    kept = f"; the existing {stats.out} is left as it was" if stats.out.exists() else ""
    if not stats.rejected:
        return (f"no image converted: the sources ({', '.join(map(str, getattr(source, 'paths', []))) or 'none'}) "
                f"hold no records; no store written at {stats.out}{kept}")
    top = stats.sorted_reasons()[0]
    reason, where = stats.reason_examples[top[0]]
    return (f"no image converted: all {stats.rejected:,} records were rejected, {top[1]:,} of them as "
            f"{top[0]!r} (e.g. {where}: {_quote(reason)}); no store written at {stats.out}{kept}; every rejected "
            f"record and its reason is in {stats.report}")


def _conf_th(value) -> float | str | None:
    """``--conf-th``: a number, or ``none`` (keep every region)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == KEEP_ALL):
        return None if value is None else KEEP_ALL
    try:
        return float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"--conf-th {value!r}: expected a number (0.2: UNITER's rule; -1: the "
                                         f"first --max-boxes) or {KEEP_ALL!r} (every region)") from None


def box_policy(fmt: str, paths: list[Path], conf_th=None, min_boxes: int | None = None, max_boxes: int | None = None):
    """``((conf_th, min_boxes, max_boxes), description)`` of the selection in use: ``conf_th``
    None keeps every region (the default; for an img_db, its env's policy when it names one)."""
    conf_th = _conf_th(conf_th) if isinstance(conf_th, str) else conf_th
    if conf_th == KEEP_ALL:
        if min_boxes is not None or max_boxes is not None:
            raise ValueError(f"--conf-th {KEEP_ALL} keeps every region: --min-boxes / --max-boxes do not apply")
        return (None, None, None), "none (--conf-th none): every region kept"
    if conf_th is None and fmt == "img-db":
        envs = [S.find_lmdb_env(p) for p in paths]
        env_policies = {S.env_box_policy(e) for e in envs} - {None}
        if len(env_policies) == 1 and min_boxes is None and max_boxes is None:
            th, lo, hi = env_policies.pop()
            names = ", ".join(sorted({e.name for e in envs}))
            rule = f"the first {hi}" if th < 0 else f"conf_th {th:g}, min_boxes {lo}, max_boxes {hi}"
            return (th, lo, hi), (f"the img_db env's own policy ({names}: {rule}, with its nbb json where present); "
                                  f"--conf-th {KEEP_ALL} keeps every region")
    if conf_th is None:
        if min_boxes is not None or max_boxes is not None:
            raise ValueError(f"--min-boxes / --max-boxes apply with --conf-th only: UNITER's rule is --conf-th "
                             f"{UNITER_POLICY[0]} --min-boxes {UNITER_POLICY[1]} --max-boxes {UNITER_POLICY[2]}; "
                             f"--conf-th -1 --max-boxes N keeps the first N; without --conf-th every region is kept")
        return (None, None, None), "none: every region kept (UNITER's rule only with --conf-th)"
    lo = UNITER_POLICY[1] if min_boxes is None else int(min_boxes)
    hi = UNITER_POLICY[2] if max_boxes is None else int(max_boxes)
    if lo < 1 or hi < lo:
        raise ValueError(f"--min-boxes {lo} / --max-boxes {hi}: need 1 <= min <= max")
    if conf_th < 0:
        return (float(conf_th), lo, hi), f"the first {hi} regions (--conf-th {conf_th:g})"
    return (float(conf_th), lo, hi), (f"UNITER's rule, conf_th {conf_th:g}, min_boxes {lo}, max_boxes {hi} "
                                      "(sources without confidences keep every region)")


def _feature_dim(source, opts: Options, partial: Path | None) -> int:
    """The store's feature dimension: given, the unfinished store's, the HDF5 file's, or the most
    common one among the first records (one corrupt first record must not decide it)."""
    if partial is not None:
        try:
            with h5py.File(partial, "r") as f:
                dim = int(f.attrs["feat_dim"])
        except (OSError, KeyError) as err:
            raise ConvertError(f"{partial}: unfinished store cannot be read ({err}); delete it or pass --restart") from None
        if opts.feat_dim is not None and opts.feat_dim != dim:
            raise ConvertError(f"{partial} holds {dim}-d features, --feat-dim says {opts.feat_dim}; pass --restart")
        return dim
    if opts.feat_dim is not None:
        if opts.feat_dim <= 0:
            raise ConvertError(f"--feat-dim {opts.feat_dim} must be positive")
        return opts.feat_dim
    if hasattr(source, "dims"):
        if len(set(source.dims)) != 1:
            raise ConvertError(f"the HDF5 sources hold features of different sizes {source.dims}; convert them separately")
        return source.dims[0]
    seen: dict[int, int] = {}
    for rec in _read(source.records(lambda raw_id, where: False)):
        f = rec.features
        if rec.error is None and f is not None and getattr(f, "ndim", 0) == 2 and len(f):
            seen[f.shape[1]] = seen.get(f.shape[1], 0) + 1
            if sum(seen.values()) >= 16:
                break
    if not seen:
        raise ConvertError("no readable record found to take the feature dimension from; give --feat-dim "
                           "(or check the sources: see the errors a run with --feat-dim reports)")
    return max(seen, key=seen.get)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", nargs="+", required=True, metavar="PATH",
                   help="source files, folders or globs (quoted), all in --format")
    p.add_argument("--format", required=True, choices=FORMATS, help="source format (see above)")
    p.add_argument("--out", required=True, type=Path, help="the store to write, e.g. data/features/coco.h5")
    p.add_argument("--key-format", default="{stem}", help="store key from {id}, {stem}, {num} (default {stem})")
    p.add_argument("--strip-prefix", action="append", default=[], metavar="PREFIX",
                   help="remove this prefix from the stem (repeatable: the first that matches); ids without one are rejected")
    p.add_argument("--conf-th", type=_conf_th, default=None,
                   help="box selection by confidence (UNITER's rule: --conf-th 0.2 --min-boxes 10 --max-boxes 100); "
                        "-1 keeps the first --max-boxes; 'none' keeps every region. Default: every region "
                        "(an img_db: its env's policy)")
    p.add_argument("--min-boxes", type=int, default=None, help=f"with --conf-th: default {UNITER_POLICY[1]}")
    p.add_argument("--max-boxes", type=int, default=None, help=f"with --conf-th: default {UNITER_POLICY[2]}")
    p.add_argument("--box-tol", type=float, default=0.01,
                   help="boxes out of the image by at most this fraction of its side are clipped (default 0.01)")
    p.add_argument("--feat-dim", type=int, default=None, help="expected feature size (default: from the sources)")
    p.add_argument("--image-sizes", type=Path, default=None,
                   help="JSON {key: [w, h]} or COCO instances file, for sources without image sizes")
    p.add_argument("--unknown-size", action="store_true",
                   help="store normalised boxes with a 1 x 1 image size when no size is known (not for RefCOCO+)")
    p.add_argument("--tsv-fields", type=lambda s: tuple(x.strip() for x in s.split(",")), default=None,
                   help="TSV column names, comma-separated (default: header line, or 6 columns = BUTD, 10 = LXMERT)")
    p.add_argument("--imgid2idx", type=Path, default=None,
                   help="butd-h5 image-id mapping (.pkl or .json; default <stem>_imgid2idx.pkl next to the file)")
    p.add_argument("--no-soft-labels", action="store_true",
                   help="leave the source's soft labels (per-region class distributions) out of the store")
    p.add_argument("--soft-label-names", type=Path, default=None,
                   help="names of the soft labels' classes: a JSON list or one name per line")
    p.add_argument("--report", type=Path, default=None, help="rejected records, JSON lines (default OUT.report.jsonl)")
    p.add_argument("--restart", action="store_true", help="discard an unfinished conversion of OUT instead of resuming it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        stats = convert_features(
            args.src, args.format, args.out, key_format=args.key_format, strip_prefix=args.strip_prefix,
            conf_th=args.conf_th, min_boxes=args.min_boxes, max_boxes=args.max_boxes, box_tol=args.box_tol,
            feat_dim=args.feat_dim, image_sizes=args.image_sizes, unknown_size=args.unknown_size,
            tsv_fields=args.tsv_fields, imgid2idx=args.imgid2idx, report=args.report, restart=args.restart,
            overwrite=args.overwrite, progress=not args.no_progress, soft_labels=not args.no_soft_labels,
            soft_label_names=args.soft_label_names)
    except NothingConverted as err:
        print(err.summary.text())
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ConvertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to continue {args.out}", file=sys.stderr)
        return 130
    print(stats.text())
    return 0
