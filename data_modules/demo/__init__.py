"""Generate the offline demo world: region features, a WordPiece vocabulary and task files.

    python -m data_modules.demo --out data/demo        (or: lightning-vl demo --out data/demo)

writes ``features.h5`` (the project's region-feature store), ``images.h5`` (the scenes of the
parts in ``IMAGE_PARTS`` drawn as 160 x 128 images, an image store for pixel models:
``data_modules.demo.draw``, ``data_modules.images``), ``tokenizer/vocab.txt``, every
task's files in its public schema (``nlvr2/{train,dev,test}.json``, ...), the pre-training corpus
(``pretrain/captions_{train,val}.jsonl`` + its own store ``pretrain/features.h5`` with soft
labels, ``data_modules.demo.pretrain``), ``manifest.json`` (seed, sizes, label balance per
template) and, last, ``.complete``. Deterministic by seed; takes seconds.

The world's parts are the tasks' ``TaskInfo.demo`` (``lightning_vl/tasks/names.py``): a part's name,
its generator module in this package, and its place in the world. A generator exposes
``DEFAULT_SIZES`` and ``generate()``; its own options come from ``demo_options(settings)``, sizes
fixed by options from ``demo_sizes(settings)``, and ``demo_skipped(settings)`` leaves it out
(``settings``: ``generate_demo``'s keyword arguments).
"""
from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from lightning_vl.tasks.names import DEMO_PARTS, TASK_INFO, TASK_NAMES

from ..convert.writer import RegionFeatureWriter
from . import nlvr2 as nlvr2_demo
from .vocab import write_vocab
from .world import FeatureRenderer, Scene, WorldConfig

TASKS = tuple(DEMO_PARTS)  # the world's parts, in the order they are written
SPLITS = ("train", "dev", "test")
# the parts whose scenes are also drawn into images.h5: those of the tasks whose data modules read
# images (``TaskInfo.reads_images``, ``VLDataModule.supports_images``), the pre-training corpus
# among them; a ViLT demo config sets ``images: data/demo/images.h5`` and ``image_size: 128``
# (``DEMO_IMAGE_TRANSFORM``; configs/demo/backbone/vilt.yaml, configs/demo/pretrain-vilt.yaml)
IMAGE_PARTS = tuple(p for p in TASKS if any(t.reads_images and t.demo.name == p for t in TASK_INFO.values()))


class RecordingRenderer(FeatureRenderer):
    """The feature renderer that also keeps every scene it renders (by image id), so the scenes a
    part writes into the store can be drawn after it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scenes: dict[str, Scene] = {}

    def render_regions(self, scene, rng, shuffle=True):
        self.scenes[scene.image_id] = scene
        return super().render_regions(scene, rng, shuffle)


@dataclass
class DemoContext:
    """What a task generator gets: the world, the feature renderer, its own random streams (seeded
    by the world seed and the task name, so one task's files do not change when another task is
    added) and the task's options (e.g. NLVR2 templates)."""

    seed: int
    world: WorldConfig
    renderer: FeatureRenderer
    scene_rng: np.random.Generator
    render_rng: np.random.Generator
    options: dict = field(default_factory=dict)


@dataclass
class DemoTaskResult:
    """What a task generator wrote: ``files`` (name -> path, e.g. ``{"train": ..., "ans2label": ...}``),
    ``texts`` (every sentence, for the demo vocabulary) and its ``manifest`` entry. ``image_ids``:
    the scenes it wrote into a store of its own (the pre-training corpus's), in order, for
    ``images.h5``; None = the scenes it added to the world's ``features.h5``."""

    files: dict[str, str]
    texts: list[str]
    manifest: dict
    image_ids: Optional[list[str]] = None


def demo_generator(task: str) -> str:
    """The part (a ``TASKS`` name) that writes a model task's demo files (``configs/demo/<task>.yaml``
    reads them); both Flickr30k retrieval directions share one part."""
    if task not in TASK_INFO:
        raise ValueError(f"no demo data for task {task!r}; demo tasks: {list(TASK_NAMES)}")
    return TASK_INFO[task].demo.name


