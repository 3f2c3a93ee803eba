"""The demo's pre-training corpus, written to files: captioned scenes with region features and the
detector's class distributions, read by ``data_modules.pretrain.PretrainDataModule`` as real
pre-training data is (COCO / Visual Genome / CC captions + an img_db with soft labels).

Files (under ``pretrain/``):

* ``captions_train.jsonl``, ``captions_val.jsonl``: JSON lines ``{"id", "image_id", "caption",
  "negatives"}`` — one caption per scene, and 1–2 hard negatives: the caption with one attribute
  word of one phrase changed so that it is false of the scene (for image-text matching);
* ``features.h5``: a region-feature store of its own (never a task image: fresh scenes of the same
  world, rendered with the same feature prototypes as the task files), **with soft labels**: the
  demo detector's class distribution over C = 1 + sizes × colours × materials × shapes classes
  (class 0 = background, for clutter regions; ``soft_label_names`` such as ``"small red metal
  cube"``). The detector scores every class by how many of the four attributes it shares with
  what the region shows, plus noise, and takes a softmax: mostly right (≈ 90 % arg-max accuracy
  on objects, less sure of small ones), its confusions almost all with classes sharing 3 of 4
  attributes.

Caption styles (``caption_style``):

* ``dense`` (default; what the demo model was pre-trained on so far): every object with all four
  attributes, objects in random order — "a small red metal cube, a large blue rubber sphere and a
  small green metal cylinder." A masked attribute word is recoverable from the image and the rest
  of its phrase, so masked language modelling has to bind words to regions.
* ``counting``: counts and left/right relations, the [CLS]-level facts the downstream tasks ask
  about (NLVR2 counts, comparisons and spatial statements, VQA counts and attributes, GQA,
  SNLI-VE) — "five objects, two red cubes, no green spheres, a large blue sphere left of a green
  cone." Each phrase is true of the scene: counts are exact, "a X left of a Y" means some X is
  left of some other Y.

Deterministic by the world seed; a few seconds for the default 20,000 + 1,000 scenes.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..convert.writer import RegionFeatureWriter
from .world import MATERIALS, SIZES, ObjectSpec, Scene, WorldConfig, make_scene

DEFAULT_SIZES = {"train": 20000, "dev": 1000}
SPLIT_FILES = {"train": "captions_train.jsonl", "dev": "captions_val.jsonl"}
SPLIT_NAMES = {"train": "train", "dev": "val"}
CAPTION_STYLES = ("dense", "counting")
ATTRIBUTES = ("size", "color", "material", "shape")  # word order of a phrase (and of a class name)
NUMBER_WORDS = ("no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
BACKGROUND = "background"
# the demo detector: logit of class c = SHARPNESS * (attributes c shares with the region) + noise
SHARPNESS = 3.0
SMALL_OBJECT_SHARPNESS = 0.85  # small objects are classified less surely
LOGIT_NOISE = 1.0


def attribute_values(world: WorldConfig) -> dict[str, tuple[str, ...]]:
    return {"size": SIZES, "color": world.colors, "material": MATERIALS, "shape": world.shapes}


def class_names(world: WorldConfig) -> list[str]:
    """``["background", "small red metal cube", ...]``: the soft labels' classes, index 0 = background."""
    values = attribute_values(world)
    return [BACKGROUND] + [" ".join(c) for c in itertools.product(*(values[a] for a in ATTRIBUTES))]


@functools.lru_cache(maxsize=8)
def class_attributes(world: WorldConfig) -> np.ndarray:
    """(C - 1, 4) int: each object class's value index per attribute (``ATTRIBUTES`` order)."""
    values = attribute_values(world)
    return np.asarray(list(itertools.product(*(range(len(values[a])) for a in ATTRIBUTES))), dtype=np.int64)


def class_index(obj, world: WorldConfig) -> int:
    """The soft-label class of an object (1 .. C - 1)."""
    values = attribute_values(world)
    index = 0
    for a in ATTRIBUTES:
        index = index * len(values[a]) + values[a].index(getattr(obj, a))
    return 1 + index


