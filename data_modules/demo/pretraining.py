"""The demo's pre-training corpus: scenes of the demo world with dense captions, as UNITER is
pre-trained on captioned images (COCO, Visual Genome) before any task.

Every caption names every object with all four attributes ("a small red metal cube, a large blue
rubber sphere and a small green metal cylinder."), objects in random order, so a masked attribute
word is recoverable from the image and the rest of its phrase — masked language modelling then has
to bind words to regions. Mismatched pairs for image-text matching are either another scene's
caption (easy) or this scene's caption with one attribute of one object changed (hard). Scenes and
features come from the same world and feature prototypes as the task files (same seed), but are
fresh draws: no task image or label is seen in pre-training.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .world import MATERIALS, SIZES, FeatureRenderer, Scene, SceneObject, WorldConfig, make_scene

ATTRIBUTES = ("size", "color", "material", "shape")  # caption word order


def attribute_values(world: WorldConfig) -> dict[str, tuple[str, ...]]:
    return {"size": SIZES, "color": world.colors, "material": MATERIALS, "shape": world.shapes}


def dense_caption(objects: Sequence[SceneObject]) -> str:
    """"a small red metal cube, a large blue rubber sphere and ..." (objects in the given order)."""
    phrases = ["a " + " ".join(getattr(o, a) for a in ATTRIBUTES) for o in objects]
    body = ", ".join(phrases[:-1]) + " and " + phrases[-1] if len(phrases) > 1 else phrases[0]
    return body + "."


def change_one_attribute(objects: Sequence[SceneObject], rng: np.random.Generator,
                         world: WorldConfig) -> list[SceneObject]:
    """A copy of ``objects`` with one attribute of one object set to another value: a caption of
    it is false of the scene (a hard negative for image-text matching)."""
    values = attribute_values(world)
    changed = list(objects)
    i = int(rng.integers(len(changed)))
    attribute = ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
    others = [v for v in values[attribute] if v != getattr(changed[i], attribute)]
    changed[i] = dataclasses.replace(changed[i], **{attribute: others[int(rng.integers(len(others)))]})
    return changed


@dataclass
class PretrainingCorpus:
    """Scenes with their region features (``img_feat`` (n, D), ``img_pos_feat`` (n, 7), in the
    store's layout) and [CLS] summary targets: which attribute values occur (``presence``, one
    column per ``attribute_names`` entry) and how many objects there are (``counts``)."""

    world: WorldConfig
    scenes: list[Scene]
    features: list[tuple[torch.Tensor, torch.Tensor]]
    presence: torch.Tensor  # (N, A) float 0/1
    counts: torch.Tensor  # (N,) long
    attribute_names: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.scenes)


def position_features(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """UNITER's 7-d box feature ``[x1, y1, x2, y2, w, h, w*h]`` normalised by the image size."""
    x1, y1, x2, y2 = (boxes[:, k] / s for k, s in zip(range(4), (width, height, width, height)))
    w, h = x2 - x1, y2 - y1
    return np.stack([x1, y1, x2, y2, w, h, w * h], axis=1).astype(np.float32)


def make_corpus(num_scenes: int, seed: int, world: WorldConfig, renderer: FeatureRenderer) -> PretrainingCorpus:
    """``num_scenes`` fresh scenes, rendered with the task files' ``renderer``; features go through
    float16 as the store keeps them."""
    if num_scenes < 2:  # a mismatched pair needs another scene
        raise ValueError(f"need at least 2 pre-training scenes, got {num_scenes}")
    rng = np.random.default_rng([seed, 3, 1009])
    names = [(a, v) for a, vs in attribute_values(world).items() for v in vs]
    scenes, features, presence = [], [], []
    for k in range(num_scenes):
        scene = make_scene(rng, f"pretrain-{k}", world=world)
        feats, boxes = renderer.render(scene, rng)
        features.append((torch.from_numpy(feats.astype(np.float16).astype(np.float32)),
                         torch.from_numpy(position_features(boxes, scene.width, scene.height))))
        present = {(a, getattr(o, a)) for o in scene.objects for a in ATTRIBUTES}
        presence.append([float(n in present) for n in names])
        scenes.append(scene)
    counts = torch.tensor([len(s.objects) for s in scenes], dtype=torch.long)
    return PretrainingCorpus(world, scenes, features, torch.tensor(presence), counts, names)
