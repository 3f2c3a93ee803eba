"""RefCOCO+-style referring expressions about demo scenes, in the refer toolkit's files.

Writes ``refcoco+/refs(unc).p`` (a protocol-2 pickle of plain dicts and lists, like the released
file) and ``refcoco+/instances.json`` (COCO instances: every object of every image annotated,
the demo's shapes as categories). COCO image ids start at 5,000,000 (store key ``str(id)``),
annotation ids at 50,000,000.

Scenes over-represent one colour and one shape, so most objects share an attribute with a
distractor. Each referred object gets 1-3 expressions, RefCOCO+-style: appearance words and
relations to other objects, never absolute positions. Every expression matches exactly one object
of its image — checked against the scene when it is written — and it names only some attributes,
so both the words and the regions must be read. The referred object's region is at a uniformly
random place among the shuffled regions (objects and clutter), so no region index, box size or
text alone gives it away.

Splits partition images, like UNC's: ``train``, ``val``, ``testA`` (only objects of the first
shape are referred to, as testA refers to people) and ``testB`` (only other shapes).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import pickle
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .world import SHAPES, ObjectSpec, Scene, SceneObject, WorldConfig, make_scene

FOLDER = "refcoco+"
IMAGE_ID_START = 5_000_000
ANN_ID_START = 50_000_000
ATTRIBUTES = ("size", "color", "material", "shape")
NOUNS = ("object", "thing", "one")
# Expression kinds and how often each is drawn. Measured with the tiny UNITER (300 steps,
# configs/demo.yaml): this mix gives dev acc 0.57 (a random object 0.24, a random region 0.16);
# with relations at 0.35 it stayed at 0.24 (the model learnt "not clutter" and nothing more).
KINDS = {"minimal": 0.6, "relation": 0.2, "full": 0.2}
SPLITS = {"train": "train", "dev": "val"}  # DEFAULT_SIZES key -> refs split; "test" -> testA + testB


@dataclass(frozen=True)
class Expression:
    """A referring expression and what it means: the target's description, and optionally an
    anchor object it is next to."""

    kind: str
    text: str
    target: ObjectSpec
    anchor: Optional[ObjectSpec] = None

    def matches(self, scene: Scene) -> list[int]:
        """Indices of the scene's objects the expression fits."""
        fits = [i for i, o in enumerate(scene.objects) if self.target.matches(o)]
        if self.anchor is None:
            return fits
        return [i for i in fits if any(self.anchor.matches(scene.objects[j]) for j in neighbours(scene, i))]


def neighbours(scene: Scene, i: int) -> list[int]:
    """Objects directly beside object ``i`` in left-to-right order ("next to")."""
    order = sorted(range(len(scene.objects)), key=lambda k: scene.objects[k].center_x)
    pos = order.index(i)
    return [order[p] for p in (pos - 1, pos + 1) if 0 <= p < len(order)]


def _spec(obj: SceneObject, attrs) -> ObjectSpec:
    return ObjectSpec(**{a: getattr(obj, a) for a in attrs})


def _phrase(spec: ObjectSpec, rng: np.random.Generator) -> str:
    """``"large red cube"``, ``"rubber thing"``: no article, no plural."""
    noun = spec.shape or NOUNS[int(rng.integers(len(NOUNS)))]
    return " ".join(w for w in (spec.size, spec.color, spec.material, noun) if w)


SUBSETS = [attrs for r in range(1, len(ATTRIBUTES) + 1) for attrs in itertools.combinations(range(len(ATTRIBUTES)), r)]


class _SceneIndex:
    """Per-scene lookups the expression search repeats: attribute tuples, left-to-right
    neighbours and, per object, the inclusion-minimal attribute subsets that single it out."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.values = [tuple(getattr(o, a) for a in ATTRIBUTES) for o in scene.objects]
        order = sorted(range(len(scene.objects)), key=lambda k: scene.objects[k].center_x)
        self.neighbours = {order[p]: [order[q] for q in (p - 1, p + 1) if 0 <= q < len(order)]
                           for p in range(len(order))}
        self._unique: dict[int, list[ObjectSpec]] = {}

    def count(self, i: int, attrs) -> int:
        """Objects sharing object ``i``'s values of ``attrs`` (attribute indices), ``i`` included."""
        mine = self.values[i]
        return sum(all(v[a] == mine[a] for a in attrs) for v in self.values)

    def unique_specs(self, i: int) -> list[ObjectSpec]:
        if i not in self._unique:
            found: list[tuple[int, ...]] = []
            for attrs in SUBSETS:
                if not any(set(f).issubset(attrs) for f in found) and self.count(i, attrs) == 1:
                    found.append(attrs)
            obj = self.scene.objects[i]
            self._unique[i] = [_spec(obj, [ATTRIBUTES[a] for a in attrs]) for attrs in found]
        return self._unique[i]


