"""The demo world: scenes of objects with a colour, a shape, a size, a material and a box, and
how a "detector" sees them as region features.

Scenes are plain data, so every task's demo generator (NLVR2 statements now; VQA questions,
captions, referring expressions, entailment later) reads the same objects and states facts about
them. Region features are what a bottom-up-attention detector would give: one vector per object,
the sum of fixed random prototypes of its attributes plus noise, and its box; a few clutter
(background) regions are added and all regions shuffled, so only the features tell them apart.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("cube", "sphere", "cylinder", "cone")
SIZES = ("small", "large")
MATERIALS = ("metal", "rubber")


@dataclass(frozen=True)
class WorldConfig:
    """How rich the world is: palettes (the first ``num_colors`` / ``num_shapes`` of COLORS /
    SHAPES), objects per scene, detector noise. Knobs to make the demo easier or harder; the
    defaults (1-3 objects, noise 0.1) are where the demo's 64-wide pre-training learns image-text
    matching in 1,000 steps (val ITM 0.98; with 1-6 objects and noise 0.5, the earlier default, 0.53)
    and where the study's findings show on most tasks (README, "What the demo shows")."""

    num_colors: int = 4
    num_shapes: int = 3
    min_objects: int = 1
    max_objects: int = 3
    noise: float = 0.1
    focus: float = 0.3  # most an image over-represents what the statement mentions (0 = never)

    def __post_init__(self) -> None:
        if not (1 <= self.num_colors <= len(COLORS) and 1 <= self.num_shapes <= len(SHAPES)):
            raise ValueError(f"num_colors must be in 1..{len(COLORS)} and num_shapes in 1..{len(SHAPES)}, "
                             f"got {self.num_colors} and {self.num_shapes}")
        if not (1 <= self.min_objects <= self.max_objects and self.max_objects >= 2):
            raise ValueError(f"need 1 <= min_objects <= max_objects and max_objects >= 2, "
                             f"got {self.min_objects} and {self.max_objects}")
        if self.noise < 0 or not 0 <= self.focus <= 1:
            raise ValueError(f"need noise >= 0 and 0 <= focus <= 1, got {self.noise} and {self.focus}")

    @property
    def colors(self) -> tuple[str, ...]:
        return COLORS[: self.num_colors]

    @property
    def shapes(self) -> tuple[str, ...]:
        return SHAPES[: self.num_shapes]


DEFAULT_WORLD = WorldConfig()


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    size: str
    material: str
    box: tuple[float, float, float, float]  # pixel x1, y1, x2, y2

    @property
    def center_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


@dataclass(frozen=True)
class ObjectSpec:
    """A description that objects may match ("red cube", "sphere", "large object"); ``None`` = any."""

    color: Optional[str] = None
    shape: Optional[str] = None
    size: Optional[str] = None
    material: Optional[str] = None

    def matches(self, obj: SceneObject) -> bool:
        return all(want is None or want == getattr(obj, name)
                   for name, want in (("color", self.color), ("shape", self.shape),
                                      ("size", self.size), ("material", self.material)))

    def noun_phrase(self, plural: bool = False) -> str:
        """``"large red cube"`` / ``"red objects"`` (no article)."""
        noun = (self.shape or "object") + ("s" if plural else "")
        return " ".join(w for w in (self.size, self.color, self.material, noun) if w)

    def with_article(self) -> str:
        phrase = self.noun_phrase()
        return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclass(frozen=True)
class Scene:
    image_id: str
    width: int
    height: int
    objects: tuple[SceneObject, ...]
    clutter: tuple[tuple[float, float, float, float], ...] = field(default=())  # background boxes

    def count(self, spec: ObjectSpec) -> int:
        return sum(1 for o in self.objects if spec.matches(o))

    def has(self, spec: ObjectSpec) -> bool:
        return any(spec.matches(o) for o in self.objects)

    def left_of(self, a: ObjectSpec, b: ObjectSpec) -> bool:
        """Some ``a`` object is left of (a different) ``b`` object."""
        return any(o is not p and a.matches(o) and b.matches(p) and o.center_x < p.center_x
                   for o in self.objects for p in self.objects)


