"""NLVR2-style statements about pairs of demo scenes, in NLVR2's public JSON-lines schema.

Templates: exact counts, comparisons between the two images, existence in both, spatial relations.
As in NLVR2, one sentence (a "set") is paired with 2-4 image pairs, each with its own label, so
the consistency metric means something. The wording of a set is drawn first, the wanted labels
are assigned from a balanced list per template, and image pairs are then sampled (from a proposal
that depends on the wording only) until the statement has the wanted truth. So the text alone
says nothing about the label: the images must be read.
"""
from __future__ import annotations

import json

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .world import DEFAULT_WORLD, SIZES, ObjectSpec, Scene, WorldConfig, make_scene

NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
SIDES = ("left", "right")


@dataclass(frozen=True)
class Statement:
    text: str
    truth: Callable[[Scene, Scene], bool]
    focus: tuple[ObjectSpec, ...]  # what the scene proposal should make common


def _pick(rng: np.random.Generator, values: tuple[str, ...]) -> str:
    return values[int(rng.integers(len(values)))]


def _spec(rng: np.random.Generator, world: WorldConfig, allow_size: bool = False) -> ObjectSpec:
    """A colour, a shape, or both (optionally with a size)."""
    kind = int(rng.integers(3))
    color = _pick(rng, world.colors) if kind in (0, 2) else None
    shape = _pick(rng, world.shapes) if kind in (1, 2) else None
    size = SIZES[int(rng.integers(len(SIZES)))] if allow_size and rng.random() < 0.25 else None
    return ObjectSpec(color=color, shape=shape, size=size)


def count_statement(rng: np.random.Generator, world: WorldConfig = DEFAULT_WORLD) -> Statement:
    side, spec = int(rng.integers(2)), _spec(rng, world)
    n = int(rng.integers(1, min(3, world.max_objects) + 1))
    text = f"The {SIDES[side]} image contains exactly {NUMBER_WORDS[n]} {spec.noun_phrase(plural=n > 1)}."
    return Statement(text, lambda left, right: (left, right)[side].count(spec) == n, (spec,))


def compare_statement(rng: np.random.Generator, world: WorldConfig = DEFAULT_WORLD) -> Statement:
    spec, more = _spec(rng, world), bool(rng.integers(2))
    text = (f"There are {'more' if more else 'fewer'} {spec.noun_phrase(plural=True)} "
            "in the left image than in the right image.")
    if more:
        return Statement(text, lambda left, right: left.count(spec) > right.count(spec), (spec,))
    return Statement(text, lambda left, right: left.count(spec) < right.count(spec), (spec,))


def both_statement(rng: np.random.Generator, world: WorldConfig = DEFAULT_WORLD) -> Statement:
    spec = _spec(rng, world, allow_size=True)
    return Statement(f"Both images contain {spec.with_article()}.",
                     lambda left, right: left.has(spec) and right.has(spec), (spec,))


def spatial_statement(rng: np.random.Generator, world: WorldConfig = DEFAULT_WORLD) -> Statement:
    side = int(rng.integers(2))
    a = ObjectSpec(color=_pick(rng, world.colors), shape=_pick(rng, world.shapes))
    b = ObjectSpec(color=_pick(rng, world.colors), shape=_pick(rng, world.shapes))
    relation = SIDES[int(rng.integers(2))]
    text = f"In the {SIDES[side]} image, {a.with_article()} is {relation} of {b.with_article()}."
    if relation == "left":
        truth = lambda left, right: (left, right)[side].left_of(a, b)  # noqa: E731
    else:
        truth = lambda left, right: (left, right)[side].left_of(b, a)  # noqa: E731
    return Statement(text, truth, (a, b))


TEMPLATES: dict[str, Callable[[np.random.Generator, WorldConfig], Statement]] = {
    "count": count_statement,
    "compare": compare_statement,
    "both": both_statement,
    "spatial": spatial_statement,
}
# The demo's default: statements that bind attribute words to a region in each image, the skill θ_0's
# pre-training teaches (captions name every object's colour and shape). The tiny model learns them to
# 0.94 in a 1,200-step round; with all four templates it stays near 0.6 for ~1,000 steps and reaches
# 0.77 at 3,000 (reports/measured/README.md, "The demo's dense baseline"). The others stay behind
# ``lightning-vl demo --nlvr2-templates count compare both spatial``.
DEFAULT_TEMPLATES: tuple[str, ...] = ("both",)


def _set_sizes(n: int, rng: np.random.Generator) -> list[int]:
    sizes, total = [], 0
    while total < n:
        size = min(int(rng.integers(2, 5)), n - total)
        sizes.append(size)
        total += size
    return sizes


