"""How fast one loader process turns images into ViLT's pixels: JPEG files vs the image store.

    OMP_NUM_THREADS=1 python -m data_modules.bench_images [--n 200] [--size 640x480] [--workdir DIR]

Writes ``--n`` synthetic photograph-like JPEGs (smooth gradients plus noise, quality 90, the size of
a typical COCO image) into a temporary folder, converts them into an uncompressed image store, and
times, in this process with one thread, images/s of: decode + resize (``ImageFolder.get``), store
reads (``ImageStore.get``, random order), and the batch's normalise + pad (``collate_pixels``, per
image). Prints one JSON line.

Example:
    >>> from data_modules.bench_images import bench
    >>> bench(n=4)["folder_images_per_s"] > 0     # doctest: +SKIP
    True

Raises:
    ValueError: a ``--size`` that is not WIDTHxHEIGHT.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .convert.images import convert_images
from .images import ImageFolder, ImageStore
from .pixels import ImageTransform, collate_pixels


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.random(3) * 6.28
    base = np.stack([127 + 100 * np.sin(xx / (20 + 30 * rng.random()) + phase[c]) * np.cos(yy / 37 + phase[c])
                     for c in range(3)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8), "RGB")


def _rate(fn, keys) -> float:
    start = time.perf_counter()
    for key in keys:
        fn(key)
    return len(keys) / (time.perf_counter() - start)


def bench(n: int = 200, size: tuple[int, int] = (640, 480), workdir: Optional[str] = None, batch: int = 32) -> dict:
    """The figures as a dict (images/s per one process, one thread)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src = Path(tmp) / "jpegs"
        src.mkdir()
        for i in range(n):
            _photo(rng, *size).save(src / f"img{i:05d}.jpg", quality=90)
        jpeg_kib = sum(p.stat().st_size for p in src.iterdir()) / n / 1024
        transform = ImageTransform()
        folder = ImageFolder(src, transform, cache_dir=Path(tmp) / "cache")
        keys = sorted(folder.index)
        random.Random(0).shuffle(keys)
        folder_rate = _rate(folder.get, keys)
        conversion = convert_images(src, Path(tmp) / "store.h5", transform)
        store = ImageStore(Path(tmp) / "store.h5", transform)
        store.get(keys[0])  # open the file once
        store_rate = _rate(store.get, keys)
        pixels = [store.get(k) for k in keys[:batch]]
        start = time.perf_counter()
        collate_pixels(pixels)
        collate_rate = len(pixels) / (time.perf_counter() - start)
        store_kib = (Path(tmp) / "store.h5").stat().st_size / n / 1024
    per_image = {"folder": 1 / folder_rate + 1 / collate_rate, "store": 1 / store_rate + 1 / collate_rate}
    return {"images": n, "size": list(size), "resized_to": list(transform.output_size(*size)[::-1]),
            "jpeg_kib": round(jpeg_kib, 1), "store_kib": round(store_kib, 1),
            "folder_images_per_s": round(folder_rate, 1), "store_images_per_s": round(store_rate, 1),
            "collate_images_per_s": round(collate_rate, 1),
            "folder_end_to_end_images_per_s": round(1 / per_image["folder"], 1),
            "store_end_to_end_images_per_s": round(1 / per_image["store"], 1),
            "conversion_images_per_s": conversion["images_per_s"]}


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m data_modules.bench_images", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the synthetic JPEGs")
    ap.add_argument("--workdir", default=None, help="where the temporary folder goes (default: the system's)")
    args = ap.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2
    except (ValueError, AssertionError):
        raise ValueError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    result = bench(args.n, size, args.workdir)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