def detector_soft_labels(scene: Scene, source: np.ndarray, world: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """(n, C) float32 class distributions of the regions ``source`` describes (object index, or -1
    for clutter): a softmax of ``SHARPNESS`` × shared attributes plus Gaussian noise, peaking at the
    true class (background for clutter)."""
    attrs = class_attributes(world)
    values = attribute_values(world)
    n = len(source)
    noise = rng.standard_normal((n, 1 + len(attrs))) * LOGIT_NOISE
    jitter = rng.uniform(0.85, 1.15, n)
    is_object = source >= 0
    truth = np.asarray([[values[a].index(getattr(scene.objects[int(k)], a)) for a in ATTRIBUTES] if k >= 0 else
                        [-1] * len(ATTRIBUTES) for k in source], dtype=np.int64).reshape(n, len(ATTRIBUTES))
    shared = (attrs[None, :, :] == truth[:, None, :]).sum(axis=2).astype(np.float64)  # (n, C - 1)
    # clutter: background (as if sharing all four attributes), every object class as a one-attribute match
    background = np.where(is_object, 1.0, 4.0)
    shared[~is_object] = 1.0
    small = np.asarray([k >= 0 and scene.objects[int(k)].size == "small" for k in source])
    scale = SHARPNESS * np.where(small, SMALL_OBJECT_SHARPNESS, 1.0) * jitter
    logits = np.concatenate([background[:, None], shared], axis=1) * scale[:, None] + noise
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    out = p / p.sum(axis=1, keepdims=True)
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------ captions

@dataclass(frozen=True)
class Clause:
    """One phrase of a caption: ``object`` (dense: one object, every attribute), ``count`` (exactly
    ``count`` objects match ``specs[0]``) or ``relation`` (some ``specs[0]`` is ``side`` of some
    other ``specs[1]``)."""

    kind: str
    specs: tuple[ObjectSpec, ...]
    count: int = 0
    side: str = ""

    def text(self) -> str:
        if self.kind == "object":
            return self.specs[0].with_article()
        if self.kind == "count":
            return count_phrase(self.count, self.specs[0])
        return f"{self.specs[0].with_article()} {self.side} of {self.specs[1].with_article()}"

    def holds(self, scene: Scene) -> bool:
        if self.kind == "count":
            return scene.count(self.specs[0]) == self.count
        if self.kind == "relation":
            a, b = self.specs if self.side == "left" else self.specs[::-1]
            return scene.left_of(a, b)
        raise ValueError("object clauses are true or false only as a whole caption (caption_holds)")


def count_phrase(n: int, spec: ObjectSpec) -> str:
    """"no red spheres", "a red sphere", "two red spheres", "12 objects"."""
    if n == 1:
        return spec.with_article()
    number = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    return f"{number} {spec.noun_phrase(plural=True)}"


def caption_text(clauses: Sequence[Clause]) -> str:
    phrases = [c.text() for c in clauses]
    body = ", ".join(phrases[:-1]) + " and " + phrases[-1] if len(phrases) > 1 else phrases[0]
    return body + "."


def _full_spec(obj) -> ObjectSpec:
    return ObjectSpec(color=obj.color, shape=obj.shape, size=obj.size, material=obj.material)


def caption_holds(clauses: Sequence[Clause], scene: Scene) -> bool:
    """Whether the caption is true of the scene: a dense caption lists exactly the scene's
    objects; any other, every phrase holds."""
    if clauses and all(c.kind == "object" for c in clauses):
        return Counter(c.specs[0] for c in clauses) == Counter(_full_spec(o) for o in scene.objects)
    return all(c.holds(scene) for c in clauses)


def dense_clauses(scene: Scene, rng: np.random.Generator) -> list[Clause]:
    """Every object with all four attributes, in random order."""
    order = rng.permutation(len(scene.objects))
    return [Clause("object", (_full_spec(scene.objects[i]),)) for i in order]


def _partial_spec(obj, rng: np.random.Generator) -> ObjectSpec:
    """Some of ``obj``'s attributes: the shape mostly, the colour often, size and material sometimes."""
    u = rng.random(4)
    spec = ObjectSpec(shape=obj.shape if u[0] < 0.8 else None, color=obj.color if u[1] < 0.6 else None,
                      size=obj.size if u[2] < 0.4 else None, material=obj.material if u[3] < 0.3 else None)
    return spec if spec != ObjectSpec() else ObjectSpec(shape=obj.shape)


def counting_clauses(scene: Scene, rng: np.random.Generator, world: WorldConfig) -> list[Clause]:
    """Counts (of all objects sometimes, of described objects, now and then of something absent)
    and 0–2 left/right relations, each true of the scene, in random order."""
    objects = scene.objects
    clauses = []
    if rng.random() < 0.5:
        clauses.append(Clause("count", (ObjectSpec(),), len(objects)))
    for _ in range(int(rng.integers(1, 4))):
        spec = _partial_spec(objects[int(rng.integers(len(objects)))], rng)
        clauses.append(Clause("count", (spec,), scene.count(spec)))
    if rng.random() < 0.3:  # a description drawn from the palette, often absent: "no green spheres"
        values = attribute_values(world)
        probe = ObjectSpec(**{a: values[a][int(rng.integers(len(values[a])))] for a in ATTRIBUTES})
        spec = _partial_spec(probe, rng)
        clauses.append(Clause("count", (spec,), scene.count(spec)))
    if len(objects) >= 2:
        for _ in range(int(rng.integers(0, 3))):
            i, j = (int(v) for v in rng.choice(len(objects), size=2, replace=False))
            a, b = objects[i], objects[j]
            side = "left" if a.center_x < b.center_x else "right"
            clauses.append(Clause("relation", (_partial_spec(a, rng), _partial_spec(b, rng)), side=side))
    unique = list({c.text(): c for c in clauses}.values())
    return [unique[k] for k in rng.permutation(len(unique))]


def make_clauses(scene: Scene, rng: np.random.Generator, world: WorldConfig, style: str) -> list[Clause]:
    if style == "dense":
        return dense_clauses(scene, rng)
    if style == "counting":
        return counting_clauses(scene, rng, world)
    raise ValueError(f"caption_style {style!r}: expected one of {', '.join(CAPTION_STYLES)}")


def hard_negatives(clauses: Sequence[Clause], scene: Scene, rng: np.random.Generator, world: WorldConfig,
                   k: int) -> list[str]:
    """Up to ``k`` distinct captions equal to ``clauses`` but for one attribute word of one phrase,
    each false of the scene (candidates tried in random order)."""
    values = attribute_values(world)
    candidates = [(ci, si, a, v) for ci, c in enumerate(clauses) for si, spec in enumerate(c.specs)
                  for a in ATTRIBUTES if getattr(spec, a) is not None for v in values[a] if v != getattr(spec, a)]
    own = caption_text(clauses)
    out: list[str] = []
    for n in rng.permutation(len(candidates)):
        ci, si, a, v = candidates[int(n)]
        specs = list(clauses[ci].specs)
        specs[si] = dataclasses.replace(specs[si], **{a: v})
        changed = list(clauses)
        changed[ci] = dataclasses.replace(clauses[ci], specs=tuple(specs))
        text = caption_text(changed)
        if text != own and text not in out and not caption_holds(changed, scene):
            out.append(text)
            if len(out) == k:
                break
    return out


def caption_with_negatives(scene: Scene, rng: np.random.Generator, world: WorldConfig,
                           style: str = "dense", max_tries: int = 50) -> tuple[str, list[str]]:
    """A caption true of ``scene`` and 1–2 hard negatives (a caption admitting none is redrawn)."""
    k = 1 + int(rng.random() < 0.5)
    for _ in range(max_tries):
        clauses = make_clauses(scene, rng, world, style)
        negatives = hard_negatives(clauses, scene, rng, world, k)
        if negatives:
            return caption_text(clauses), negatives
    raise ValueError(f"scene {scene.image_id}: no {style} caption with a false one-word variant in {max_tries} tries")


# ---------------------------------------------------------------------------------------- generator

def demo_options(settings: dict) -> dict:
    """This part's options from ``generate_demo``'s: the caption style."""
    return {"caption_style": settings["caption_style"]}


def demo_sizes(settings: dict) -> dict:
    """Sizes its own options fix (None: the usual ``DEFAULT_SIZES`` × scale or ``n_train`` / ``n_dev``)."""
    return {"train": settings["pretrain_scenes"], "dev": settings["pretrain_val"]}


def demo_skipped(settings: dict) -> bool:
    """``pretrain_scenes=0`` writes no corpus."""
    return settings["pretrain_scenes"] == 0


def generate(out: Path, writer: RegionFeatureWriter, ctx, sizes: dict[str, int]):
    """Write ``pretrain/`` (see the module docstring); the task store ``writer`` is left alone."""
    from . import DemoTaskResult

    style = ctx.options.get("caption_style", "dense")
    if style not in CAPTION_STYLES:
        raise ValueError(f"caption_style {style!r}: expected one of {', '.join(CAPTION_STYLES)}")
    world, renderer = ctx.world, ctx.renderer
    root = Path(out) / "pretrain"
    root.mkdir(parents=True, exist_ok=True)
    soft_rng = np.random.default_rng([ctx.seed, 5, 1601])
    names = class_names(world)
    files = {SPLIT_NAMES[s]: str(root / name) for s, name in SPLIT_FILES.items()}
    files["features"] = str(root / "features.h5")
    texts: list[str] = []
    image_ids: list[str] = []  # every scene, in order: the world draws them into images.h5 (pixel models)
    splits: dict[str, dict] = {}
    with RegionFeatureWriter(files["features"], renderer.feat_dim, soft_label_names=names) as store:
        for split, filename in SPLIT_FILES.items():
            name = SPLIT_NAMES[split]
            lines, regions, negatives, right, objects, clutter = [], 0, 0, 0, 0, 0
            for k in range(sizes.get(split, 0)):
                image_id = f"pretrain-{name}-{k}"
                scene = make_scene(ctx.scene_rng, image_id, world=world)
                feats, boxes, source = renderer.render_regions(scene, ctx.render_rng)
                soft = detector_soft_labels(scene, source, world, soft_rng)
                store.add(image_id, feats, boxes, scene.width, scene.height, soft_labels=soft)
                image_ids.append(image_id)
                caption, negs = caption_with_negatives(scene, ctx.scene_rng, world, style)
                lines.append(json.dumps({"id": image_id, "image_id": image_id, "caption": caption, "negatives": negs}))
                texts += [caption, *negs]
                regions += len(source)
                negatives += len(negs)
                is_object = source >= 0
                truth = np.asarray([class_index(scene.objects[i], world) if i >= 0 else 0 for i in source])
                right += int((soft.argmax(axis=1) == truth)[is_object].sum())
                objects += int(is_object.sum())
                clutter += int((~is_object).sum())
            (root / filename).write_text("".join(line + "\n" for line in lines))
            splits[name] = {"examples": len(lines), "images": len(lines), "regions": regions, "object_regions": objects,
                            "background_regions": clutter, "negatives": negatives,
                            "detector_accuracy": round(right / objects, 4) if objects else None}
    manifest = {"images": sum(v["images"] for v in splits.values()), "store": files["features"][len(str(out)) + 1:],
                "caption_style": style, "soft_label_dim": len(names), "soft_label_names": names[:3] + ["..."],
                "files": {k: str(Path(v).relative_to(out)) for k, v in files.items()}, "splits": splits}
    return DemoTaskResult(files=files, texts=texts, manifest=manifest, image_ids=image_ids)