def make_split(split: str, n: int, rng: np.random.Generator, world: WorldConfig = DEFAULT_WORLD,
               templates: tuple[str, ...] = DEFAULT_TEMPLATES, max_tries: int = 5000):
    """``n`` NLVR2 records, the scenes they show (two per record) and per-template counts
    ``{template: {"examples": .., "true": ..}}``; labels balanced within every template."""
    unknown = [t for t in templates if t not in TEMPLATES]
    if unknown or not templates:
        raise ValueError(f"demo NLVR2 templates {list(templates)}: expected a non-empty subset of {list(TEMPLATES)}")
    names = list(templates)
    if n <= 0:
        return [], [], {t: {"examples": 0, "true": 0} for t in names}
    sizes = _set_sizes(n, rng)
    set_templates = [names[k % len(names)] for k in rng.permutation(len(sizes))]
    # Balanced wanted labels per template, in a random order.
    slots = {t: sum(s for s, st in zip(sizes, set_templates) if st == t) for t in names}
    wants = {t: list(rng.permutation(np.arange(m) % 2 == 1)) for t, m in slots.items()}
    records, scenes = [], []
    stats = {t: {"examples": 0, "true": 0} for t in names}
    for set_id, (size, template) in enumerate(zip(sizes, set_templates)):
        statement = TEMPLATES[template](rng, world)
        for pair_id in range(size):
            want = bool(wants[template].pop())
            stem = f"{split}-{set_id}-{pair_id}"
            for _ in range(max_tries):
                # How often mentioned things appear varies per image (wording-dependent only).
                left = make_scene(rng, f"{stem}-img0", statement.focus, focus_rate=world.focus * rng.random(), world=world)
                right = make_scene(rng, f"{stem}-img1", statement.focus, focus_rate=world.focus * rng.random(), world=world)
                if statement.truth(left, right) == want:
                    break
            else:  # not bad luck: in this world the wording (almost) cannot have that truth value
                raise ValueError(f"demo NLVR2: no image pair in {max_tries} draws makes {statement.text!r} {want}; "
                                 f"the world {world} is too small for the {template!r} template (use more colours, "
                                 "shapes or objects, or leave the template out)")
            scenes += [left, right]
            stats[template]["examples"] += 1
            stats[template]["true"] += int(want)
            label = "True" if want else "False"
            writer = str(int(rng.integers(100)))
            record = {
                "identifier": f"{stem}-0",
                "sentence": statement.text,
                "label": label,
                "left_url": f"https://demo.invalid/{split}/{stem}-img0.png",
                "right_url": f"https://demo.invalid/{split}/{stem}-img1.png",
                "synset": template,
                "query": f"{template} scene{set_id % 50}",
                "writer": writer,
                "validation": {writer: label},
            }
            if split == "train":
                record["directory"] = set_id % 100
            else:
                record["extra_validations"] = {str((int(writer) + 1) % 100): label}
            records.append(record)
    return records, scenes, stats


DEFAULT_SIZES = {"train": 6000, "dev": 1000, "test": 1000}


def demo_options(settings: dict) -> dict:
    """This part's options from ``generate_demo``'s: the statement templates to draw from."""
    return {"templates": tuple(settings["nlvr2_templates"])}


def template_lexicon(world: WorldConfig = DEFAULT_WORLD, draws: int = 2000) -> list[str]:
    """Wordings of *every* template (drawn from a fixed generator of their own, no scenes), for the
    demo vocabulary: the tokenizer, and so θ_0, are the same whichever templates the data use, so
    ``--nlvr2-templates`` changes the NLVR2 files only."""
    rng = np.random.default_rng(0)
    return [TEMPLATES[name](rng, world).text for name in TEMPLATES for _ in range(draws)]


def generate(out, writer, ctx, sizes: dict[str, int]):
    """Write ``nlvr2/{train,dev,test}.json`` (NLVR2's JSON lines) and both images of every pair."""
    from . import DemoTaskResult

    folder = out / "nlvr2"
    folder.mkdir(exist_ok=True)
    files, texts, manifest = {}, [], {}
    for split, n in sizes.items():
        records, scenes, stats = make_split(split, n, ctx.scene_rng, ctx.world,
                                            tuple(ctx.options.get("templates", DEFAULT_TEMPLATES)))
        for scene in scenes:
            feats, boxes = ctx.renderer.render(scene, ctx.render_rng)
            writer.add(scene.image_id, feats, boxes, scene.width, scene.height)
        path = folder / f"{split}.json"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        files[split] = str(path)
        texts += [r["sentence"] for r in records]
        manifest[split] = {
            "examples": len(records),
            "sentences": len({r["sentence"] for r in records}),
            "images": len(scenes),
            "true_rate": sum(r["label"] == "True" for r in records) / len(records) if records else None,
            "templates": stats,
        }
    texts += template_lexicon(ctx.world)
    return DemoTaskResult(files, texts, {"splits": manifest})
