"""Flickr30k-style captions of demo scenes, in Karpathy's ``dataset_flickr30k.json`` schema.

Every image (3 to 6 objects) gets 5 different captions, each true of its scene: two or three
objects, a left/right relation, or an exact count beside an object, each object named by its colour
and shape and mostly by its size and material too ("A large red metal cube and a small blue
sphere."). Most captions pin their image down among a split's (an oracle that knows the scenes
gets image retrieval R@1 ≈ 0.85 on the 100-image dev split), so retrieval is learnable, but only by
binding every attribute to the right object. The manifest records how ambiguous the captions are (``images_per_caption``: how many
images of the split a caption is true of) and the R@1 an oracle that knows the scenes would get
by picking at random among the images a caption fits (``oracle_ir_r1``).

Image file names are ``<6000000 + n>.jpg`` (store key = the stem), distinct from the other demo
tasks' image ids.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .world import ObjectSpec, Scene, SceneObject, WorldConfig, make_scene

FIRST_IMAGE = 6_000_000
CAPTIONS_PER_IMAGE = 5
SPLIT_NAMES = {"train": "train", "dev": "val", "test": "test"}  # demo split -> Karpathy split
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


@dataclass(frozen=True)
class Caption:
    text: str
    template: str
    holds: Callable[[Scene], bool]  # is the caption true of a scene?


def describe(obj: SceneObject, rng: np.random.Generator) -> ObjectSpec:
    """A description of ``obj``: its colour and shape, and its size and material most of the time
    (as a detailed Flickr30k caption names what it shows)."""
    u = rng.random(2)
    return ObjectSpec(color=obj.color, shape=obj.shape, size=obj.size if u[0] < 0.85 else None,
                      material=obj.material if u[1] < 0.85 else None)


def _cap(phrase: str) -> str:
    return phrase[0].upper() + phrase[1:]


def _distinct(scene: Scene, k: int, rng: np.random.Generator) -> list[SceneObject]:
    """``k`` different objects of the scene, in random order."""
    order = np.argsort(rng.random(len(scene.objects)))[:k]
    return [scene.objects[i] for i in order]


def pair_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    a, b = (describe(o, rng) for o in _distinct(scene, 2, rng))
    return Caption(f"{_cap(a.with_article())} and {b.with_article()}.", "pair", lambda s: _both(s, a, b))


def triple_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    specs = [describe(o, rng) for o in _distinct(scene, 3, rng)]
    text = f"{_cap(specs[0].with_article())}, {specs[1].with_article()} and {specs[2].with_article()}."
    return Caption(text, "triple", lambda s: all(s.has(x) for x in specs))


def relation_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    first, second = sorted(_distinct(scene, 2, rng), key=lambda o: o.center_x)
    a, b = describe(first, rng), describe(second, rng)
    if rng.random() < 0.5:
        return Caption(f"{_cap(a.with_article())} is left of {b.with_article()}.", "relation", lambda s: s.left_of(a, b))
    return Caption(f"{_cap(b.with_article())} is right of {a.with_article()}.", "relation", lambda s: s.left_of(a, b))


def count_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """An exact count of the objects sharing a colour or shape with one, beside another object."""
    picked = _distinct(scene, 2, rng)
    first = picked[0]
    spec = ObjectSpec(color=first.color) if rng.random() < 0.5 else ObjectSpec(shape=first.shape)
    n = scene.count(spec)
    counted = f"The image contains {number_word(n)} {spec.noun_phrase(plural=n > 1)}"
    if len(picked) < 2:  # a one-object scene (SNLI-VE premises): the count alone
        return Caption(f"{counted}.", "count", lambda s: s.count(spec) == n)
    other = describe(picked[1], rng)
    return Caption(f"{counted} and {other.with_article()}.", "count",
                   lambda s: s.count(spec) == n and s.has(other))


def _both(scene: Scene, a: ObjectSpec, b: ObjectSpec) -> bool:
    """Two different objects match ``a`` and ``b``."""
    return any(o is not p and a.matches(o) and b.matches(p) for o in scene.objects for p in scene.objects)


# template -> (generator, objects it needs, weight)
TEMPLATES: dict[str, tuple[Callable[[Scene, np.random.Generator], Caption], int, float]] = {
    "pair": (pair_caption, 2, 0.3),
    "triple": (triple_caption, 3, 0.3),
    "relation": (relation_caption, 2, 0.3),
    "count": (count_caption, 1, 0.1),
}
MIN_OBJECTS = 3  # retrieval scenes: enough objects for specific captions


def make_captions(scene: Scene, rng: np.random.Generator, n: int = CAPTIONS_PER_IMAGE, max_tries: int = 200) -> list[Caption]:
    """``n`` different captions, all true of ``scene``, templates drawn by weight among those the
    scene has enough objects for."""
    names = [t for t, (_, need, _) in TEMPLATES.items() if len(scene.objects) >= need]
    cumulative = np.cumsum([TEMPLATES[t][2] for t in names])
    captions: list[Caption] = []
    texts: set[str] = set()
    for _ in range(max_tries):
        template = names[min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1])), len(names) - 1)]
        caption = TEMPLATES[template][0](scene, rng)
        if caption.text not in texts:
            if not caption.holds(scene):  # a bug in a template, not bad input
                raise RuntimeError(f"demo Flickr30k: caption {caption.text!r} is not true of scene {scene}")
            captions.append(caption)
            texts.add(caption.text)
            if len(captions) == n:
                return captions
    raise ValueError(f"demo Flickr30k: found only {len(captions)} different captions of scene {scene.image_id} "
                     f"in {max_tries} draws; the world is too small (more colours, shapes or objects)")


def tokens(text: str) -> list[str]:
    """Karpathy's ``tokens``: lower-cased words, punctuation removed."""
    return re.findall(r"[a-z0-9]+", text.lower())