def task_module(task: str):
    """The generator module of the world's part ``task``."""
    if task not in DEMO_PARTS:
        raise ValueError(f"demo task {task!r} is not generated; known: {list(DEMO_PARTS)}")
    return importlib.import_module(DEMO_PARTS[task].generator)


def _hook(module, name: str, settings: dict, default):
    """A generator's optional ``name(settings)``, or ``default`` where it has none."""
    hook = getattr(module, name, None)
    return default if hook is None else hook(settings)


def _task_seed(task: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(task))  # stable across runs, unlike hash()


def generate_demo(
    out_dir: str | Path,
    seed: int = 0,
    feat_dim: int = 128,
    n_train: Optional[int] = None,
    n_dev: Optional[int] = None,
    n_test: Optional[int] = None,
    tasks: tuple[str, ...] = TASKS,
    mark_complete: bool = True,
    num_colors: int = WorldConfig.num_colors,
    num_shapes: int = WorldConfig.num_shapes,
    min_objects: int = WorldConfig.min_objects,
    max_objects: int = WorldConfig.max_objects,
    noise: float = WorldConfig.noise,
    focus: float = WorldConfig.focus,
    nlvr2_templates: tuple[str, ...] = nlvr2_demo.DEFAULT_TEMPLATES,
    scale: float = 1.0,
    vocab_size: Optional[int] = None,
    pretrain_scenes: Optional[int] = None,
    pretrain_val: Optional[int] = None,
    caption_style: str = "dense",
    images: bool = True,
) -> dict[str, str]:
    """Write the demo world into ``out_dir``; returns ``{name: path}`` of what was written
    (``<task>_<file>``, e.g. ``nlvr2_train``, plus ``features``, ``tokenizer``, ``manifest``).

    Sizes: each task's ``DEFAULT_SIZES`` times ``scale``; ``n_train`` / ``n_dev`` / ``n_test``
    replace them for every task (tests use small worlds). ``mark_complete=False`` leaves
    ``.complete`` to a caller that writes more (e.g. a model).
    Difficulty knobs: ``num_colors`` (<= 5), ``num_shapes`` (<= 4), objects per image, detector
    ``noise`` (std of the Gaussian added to unit-variance features), ``focus`` (how much image
    pairs over-represent what their statement mentions: higher = fewer "is it there at all"
    shortcuts, harder), ``nlvr2_templates`` (a subset of count, compare, both, spatial; default: both).
    ``vocab_size``: pad ``tokenizer/vocab.txt`` with ``[unused0]``, … to exactly this many tokens —
    give the demo model's ``model.uniter.vocab_size``, so that ids past the tokenizer (VCR's object
    tokens) are the rows the model appends for them; None = the real tokens only. A vocabulary
    whose real tokens are more than ``vocab_size`` is an error naming both numbers.
    Pre-training corpus (the ``pretrain`` part, in ``tasks`` by default): ``pretrain_scenes``
    captioned training scenes and ``pretrain_val`` validation scenes (default 20,000 and 1,000
    times ``scale``, or ``n_train`` / ``n_dev`` when those are given; ``pretrain_scenes=0`` writes
    none), captions in ``caption_style`` (``dense`` or ``counting``, see ``data_modules.demo.pretrain``).
    ``images``: also draw the scenes of the ``IMAGE_PARTS`` into ``images.h5`` (an image store,
    gzip-compressed: about 4 KiB an image), keyed like ``features.h5`` (the pre-training corpus's
    like its own ``pretrain/features.h5``).
    """
    settings = dict(nlvr2_templates=tuple(nlvr2_templates), pretrain_scenes=pretrain_scenes,
                    pretrain_val=pretrain_val, caption_style=caption_style)
    for task in tasks:
        task_module(task)
    from .pretrain import CAPTION_STYLES

    if caption_style not in CAPTION_STYLES:
        raise ValueError(f"caption_style {caption_style!r}: expected one of {', '.join(CAPTION_STYLES)}")
    for name, n in (("pretrain_scenes", pretrain_scenes), ("pretrain_val", pretrain_val)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"{name} must be a non-negative int or None, got {n!r}")
    tasks = tuple(t for t in tasks if not _hook(task_module(t), "demo_skipped", settings, False))
    given = {"train": n_train, "dev": n_dev, "test": n_test}
    if feat_dim <= 0 or scale <= 0 or any(n is not None and n < 0 for n in given.values()):
        raise ValueError(f"need feat_dim > 0, scale > 0 and non-negative sizes, got feat_dim={feat_dim}, "
                         f"scale={scale}, n_train={n_train}, n_dev={n_dev}, n_test={n_test}")
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0):
        raise ValueError(f"vocab_size must be a positive int or None, got {vocab_size!r}")
    world = WorldConfig(num_colors, num_shapes, min_objects, max_objects, noise, focus)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".complete").unlink(missing_ok=True)
    renderer = RecordingRenderer(feat_dim, seed, noise=world.noise)
    manifest: dict = {"format": "lightning-vl/demo-world", "version": 2, "seed": seed,
                      "feat_dim": feat_dim, "world": vars(world), "tasks": {}}
    paths: dict[str, str] = {}
    texts: list[str] = []
    drawn = [t for t in tasks if t in IMAGE_PARTS] if images else []
    image_writer = None
    if drawn:
        from ..convert.images import ImageStoreWriter
        from .draw import DEMO_IMAGE_SIZE, DEMO_IMAGE_TRANSFORM, draw_scene

        image_writer = ImageStoreWriter(out / "images.h5", DEMO_IMAGE_TRANSFORM, compression="gzip",
                                        meta={"source": "demo", "seed": seed, "parts": drawn})
    try:
        with RegionFeatureWriter(out / "features.h5", feat_dim) as writer:
            for task in tasks:
                module = task_module(task)
                sizes = {split: (given[split] if given[split] is not None else max(1, round(n * scale)))
                         for split, n in module.DEFAULT_SIZES.items()}
                # a part's own size options (the pre-training corpus's scenes)
                sizes.update({split: n for split, n in _hook(module, "demo_sizes", settings, {}).items() if n is not None})
                ctx = DemoContext(seed, world, renderer,
                                  scene_rng=np.random.default_rng([seed, 1, _task_seed(task)]),
                                  render_rng=np.random.default_rng([seed, 2, _task_seed(task)]),
                                  options=_hook(module, "demo_options", settings, {}))
                before = len(writer)
                result = module.generate(out, writer, ctx, sizes)
                if image_writer is not None and task in drawn:
                    for image_id in (writer.ids[before:] if result.image_ids is None else result.image_ids):
                        scene = renderer.scenes[image_id]
                        image_writer.add(image_id, draw_scene(scene, seed), orig_size=(scene.width, scene.height))
                renderer.scenes.clear()
                texts += result.texts
                paths.update({f"{task}_{name}": path for name, path in result.files.items()})
                manifest["tasks"][task] = {"sizes": sizes, "images": len(writer) - before, **result.manifest}
            num_images = len(writer)
    except BaseException:
        if image_writer is not None:
            image_writer.abort()
        raise
    if image_writer is not None:
        image_writer.close()
        paths["images"] = str(out / "images.h5")
        manifest["drawn_images"] = {"parts": drawn, "images": len(image_writer), "size": list(DEMO_IMAGE_SIZE),
                                    **DEMO_IMAGE_TRANSFORM.as_attrs()}
    else:
        (out / "images.h5").unlink(missing_ok=True)
    paths["features"] = str(out / "features.h5")
    paths["tokenizer"] = str(write_vocab(out / "tokenizer", texts, vocab_size))
    manifest["images"] = num_images
    vocab = (out / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    manifest["vocab_size"] = len(vocab)
    manifest["vocab_unused"] = sum(t.startswith("[unused") for t in vocab)  # padding to the model's vocab_size
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    paths["manifest"] = str(out / "manifest.json")
    if mark_complete:
        (out / ".complete").write_text(json.dumps(paths, indent=1) + "\n")
        paths["complete"] = str(out / ".complete")
    return paths


def argument_parser(prog: str = "python -m data_modules.demo",
                    description: str = "Generate the offline demo world.") -> argparse.ArgumentParser:
    """The world's options; ``lightning-vl demo`` adds the demo model's on top (an option it
    defines again replaces this one: same name, same meaning)."""
    ap = argparse.ArgumentParser(prog=prog, description=description, conflict_handler="resolve")
    ap.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--feat-dim", type=int, default=128, help="region feature dimension")
    ap.add_argument("--n-train", type=int, default=None, help="training examples of every task (default: each task's own)")
    ap.add_argument("--n-dev", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every task's default sizes")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--num-colors", type=int, default=WorldConfig.num_colors, help="colours in the world (1-5)")
    ap.add_argument("--num-shapes", type=int, default=WorldConfig.num_shapes, help="shapes in the world (1-4)")
    ap.add_argument("--min-objects", type=int, default=WorldConfig.min_objects)
    ap.add_argument("--max-objects", type=int, default=WorldConfig.max_objects,
                    help="objects per image at most (default 3; the earlier default world had 6)")
    ap.add_argument("--noise", type=float, default=WorldConfig.noise,
                    help="detector noise on unit-variance features (default 0.1; the earlier default 0.5)")
    ap.add_argument("--focus", type=float, default=WorldConfig.focus,
                    help="0-1: how much images over-represent what statements mention (higher = harder)")
    ap.add_argument("--nlvr2-templates", nargs="+", default=list(nlvr2_demo.DEFAULT_TEMPLATES),
                    choices=list(nlvr2_demo.TEMPLATES),
                    help="NLVR2 statement templates (default: both; the harder count, compare and spatial are "
                         "learnt only in ~3,000-step rounds)")
    ap.add_argument("--pretrain-scenes", type=int, default=None,
                    help="captioned scenes of the pre-training corpus (default 20,000 x --scale, or --n-train; 0: none)")
    ap.add_argument("--pretrain-val", type=int, default=None,
                    help="validation scenes of the pre-training corpus (default 1,000 x --scale, or --n-dev)")
    ap.add_argument("--caption-style", default="dense", choices=("dense", "counting"),
                    help="pre-training captions: every object with all attributes (dense), or counts and "
                         "left/right relations (counting)")
    ap.add_argument("--no-images", action="store_true",
                    help=f"do not draw the scenes of {', '.join(IMAGE_PARTS)} into images.h5 (pixel models' store)")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="pad the WordPiece vocabulary with [unused0], ... to exactly this many tokens: the demo "
                         "model's model.uniter.vocab_size (default: no padding)")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return argument_parser().parse_args(argv)


def generate_from_args(args: argparse.Namespace, mark_complete: bool = True) -> dict[str, str]:
    """``generate_demo`` with the options of ``argument_parser``."""
    return generate_demo(args.out, args.seed, args.feat_dim, args.n_train, args.n_dev, args.n_test,
                         tasks=tuple(args.tasks), scale=args.scale, num_colors=args.num_colors,
                         num_shapes=args.num_shapes, min_objects=args.min_objects, max_objects=args.max_objects,
                         noise=args.noise, focus=args.focus, nlvr2_templates=tuple(args.nlvr2_templates),
                         vocab_size=getattr(args, "vocab_size", None), mark_complete=mark_complete,
                         pretrain_scenes=getattr(args, "pretrain_scenes", None),
                         pretrain_val=getattr(args, "pretrain_val", None),
                         caption_style=getattr(args, "caption_style", "dense"),
                         images=not getattr(args, "no_images", False))


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    paths = generate_from_args(args)
    print(f"demo world written to {args.out}: " + ", ".join(sorted(paths)))
    return paths
