"""Join stores region by region: every image's regions from the first store, then the others'.

VCR needs this: UNITER puts an image's ground-truth boxes (from the annotation's metadata, in
``objects`` order, so region i is object i) before the detector's boxes. Convert each source to a
store with the same keys, then

    python -m data_modules.convert concat --src vcr_gt.h5 vcr_det.h5 --out vcr.h5

Images of the first store define the output; an image missing from a later store keeps only the
regions it has (counted and printed). Sizes must agree across stores (an error names the image).
Soft labels (per-region class distributions) are kept when every store has them with the same
classes; otherwise the output has none, and the summary line says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..features import RegionFeatureStore
from .writer import RegionFeatureWriter

CLI_DESCRIPTION = __doc__


def soft_label_plan(stores: list[RegionFeatureStore]) -> tuple[bool, str]:
    """``(keep, in words)``: soft labels survive joining stores only if every store has the same classes."""
    dims = [s.soft_label_dim for s in stores]
    if all(d is None for d in dims):
        return False, "none (no store has them)"
    lacking = [str(s.path) for s in stores if s.soft_label_dim is None]
    if lacking:
        return False, f"dropped: {', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} none"
    if len(set(dims)) > 1 or len({tuple(s.soft_label_names or ()) for s in stores if s.soft_label_names}) > 1:
        return False, f"dropped: the stores' classes differ ({', '.join(f'{s.path}: {s.soft_label_dim}' for s in stores)})"
    return True, f"kept: {dims[0]} classes per region"


def concat_stores(sources: list[str | Path], out: str | Path) -> dict:
    """Write ``out`` = the region-wise concatenation of ``sources`` (see the module docstring)."""
    if len(sources) < 2:
        raise ValueError("concat needs at least two stores")
    stores = [RegionFeatureStore(s) for s in sources]
    dims = {s.feat_dim for s in stores}
    if len(dims) != 1:
        raise ValueError(f"stores {[str(s.path) for s in stores]} have feature dimensions {[s.feat_dim for s in stores]}")
    only_first = 0
    keep_soft, soft_note = soft_label_plan(stores)
    names = next((s.soft_label_names for s in stores if s.soft_label_names), None) if keep_soft else None
    with RegionFeatureWriter(out, stores[0].feat_dim, soft_label_names=names) as writer:
        for key in stores[0].ids:
            width, height = stores[0].image_size(key)
            feats, boxes, soft = [], [], []
            for store in stores:
                if key not in store:
                    continue
                if store.image_size(key) != (width, height):
                    raise ValueError(f"image {key!r}: {stores[0].path} says {width}x{height}, {store.path} says "
                                     f"{store.image_size(key)[0]}x{store.image_size(key)[1]}")
                f, pos = store.get(key)
                feats.append(f.numpy())
                boxes.append(pos[:, :4].numpy() * np.array([width, height, width, height], dtype=np.float32))
                if keep_soft:
                    soft.append(store.get_soft_labels(key).numpy())
            only_first += len(feats) == 1
            writer.add(key, np.concatenate(feats), np.concatenate(boxes), width, height,
                       soft_labels=np.concatenate(soft) if keep_soft else None)
    return {"images": len(stores[0].ids), "only_in_first": only_first, "soft_labels": soft_note}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", nargs="+", required=True, help="stores, in region order (VCR: ground truth first)")
    parser.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> int:
    try:
        summary = concat_stores(args.src, args.out)
    except (ValueError, FileNotFoundError) as err:  # a damaged or mismatched store: named, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {summary['images']} images; {summary['only_in_first']} only in {args.src[0]}; "
          f"soft labels {summary['soft_labels']}")
    return 0