def _expression(kind: str, index: _SceneIndex, i: int, rng: np.random.Generator) -> Optional[Expression]:
    """An expression of ``kind`` that fits object ``i`` alone, or None if the scene allows none."""
    scene = index.scene
    obj = scene.objects[i]
    if kind == "full":
        spec = _spec(obj, ATTRIBUTES)
        expr = Expression(kind, _phrase(spec, rng), spec)
    elif kind == "minimal":
        specs = index.unique_specs(i)
        if not specs:
            return None
        spec = specs[int(rng.integers(len(specs)))]
        expr = Expression(kind, _phrase(spec, rng), spec)
    else:  # relation: an ambiguous description made unique by a uniquely described neighbour
        options = []
        for attrs in (("shape",), ("color",), ("color", "shape"), ("size", "shape")):
            if index.count(i, [ATTRIBUTES.index(a) for a in attrs]) < 2:
                continue  # the relation must be needed
            spec = _spec(obj, attrs)
            for j in index.neighbours[i]:
                for anchor in index.unique_specs(j):
                    options.append((spec, anchor))
        rng.shuffle(options)
        for spec, anchor in options:
            expr = Expression(kind, f"{_phrase(spec, rng)} next to the {_phrase(anchor, rng)}", spec, anchor)
            if expr.matches(scene) == [i]:
                break
        else:
            return None
    if expr.matches(scene) != [i]:
        return None
    if rng.random() < 0.3:
        expr = dataclasses.replace(expr, text="the " + expr.text)
    return expr


def _expressions(index: _SceneIndex, i: int, n: int, rng: np.random.Generator) -> list[Expression]:
    """Up to ``n`` different expressions for object ``i`` (kinds drawn by ``KINDS``)."""
    names, weights = list(KINDS), np.array(list(KINDS.values()))
    out: list[Expression] = []
    for _ in range(3 * n):
        if len(out) == n:
            break
        expr = _expression(names[int(rng.choice(len(names), p=weights / weights.sum()))], index, i, rng)
        if expr is not None and all(expr.text.removeprefix("the ") != e.text.removeprefix("the ") for e in out):
            out.append(expr)
    return out


def _round_boxes(scene: Scene) -> Scene:
    """Boxes on a 0.01-pixel grid, so instances.json and the store hold the same numbers."""
    objects = tuple(dataclasses.replace(o, box=tuple(round(v, 2) for v in o.box)) for o in scene.objects)
    return dataclasses.replace(scene, objects=objects)


@dataclass
class RefSplit:
    refs: list[dict]
    scenes: list[Scene]
    annotations: list[dict]
    expressions: list[Expression]  # one per sentence, in refs order
    targets: list[int]  # index of each sentence's referred object in its scene


class _Ids:
    """Running COCO ids across splits, so every id is unique in the two files."""

    def __init__(self):
        self.image, self.ann, self.ref, self.sent = IMAGE_ID_START, ANN_ID_START, 0, 0


