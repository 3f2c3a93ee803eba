"""Join stores image by image: the union of their images, e.g. COCO's and Visual Genome's for
UNITER's in-domain pre-training, which one data module reads from one store.

    python -m data_modules.convert merge --src coco.h5 vg.h5 --out coco_vg.h5

Convert each image set with keys that cannot collide (``--key-format coco_{num}`` and
``vg_{num}``: COCO and VG image ids overlap as numbers), then merge. An image key found in two
stores is an error naming both (nothing is written). Soft labels are kept when every store has
them with the same classes; otherwise the output has none, and the summary line says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..features import RegionFeatureStore
from .concat import soft_label_plan
from .writer import RegionFeatureWriter

CLI_DESCRIPTION = __doc__


def merge_stores(sources: list[str | Path], out: str | Path) -> dict:
    """Write ``out`` = every image of every store in ``sources``, in their order."""
    if len(sources) < 2:
        raise ValueError("merge needs at least two stores")
    stores = [RegionFeatureStore(s) for s in sources]
    dims = {s.feat_dim for s in stores}
    if len(dims) != 1:
        raise ValueError(f"stores {[str(s.path) for s in stores]} have feature dimensions {[s.feat_dim for s in stores]}")
    owner: dict[str, Path] = {}
    for store in stores:
        for key in store.ids:
            if key in owner:
                raise ValueError(f"image {key!r} is in both {owner[key]} and {store.path}; convert the image sets with "
                                 "keys that cannot collide (e.g. --key-format coco_{num} and vg_{num})")
            owner[key] = store.path
    keep_soft, soft_note = soft_label_plan(stores)
    names = next((s.soft_label_names for s in stores if s.soft_label_names), None) if keep_soft else None
    with RegionFeatureWriter(out, stores[0].feat_dim, soft_label_names=names) as writer:
        for store in stores:
            for key in store.ids:
                width, height = store.image_size(key)
                feats, pos = store.get(key)
                boxes = pos[:, :4].numpy() * np.array([width, height, width, height], dtype=np.float32)
                writer.add(key, feats.numpy(), boxes, width, height,
                           soft_labels=store.get_soft_labels(key).numpy() if keep_soft else None)
    return {"images": len(owner), "per_store": {str(s.path): len(s) for s in stores}, "soft_labels": soft_note}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", nargs="+", required=True, help="stores whose images to join (keys must be distinct)")
    parser.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> int:
    try:
        summary = merge_stores(args.src, args.out)
    except (ValueError, FileNotFoundError) as err:  # a damaged store, a key in two stores: named, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} from {p}" for p, n in summary["per_store"].items())
    print(f"{args.out}: {summary['images']} images ({counts}); soft labels {summary['soft_labels']}")
    return 0