def retrieval_stats(scenes: list[Scene], captions: list[list[Caption]]) -> dict:
    """How ambiguous a split's captions are: images each caption is true of (mean, median) and the
    R@1 of an oracle that knows every scene and ranks what fits first, in random order: for image
    retrieval 1 / (images the caption fits), for text retrieval (captions of the image) /
    (captions that fit the image)."""
    fits = np.asarray([[c.holds(s) for s in scenes] for caps in captions for c in caps], dtype=bool)
    per_caption = fits.sum(axis=1)
    per_image = fits.sum(axis=0)
    own = np.asarray([len(caps) for caps in captions])
    return {"images_per_caption_mean": round(float(per_caption.mean()), 2),
            "images_per_caption_median": float(np.median(per_caption)),
            "unique_captions": round(float((per_caption == 1).mean()), 3),
            "oracle_ir_r1": round(float((1.0 / per_caption).mean()), 3),
            "oracle_tr_r1": round(float((own / per_image).mean()), 3)}


DEFAULT_SIZES = {"train": 1500, "dev": 100, "test": 100}  # images; 5 captions each


def generate(out: Path, writer, ctx, sizes: dict[str, int]):
    """Write ``flickr30k/dataset_flickr30k.json`` (Karpathy's schema, splits train/val/test) and
    every image's regions."""
    from . import DemoTaskResult

    folder = out / "flickr30k"
    folder.mkdir(exist_ok=True)
    images, texts, manifest = [], [], {}
    sentid = 0
    world: WorldConfig = ctx.world
    for split, n in sizes.items():
        scenes, split_captions = [], []
        for _ in range(n):
            imgid = len(images)
            filename = f"{FIRST_IMAGE + imgid}.jpg"
            scene = make_scene(ctx.scene_rng, filename[:-4],
                               world=dataclasses.replace(world, min_objects=max(world.min_objects, MIN_OBJECTS),
                                                         max_objects=max(world.max_objects, MIN_OBJECTS)))
            captions = make_captions(scene, ctx.scene_rng)
            feats, boxes = ctx.renderer.render(scene, ctx.render_rng)
            writer.add(scene.image_id, feats, boxes, scene.width, scene.height)
            sentids = list(range(sentid, sentid + len(captions)))
            sentid += len(captions)
            images.append({
                "filename": filename, "imgid": imgid, "split": SPLIT_NAMES[split], "sentids": sentids,
                "sentences": [{"raw": c.text, "tokens": tokens(c.text), "imgid": imgid, "sentid": s}
                              for c, s in zip(captions, sentids)],
            })
            texts += [c.text for c in captions]
            scenes.append(scene)
            split_captions.append(captions)
        info = {"split": SPLIT_NAMES[split], "images": n, "captions": n * CAPTIONS_PER_IMAGE,
                "templates": dict(sorted(Counter(c.template for caps in split_captions for c in caps).items()))}
        if n and split != "train":  # the full (captions x images) check is quadratic: eval splits only
            info.update(retrieval_stats(scenes, split_captions))
        manifest[split] = info
    path = folder / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}) + "\n", encoding="utf-8")
    return DemoTaskResult({"karpathy": str(path)}, texts, {"splits": manifest})