def make_split(split: str, n: int, rng: np.random.Generator, world: WorldConfig, ids: _Ids,
               shapes: Optional[tuple[str, ...]] = None, max_tries: int = 1000) -> RefSplit:
    """``n`` expressions (sentences) of refs to objects whose shape is in ``shapes`` (None: any)."""
    eligible_shapes = tuple(world.shapes if shapes is None else shapes)
    if n > 0 and not eligible_shapes:
        raise ValueError(f"demo RefCOCO+ split {split!r}: no shapes to refer to in a world with shapes {world.shapes} "
                         "(testB needs at least two shapes)")
    # at least three objects, so distractors exist (if the world allows)
    scene_world = dataclasses.replace(world, min_objects=min(max(world.min_objects, 3), world.max_objects))
    out = RefSplit([], [], [], [], [])
    while len(out.expressions) < n:
        for _ in range(max_tries):
            focus = (ObjectSpec(color=world.colors[int(rng.integers(len(world.colors)))]),
                     ObjectSpec(shape=eligible_shapes[int(rng.integers(len(eligible_shapes)))]))
            scene = _round_boxes(make_scene(rng, str(ids.image), focus, focus_rate=0.6, world=scene_world))
            candidates = [i for i, o in enumerate(scene.objects) if o.shape in eligible_shapes]
            rng.shuffle(candidates)
            index, per_object = _SceneIndex(scene), {}
            for i in candidates[: int(rng.integers(1, 4))]:
                exprs = _expressions(index, i, int(rng.integers(1, 4)), rng)
                if exprs:
                    per_object[i] = exprs
            if per_object:
                break
        else:
            raise ValueError(f"demo RefCOCO+ split {split!r}: no scene in {max_tries} draws has an object that an "
                             f"expression can single out; the world {world} is too small")
        ann_ids = []
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            w, h = round(x2 - x1, 2), round(y2 - y1, 2)
            out.annotations.append({"id": ids.ann, "image_id": ids.image, "category_id": SHAPES.index(obj.shape) + 1,
                                    "bbox": [x1, y1, w, h], "area": round(w * h, 2), "iscrowd": 0, "segmentation": []})
            ann_ids.append(ids.ann)
            ids.ann += 1
        for i, exprs in per_object.items():
            exprs = exprs[: n - len(out.expressions)]
            if not exprs:
                break
            sentences = []
            for expr in exprs:
                sentences.append({"sent_id": ids.sent, "sent": expr.text, "raw": expr.text.capitalize() + ".",
                                  "tokens": expr.text.split()})
                ids.sent += 1
                out.expressions.append(expr)
                out.targets.append(i)
            out.refs.append({
                "ref_id": ids.ref, "ann_id": ann_ids[i], "image_id": ids.image,
                "category_id": SHAPES.index(scene.objects[i].shape) + 1, "split": split,
                "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences,
                "file_name": f"COCO_train2014_{ids.image:012d}_{ids.ref}.jpg",
            })
            ids.ref += 1
        out.scenes.append(scene)
        ids.image += 1
    return out


def split_plan(sizes: dict[str, int], world: WorldConfig) -> list[tuple[str, int, Optional[tuple[str, ...]]]]:
    """``(refs split, expressions, shapes referred to)``: dev is val, test is halved into testA
    (the first shape, RefCOCO's "people") and testB (the other shapes)."""
    plan = [(SPLITS[k], sizes.get(k, 0), None) for k in ("train", "dev")]
    n_test = sizes.get("test", 0)
    plan.append(("testA", (n_test + 1) // 2, world.shapes[:1]))
    plan.append(("testB", n_test // 2, world.shapes[1:]))
    return plan


DEFAULT_SIZES = {"train": 6000, "dev": 1000, "test": 1000}


def generate(out, writer, ctx, sizes: dict[str, int]):
    """Write ``refcoco+/refs(unc).p`` and ``refcoco+/instances.json`` and every image's regions."""
    from . import DemoTaskResult

    folder = out / FOLDER
    folder.mkdir(exist_ok=True)
    ids = _Ids()
    refs, images, annotations, texts, manifest = [], [], [], [], {}
    for split, n, shapes in split_plan(sizes, ctx.world):
        part = make_split(split, n, ctx.scene_rng, ctx.world, ids, shapes)
        regions, object_counts = [], []
        for scene in part.scenes:
            feats, boxes = ctx.renderer.render(scene, ctx.render_rng)
            writer.add(scene.image_id, feats, boxes, scene.width, scene.height)
            images.append({"id": int(scene.image_id), "width": scene.width, "height": scene.height,
                           "file_name": f"COCO_train2014_{int(scene.image_id):012d}.jpg"})
            regions.append(len(feats))
            object_counts.append(len(scene.objects))
        refs += part.refs
        annotations += part.annotations
        texts += [e.text for e in part.expressions]
        per_image = {int(s.image_id): (r, o) for s, r, o in zip(part.scenes, regions, object_counts)}
        chance = [1 / per_image[ref["image_id"]][0] for ref in part.refs for _ in ref["sentences"]]
        object_chance = [1 / per_image[ref["image_id"]][1] for ref in part.refs for _ in ref["sentences"]]
        manifest[split] = {
            "expressions": len(part.expressions), "refs": len(part.refs), "images": len(part.scenes),
            "kinds": dict(sorted(Counter(e.kind for e in part.expressions).items())),
            "mean_regions": float(np.mean(regions)) if regions else None,
            # accuracy of picking a random region / a random object (never clutter)
            "chance": float(np.mean(chance)) if chance else None,
            "object_chance": float(np.mean(object_chance)) if object_chance else None,
        }
    categories = [{"id": k + 1, "name": shape, "supercategory": "shape"} for k, shape in enumerate(SHAPES)]
    refs_path = folder / "refs(unc).p"
    with open(refs_path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    instances_path = folder / "instances.json"
    instances_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}),
                              encoding="utf-8")
    return DemoTaskResult({"refs": str(refs_path), "instances": str(instances_path)}, texts, {"splits": manifest})
