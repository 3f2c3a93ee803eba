"""Check a whole region-feature store: ``python -m data_modules.check_store FILE [FILE ...]``.

Training reads a store image by image and checks only the rows it reads; this scans every row
once, in chunks (memory bounded by ``--chunk-mb``, a progress line every 10 % on stderr), and
reports what a store written by another tool or damaged on the way can hold:

* the file: empty, truncated, not HDF5, or an unfinished conversion (``.partial``);
* attributes: ``format``, ``version``, ``feat_dim`` (against the ``features`` shape), ``meta``;
* the index: counts, empty or duplicate image ids, ``num_boxes`` zero or negative, ``offsets`` /
  ``num_boxes`` ranges outside ``features`` or overlapping each other, image sizes not positive;
* the values: NaN/inf in ``features`` or ``norm_bb``, boxes outside [0, 1], with ``x2 <= x1`` or
  ``y2 <= y1``, or whose ``w, h`` columns disagree with ``x2 - x1, y2 - y1``;
* soft labels, where the store has them (``soft_labels``, ``soft_label_dim``, ``soft_label_names``):
  their shape and attributes, NaN/inf, negative values and rows not summing to 1;

each with its count and the first few image keys. Rows no image uses are a warning. The exit
status is 1 if any file has a problem (warnings alone give 0), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .features import (FORMAT, INDEX_DATASETS, PARTIAL_FORMAT, SOFT_LABEL_SUM_TOL, SOFT_LABELS, VERSION,
                       UnreadableStoreError, open_h5, read_soft_label_names)

BOX_TOL = 1e-5  # normalised coordinates may exceed [0, 1] by float32 rounding only
WH_TOL = 1e-4   # w, h columns against x2 - x1, y2 - y1


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _flat(err: BaseException) -> str:
    return " ".join(str(err).split())


@dataclass
class StoreReport:
    """What ``check_store`` found; ``ok`` when there is no error (warnings are allowed)."""

    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    # problem kind -> {"rows": int, "images": int, "examples": [image keys]} (the value scan)
    problems: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {"path": str(self.path), "ok": self.ok, "errors": self.errors, "warnings": self.warnings,
                "info": self.info, "problems": self.problems}

    def text(self) -> str:
        i = self.info
        lines = [f"{self.path}: {'OK' if self.ok else f'{len(self.errors)} PROBLEM' + ('S' if len(self.errors) > 1 else '')}"]
        if "format" in i:
            lines.append(f"  format {i['format']!r}, version {i.get('version')}, feat_dim {i.get('feat_dim')}")
        if "images" in i:
            boxes = i.get("boxes_per_image")
            lines.append(f"  {i['images']:,} images, {i.get('rows', 0):,} regions"
                         + (f" (per image: min {boxes['min']}, mean {boxes['mean']:.1f}, max {boxes['max']})" if boxes else "")
                         + (f", features {i['features_dtype']}" if "features_dtype" in i else ""))
        if "soft_label_dim" in i:
            names = i.get("soft_label_names")
            lines.append(f"  soft labels: {i['soft_label_dim']} classes per region"
                         + (f" (named: {', '.join(map(repr, names[:3]))}{', ...' if len(names) > 3 else ''})" if names
                            else " (unnamed)"))
        if "meta" in i:
            lines.append(f"  made by: {i['meta']}")
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _examples(keys, mask: np.ndarray, limit: int) -> list[str]:
    return [keys[j] for j in np.flatnonzero(mask)[:limit]]


def _shown(keys: list[str], total: int) -> str:
    return ", ".join(repr(k) for k in keys) + (", ..." if total > len(keys) else "")


def check_store(path: str | Path, *, chunk_mb: float = 64, max_examples: int = 5,
                progress: Callable[[str], None] | None = None) -> StoreReport:
    """Scan the store at ``path`` (see the module docstring); ``progress`` gets a line every 10 %
    of the rows when the scan takes more than one chunk."""
    path = Path(path)
    report = StoreReport(path)
    if not path.is_file():
        report.errors.append(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
        return report
    try:
        f = open_h5(path)
    except UnreadableStoreError as err:
        report.errors.append(str(err))
        return report
    with f:
        try:
            _check(f, report, chunk_mb, max_examples, progress)
        except OSError as err:  # metadata or data that HDF5 cannot read: a damaged file
            report.errors.append(f"{path} cannot be read ({_flat(err)}); the file is damaged (truncated or "
                                 "overwritten?): copy or convert it again")
    return report


def _check(f, report: StoreReport, chunk_mb: float, max_examples: int, progress) -> None:
    errors, warnings, info = report.errors, report.warnings, report.info
    fmt, partial = _text(f.attrs.get("format")), _text(f.attrs.get("partial_format"))
    info["format"] = fmt
    if fmt != FORMAT:
        if partial == PARTIAL_FORMAT:
            errors.append(f"an unfinished conversion (attribute partial_format={partial!r}, "
                          f"{int(f.attrs.get('committed_images', 0)):,} images committed), not a store: rerun the "
                          "conversion to finish it")
        else:
            errors.append(f"attribute format={fmt!r}, expected {FORMAT!r}: not a lightning-vl region-feature store")
    version = f.attrs.get("version")
    info["version"] = None if version is None else int(version)
    if fmt == FORMAT and info["version"] != VERSION:
        errors.append(f"store version {'missing' if version is None else info['version']}, expected {VERSION}")
    feat_dim = f.attrs.get("feat_dim")
    try:
        info["feat_dim"] = None if feat_dim is None else int(feat_dim)
    except (TypeError, ValueError):
        info["feat_dim"] = repr(feat_dim)
    meta = _text(f.attrs.get("meta"))
    if meta is not None:
        try:
            m = json.loads(meta)
            keys = ("converter", "format", "conf_th", "min_boxes", "max_boxes", "key_format")
            info["meta"] = ", ".join(f"{k}={m[k]}" for k in keys if isinstance(m, dict) and k in m) or meta[:200]
        except json.JSONDecodeError:
            warnings.append("attribute meta is not valid JSON")
    absent = [k for k in (*INDEX_DATASETS, "features", "norm_bb") if k not in f]
    if absent:
        errors.append(f"datasets {absent} missing; a store has {list(INDEX_DATASETS)} + features, norm_bb")
        return
    feats, bb = f["features"], f["norm_bb"]
    if feats.ndim != 2 or bb.ndim != 2 or bb.shape[1] != 6 or bb.shape[0] != feats.shape[0]:
        errors.append(f"features {feats.shape} and norm_bb {bb.shape}: expected (rows, D) and (rows, 6)")
        return
    rows, dim = feats.shape
    info["rows"], info["features_dtype"], info["norm_bb_dtype"] = int(rows), str(feats.dtype), str(bb.dtype)
    if info["feat_dim"] != dim:
        errors.append(f"attribute feat_dim={info['feat_dim']} but features are {dim}-d (shape {feats.shape})")
    if feats.dtype != np.float16:
        warnings.append(f"features are {feats.dtype}, not float16 (readable, but not what make features writes)")
    soft = _check_soft_label_layout(f, rows, report)
    n = len(f["img_ids"])
    info["images"] = int(n)
    misshapen = [name for name, shape in (("num_boxes", (n,)), ("offsets", (n,)), ("img_wh", (n, 2)))
                 if f[name].shape != shape]
    for name in misshapen:
        errors.append(f"dataset {name} has shape {f[name].shape}, expected {(n, 2) if name == 'img_wh' else (n,)} "
                      f"(one per image id: img_ids has {n:,})")
    if misshapen:
        return
    try:
        keys = list(f["img_ids"].asstr()[:])
    except UnicodeDecodeError as err:
        errors.append(f"img_ids are not UTF-8 ({err})")
        return
    nbb = f["num_boxes"][:].astype(np.int64)
    off = f["offsets"][:].astype(np.int64)
    wh = f["img_wh"][:]
    if n:
        info["boxes_per_image"] = {"min": int(nbb.min()), "mean": float(nbb.mean()), "max": int(nbb.max())}
    _check_index(keys, nbb, off, wh, rows, report, max_examples)
    _scan_values(feats, bb, keys, nbb, off, rows, report, chunk_mb, max_examples, progress, soft)


def _check_soft_label_layout(f, rows: int, report: StoreReport):
    """The ``soft_labels`` dataset (or None) when its layout and attributes are sound; errors otherwise."""
    errors, info = report.errors, report.info
    dim_attr = f.attrs.get("soft_label_dim")
    if SOFT_LABELS not in f:
        if dim_attr is not None:
            errors.append(f"attribute soft_label_dim={_text(dim_attr)} but no soft_labels dataset")
        return None
    soft = f[SOFT_LABELS]
    if soft.ndim != 2 or soft.shape[0] != rows or soft.shape[1] == 0:
        errors.append(f"soft_labels have shape {soft.shape}, expected ({rows:,}, C): one class distribution per "
                      "region (row) of features")
        return None
    info["soft_label_dim"] = int(soft.shape[1])
    try:
        dim = None if dim_attr is None else int(dim_attr)
    except (TypeError, ValueError):
        dim = repr(dim_attr)
    if dim != soft.shape[1]:
        errors.append(f"attribute soft_label_dim={dim} but soft_labels have {soft.shape[1]} classes")
    try:
        names = read_soft_label_names(f.attrs.get("soft_label_names"), "")
    except ValueError as err:
        errors.append(str(err).lstrip(": "))
        names = None
    if names is not None:
        info["soft_label_names"] = names
        if len(names) != soft.shape[1]:
            errors.append(f"attribute soft_label_names lists {len(names)} names for {soft.shape[1]} soft-label classes")
    if soft.dtype != np.float16:
        report.warnings.append(f"soft_labels are {soft.dtype}, not float16 (readable, but not what the writer writes)")
    return soft


def _check_index(keys, nbb, off, wh, rows: int, report: StoreReport, limit: int) -> None:
    errors, warnings = report.errors, report.warnings
    empty = [i for i, k in enumerate(keys) if not k]
    if empty:
        errors.append(f"{len(empty)} empty image ids (index rows {empty[:limit]})")
    seen: dict[str, int] = {}
    dups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        if k in seen:
            dups.setdefault(k, [seen[k]]).append(i)
        else:
            seen[k] = i
    if dups:
        shown = "; ".join(f"{k!r} at index rows {v}" for k, v in list(dups.items())[:limit])
        errors.append(f"{len(dups)} duplicate image ids (a lookup finds only one of each): {shown}"
                      f"{' ...' if len(dups) > limit else ''}")
    for mask, what in ((nbb == 0, "images with zero boxes (num_boxes 0: no regions to attend to)"),
                       (nbb < 0, "images with negative num_boxes"),
                       (off < 0, "images with negative offsets"),
                       ((off >= 0) & (nbb > 0) & (off + nbb > rows), f"images whose rows run past the features dataset ({rows:,} rows)"),
                       ((wh <= 0).any(axis=1) if len(wh) else np.zeros(0, bool), "images with a size (img_wh) that is not positive")):
        if mask.any():
            ex = _examples(keys, mask, limit)
            errors.append(f"{int(mask.sum())} {what}: {_shown(ex, int(mask.sum()))}")
    valid = (nbb > 0) & (off >= 0) & (off + nbb <= rows)
    idx = np.flatnonzero(valid)
    if len(idx):
        order = idx[np.argsort(off[idx], kind="stable")]
        end = off[order] + nbb[order]
        overlap = off[order][1:] < np.maximum.accumulate(end)[:-1]
        if overlap.any():
            hits = np.flatnonzero(overlap)
            pairs = "; ".join(f"{keys[order[j + 1]]!r} (rows {off[order[j + 1]]}..{off[order[j + 1]] + nbb[order[j + 1]] - 1}) "
                              f"overlaps an earlier image ending at row {np.maximum.accumulate(end)[j] - 1}"
                              for j in hits[:limit])
            errors.append(f"{len(hits)} images share feature rows with another image (offsets/num_boxes overlap): {pairs}"
                          f"{' ...' if len(hits) > limit else ''}")
        # rows covered by the union of the images' ranges (sorted by start)
        before = np.concatenate([[0], np.maximum.accumulate(end)[:-1]])
        unused = rows - int(np.maximum(0, end - np.maximum(off[order], before)).sum())
        if unused:
            warnings.append(f"{unused:,} of {rows:,} feature rows belong to no image (wasted space, never read)")
    elif rows:
        warnings.append(f"none of the {rows:,} feature rows belongs to an image")


def _scan_values(feats, bb, keys, nbb, off, rows: int, report: StoreReport, chunk_mb: float, limit: int,
                 progress, soft=None) -> None:
    """Every row of ``features``, ``norm_bb`` (and ``soft_labels``) in chunks; problems are mapped to images."""
    n = len(keys)
    valid = (nbb > 0) & (off >= 0) & (off + nbb <= rows)
    idx = np.flatnonzero(valid)
    order = idx[np.argsort(off[idx], kind="stable")]
    starts = off[order]
    row_bytes = feats.shape[1] * feats.dtype.itemsize + 6 * bb.dtype.itemsize
    if soft is not None:
        row_bytes += soft.shape[1] * (soft.dtype.itemsize + 4)  # and its float32 copy
    chunk = max(1, int(chunk_mb * 2 ** 20 // max(row_bytes, 1)))
    kinds = {
        "nonfinite_features": "features hold NaN or inf",
        "nonfinite_boxes": "norm_bb holds NaN or inf",
        "box_outside": "boxes lie outside [0, 1] (normalised x1, y1, x2, y2)",
        "box_inverted": "boxes have x2 <= x1 or y2 <= y1 (empty or inverted)",
        "box_wh": "norm_bb w, h columns disagree with x2 - x1, y2 - y1",
    }
    if soft is not None:
        kinds.update({
            "nonfinite_soft_labels": "soft_labels hold NaN or inf",
            "negative_soft_labels": "soft_labels hold negative class probabilities",
            "soft_label_sum": f"soft_labels rows do not sum to 1 (within {SOFT_LABEL_SUM_TOL})",
        })
    bad_rows = {k: 0 for k in kinds}
    bad_images = {k: np.zeros(n, bool) for k in kinds}
    unused_bad = {k: 0 for k in kinds}
    first_row: dict[str, int] = {}
    f16 = feats.dtype == np.float16
    buf = np.empty((chunk, feats.shape[1]), np.uint16) if f16 else None
    step, next_report = max(rows // 10, 1), max(rows // 10, 1)
    for lo in range(0, rows, chunk):
        hi = min(rows, lo + chunk)
        x = feats[lo:hi]
        if f16:  # NaN/inf in float16: exponent bits all set; no float conversion of the chunk
            m = buf[:hi - lo]
            np.bitwise_and(x.view(np.uint16), 0x7FFF, out=m)
            nonfinite_f = m.max(axis=1) >= 0x7C00 if x.shape[1] else np.zeros(hi - lo, bool)
        else:
            nonfinite_f = ~np.isfinite(x).all(axis=1)
        del x
        b = bb[lo:hi].astype(np.float64)
        fin = np.isfinite(b).all(axis=1)
        with np.errstate(invalid="ignore"):
            outside = fin & ((b[:, :4] < -BOX_TOL) | (b[:, :4] > 1 + BOX_TOL)).any(axis=1)
            inverted = fin & ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
            wh_bad = fin & ((np.abs(b[:, 4] - (b[:, 2] - b[:, 0])) > WH_TOL) | (np.abs(b[:, 5] - (b[:, 3] - b[:, 1])) > WH_TOL))
        masks = [("nonfinite_features", nonfinite_f), ("nonfinite_boxes", ~fin), ("box_outside", outside),
                 ("box_inverted", inverted), ("box_wh", wh_bad)]
        if soft is not None:
            p = soft[lo:hi].astype(np.float32)
            pfin = np.isfinite(p).all(axis=1)
            with np.errstate(invalid="ignore"):
                negative = pfin & (p < 0).any(axis=1)
                off_sum = pfin & (np.abs(p.sum(axis=1, dtype=np.float64) - 1) > SOFT_LABEL_SUM_TOL)
            del p
            masks += [("nonfinite_soft_labels", ~pfin), ("negative_soft_labels", negative), ("soft_label_sum", off_sum)]
        for kind, mask in masks:
            hits = np.flatnonzero(mask) + lo
            if not len(hits):
                continue
            bad_rows[kind] += len(hits)
            first_row.setdefault(kind, int(hits[0]))
            pos = np.searchsorted(starts, hits, side="right") - 1
            ok = pos >= 0
            img = np.full(len(hits), -1)
            img[ok] = order[pos[ok]]
            ok &= hits < off[np.maximum(img, 0)] + nbb[np.maximum(img, 0)]
            bad_images[kind][img[ok]] = True
            unused_bad[kind] += int((~ok).sum())
        if progress is not None and rows > chunk and hi >= next_report:
            progress(f"check-store: {report.path}: {100 * hi // rows}% of rows ({hi:,} / {rows:,})")
            while next_report <= hi:
                next_report += step
    for kind, what in kinds.items():
        if not bad_rows[kind]:
            continue
        images = int(bad_images[kind].sum())
        ex = _examples(keys, bad_images[kind], limit)
        report.problems[kind] = {"rows": bad_rows[kind], "images": images, "examples": ex,
                                 "first_row": first_row[kind], "rows_of_no_image": unused_bad[kind]}
        msg = f"{what}: {bad_rows[kind]:,} rows in {images:,} images"
        if ex:
            msg += f": {_shown(ex, images)}"
        if unused_bad[kind]:
            msg += f" ({unused_bad[kind]:,} of the rows belong to no image)"
        if images:
            report.errors.append(msg)
        else:
            report.warnings.append(msg)


def main(argv: list[str] | None = None, prog: str = "python -m data_modules.check_store") -> int:
    """``check-store FILE [FILE ...]``: 0 when every file is a sound store, 1 when one has a problem
    (``prog``: the name the usage shows, e.g. ``lightning-vl check-store``)."""
    ap = argparse.ArgumentParser(prog=prog,
                                 description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="+", type=Path, metavar="FILE", help="region-feature stores (.h5)")
    ap.add_argument("--max-examples", type=int, default=5, help="image keys shown per problem (default 5)")
    ap.add_argument("--chunk-mb", type=float, default=64, help="rows read at a time, in MB (default 64)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")
    ap.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if args.max_examples < 1 or args.chunk_mb <= 0:
        ap.error("--max-examples must be >= 1 and --chunk-mb > 0")
    say = None if args.no_progress else (lambda line: print(line, file=sys.stderr, flush=True))
    failed = False
    for store in args.stores:
        report = check_store(store, chunk_mb=args.chunk_mb, max_examples=args.max_examples, progress=say)
        failed |= not report.ok
        print(json.dumps(report.as_dict()) if args.json else report.text(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
