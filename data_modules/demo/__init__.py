"""Generate the offline demo world: region features, a WordPiece vocabulary and task files.

    python -m data_modules.demo --out data/demo        (or: lightning-vl demo --out data/demo)

writes ``features.h5`` (the project's region-feature store), ``tokenizer/vocab.txt``,
``nlvr2/{train,dev,test}.json`` in NLVR2's public schema, ``manifest.json`` (seed, sizes, label
balance per template) and, last, ``.complete``. Deterministic by seed; takes seconds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..features import RegionFeatureWriter
from . import nlvr2 as nlvr2_demo
from .vocab import write_vocab
from .world import FeatureRenderer, WorldConfig

TASKS = ("nlvr2",)
SPLITS = ("train", "dev", "test")


def generate_demo(
    out_dir: str | Path,
    seed: int = 0,
    feat_dim: int = 128,
    n_train: int = 6000,
    n_dev: int = 1000,
    n_test: int = 1000,
    tasks: tuple[str, ...] = ("nlvr2",),
    mark_complete: bool = True,
    num_colors: int = 4,
    num_shapes: int = 3,
    min_objects: int = 1,
    max_objects: int = 6,
    noise: float = 0.5,
    focus: float = 0.3,
    nlvr2_templates: tuple[str, ...] = tuple(nlvr2_demo.TEMPLATES),
) -> dict[str, str]:
    """Write the demo world into ``out_dir``; returns ``{name: path}`` of what was written.

    ``mark_complete=False`` leaves ``.complete`` to a caller that writes more (e.g. a model).
    Difficulty knobs: ``num_colors`` (<= 5), ``num_shapes`` (<= 4), objects per image, detector
    ``noise`` (std of the Gaussian added to unit-variance features), ``focus`` (how much image
    pairs over-represent what their statement mentions: higher = fewer "is it there at all"
    shortcuts, harder), ``nlvr2_templates`` (a
    subset of count, compare, both, spatial).
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"demo tasks {unknown} are not generated yet; known: {list(TASKS)}")
    if feat_dim <= 0 or min(n_train, n_dev, n_test) < 0:
        raise ValueError(f"need feat_dim > 0 and non-negative sizes, got feat_dim={feat_dim}, "
                         f"n_train={n_train}, n_dev={n_dev}, n_test={n_test}")
    world = WorldConfig(num_colors, num_shapes, min_objects, max_objects, noise, focus)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".complete").unlink(missing_ok=True)
    scene_rng = np.random.default_rng([seed, 1])
    render_rng = np.random.default_rng([seed, 2])
    renderer = FeatureRenderer(feat_dim, seed, noise=world.noise)
    sizes = dict(zip(SPLITS, (n_train, n_dev, n_test)))
    manifest: dict = {"format": "lightning-vl/demo-world", "version": 1, "seed": seed,
                      "feat_dim": feat_dim, "sizes": sizes, "world": vars(world), "tasks": {}}
    paths: dict[str, str] = {}
    texts: list[str] = []
    num_images = 0
    with RegionFeatureWriter(out / "features.h5", feat_dim) as writer:
        if "nlvr2" in tasks:
            (out / "nlvr2").mkdir(exist_ok=True)
            manifest["tasks"]["nlvr2"] = {}
            for split, n in sizes.items():
                records, scenes, stats = nlvr2_demo.make_split(split, n, scene_rng, world, tuple(nlvr2_templates))
                for scene in scenes:
                    feats, boxes = renderer.render(scene, render_rng)
                    writer.add(scene.image_id, feats, boxes, scene.width, scene.height)
                path = out / "nlvr2" / f"{split}.json"
                path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
                texts += [r["sentence"] for r in records]
                paths[f"nlvr2_{split}"] = str(path)
                num_true = sum(r["label"] == "True" for r in records)
                manifest["tasks"]["nlvr2"][split] = {
                    "examples": len(records),
                    "sentences": len({r["sentence"] for r in records}),
                    "images": len(scenes),
                    "true_rate": num_true / len(records) if records else None,
                    "templates": stats,
                }
        num_images = len(writer)
    paths["features"] = str(out / "features.h5")
    paths["tokenizer"] = str(write_vocab(out / "tokenizer", texts))
    manifest["images"] = num_images
    manifest["vocab_size"] = len((out / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").splitlines())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    paths["manifest"] = str(out / "manifest.json")
    if mark_complete:
        (out / ".complete").write_text(json.dumps(paths, indent=1) + "\n")
        paths["complete"] = str(out / ".complete")
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m data_modules.demo", description="Generate the offline demo world.")
    ap.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--feat-dim", type=int, default=128, help="region feature dimension")
    ap.add_argument("--n-train", type=int, default=6000, help="NLVR2 training statements")
    ap.add_argument("--n-dev", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--num-colors", type=int, default=4, help="colours in the world (1-5)")
    ap.add_argument("--num-shapes", type=int, default=3, help="shapes in the world (1-4)")
    ap.add_argument("--min-objects", type=int, default=1)
    ap.add_argument("--max-objects", type=int, default=6)
    ap.add_argument("--noise", type=float, default=0.5, help="detector noise on unit-variance features")
    ap.add_argument("--focus", type=float, default=0.3,
                    help="0-1: how much images over-represent what statements mention (higher = harder)")
    ap.add_argument("--nlvr2-templates", nargs="+", default=list(nlvr2_demo.TEMPLATES),
                    choices=list(nlvr2_demo.TEMPLATES))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    paths = generate_demo(args.out, args.seed, args.feat_dim, args.n_train, args.n_dev, args.n_test,
                          tasks=tuple(args.tasks), num_colors=args.num_colors, num_shapes=args.num_shapes,
                          min_objects=args.min_objects, max_objects=args.max_objects, noise=args.noise, focus=args.focus,
                          nlvr2_templates=tuple(args.nlvr2_templates))
    print(f"demo world written to {args.out}: " + ", ".join(sorted(paths)))
    return paths