def make_scene(rng: np.random.Generator, image_id: str, focus: Sequence[ObjectSpec] = (),
               focus_rate: float = 0.5, world: WorldConfig = DEFAULT_WORLD) -> Scene:
    """A random scene of ``world.min_objects``-``world.max_objects`` objects in distinct horizontal
    slots (so "left of" has no ties).

    ``focus``: descriptions a statement will mention; each object copies the attributes of one of
    them with probability ``focus_rate``. Generators pass the wording, never the wanted truth, so
    the proposal is the same for True and False and rejection sampling makes the label.
    Random numbers are drawn in a few array calls: scenes are rejection-sampled by the thousand.
    """
    # Plain Python floats from one array draw: numpy scalar arithmetic would dominate the cost.
    colors, shapes, max_objects = world.colors, world.shapes, world.max_objects
    n = int(rng.integers(world.min_objects, max_objects + 1))
    num_clutter = int(rng.integers(1, 4))
    draws = rng.random(2 + max_objects + 9 * n + 4 * num_clutter).tolist()
    width, height = 480 + int(draws[0] * 321), 360 + int(draws[1] * 241)
    order = sorted(range(max_objects), key=draws[2:2 + max_objects].__getitem__)
    slots = sorted(order[:n])  # n distinct slots, left to right
    slot_w = width / max_objects
    objects = []
    for i, slot in enumerate(slots):
        u = draws[2 + max_objects + 9 * i: 2 + max_objects + 9 * (i + 1)]
        attrs = {"color": colors[int(u[0] * len(colors))], "shape": shapes[int(u[1] * len(shapes))],
                 "size": SIZES[int(u[2] * len(SIZES))], "material": MATERIALS[int(u[3] * len(MATERIALS))]}
        if focus and u[4] < focus_rate:
            spec = focus[int(u[5] * len(focus))]
            attrs.update({k: v for k, v in vars(spec).items() if v is not None})
        side = (0.45 if attrs["size"] == "small" else 0.9) * slot_w * (0.8 + 0.2 * u[6])
        cx = (slot + 0.5 + 0.08 * (u[7] - 0.5)) * slot_w
        cy = side / 2 + 1 + (height - side - 2) * u[8]
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        objects.append(SceneObject(box=box, **attrs))
    clutter = []
    for k in range(num_clutter):
        v = draws[len(draws) - 4 * (k + 1): len(draws) - 4 * k]
        x1, y1 = v[0] * width * 0.6, v[1] * height * 0.6
        x2, y2 = x1 + 20 + (width - x1 - 20) * v[2], y1 + 20 + (height - y1 - 20) * v[3]
        clutter.append((x1, y1, x2, y2))
    return Scene(image_id, width, height, tuple(objects), tuple(clutter))


class FeatureRenderer:
    """Region features of scenes: attribute prototypes (fixed by the world seed) plus noise."""

    def __init__(self, feat_dim: int, seed: int, noise: float = 0.5):
        rng = np.random.default_rng([seed, 7919])
        scale = 1.0 / np.sqrt(4.0)  # four attributes per object: features have unit variance
        self.feat_dim, self.noise = feat_dim, noise
        self.prototypes = {
            name: {v: rng.standard_normal(feat_dim) * scale for v in values}
            for name, values in (("color", COLORS), ("shape", SHAPES), ("size", SIZES), ("material", MATERIALS))
        }
        self.background = rng.standard_normal(feat_dim)

    def object_feature(self, obj: SceneObject) -> np.ndarray:
        """The noise-free feature of an object (the sum of its attribute prototypes)."""
        return sum(self.prototypes[name][getattr(obj, name)] for name in self.prototypes)

    def render(self, scene: Scene, rng: np.random.Generator, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(features (n, D) float32, boxes (n, 4) pixel x1y1x2y2)`` for objects and clutter,
        shuffled; ``shuffle=False`` keeps the objects first, in scene order (as VCR's ground-truth
        boxes come in the order of the annotation's ``objects``), then the clutter."""
        feats, boxes, _ = self.render_regions(scene, rng, shuffle)
        return feats, boxes

    def render_regions(self, scene: Scene, rng: np.random.Generator,
                       shuffle: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``render`` plus what each region shows: ``source`` (n,) int, the index of its object in
        ``scene.objects`` or -1 for clutter (the same random draws as ``render``)."""
        feats = [self.object_feature(o) for o in scene.objects]
        feats += [self.background * float(rng.uniform(0.5, 1.5)) for _ in scene.clutter]
        boxes = [o.box for o in scene.objects] + list(scene.clutter)
        feats = np.asarray(feats) + rng.standard_normal((len(feats), self.feat_dim)) * self.noise
        order = rng.permutation(len(feats)) if shuffle else np.arange(len(feats))
        source = np.concatenate([np.arange(len(scene.objects)), np.full(len(scene.clutter), -1)]).astype(np.int64)
        return feats[order].astype(np.float32), np.asarray(boxes, dtype=np.float32)[order], source[order]
