"""SNLI-VE-style hypotheses about demo scenes, in SNLI-VE's public JSON-lines schema.

A hypothesis speaks of "the <object>", so it presupposes exactly one such object in the image:
"The cube is red." is entailed when the image's only cube is red, contradicted when its only
cube has another colour, and neutral when the image has no cube (several cubes would leave the
reference unresolved, also neutral; the generator leaves such scenes out, see ``_ambiguous``).
Templates: an attribute of the object (colour, size, material), a left/right relation between two
objects, the side of the image the object is on.

As in the NLVR2 demo, the wording is drawn first, the wanted label comes from a balanced list per
template, and scenes are drawn from a proposal that depends on the wording only until the
hypothesis has that label: the text alone says nothing about the label. The premise
(``sentence1``) is a true caption of the scene (as SNLI's premises are Flickr30k captions); VE
models do not read it. Image ids are ``4000000 + n`` (store key = the id string).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .flickr30k import make_captions
from .world import MATERIALS, SIZES, ObjectSpec, Scene, WorldConfig, make_scene

FIRST_IMAGE = 4_000_000
LABELS = ("entailment", "neutral", "contradiction")
LABEL_LETTER = {"entailment": "e", "neutral": "n", "contradiction": "c"}


@dataclass(frozen=True)
class Hypothesis:
    text: str
    label: Callable[[Scene], str]  # entailment / neutral / contradiction for a scene
    focus: tuple[ObjectSpec, ...]  # what the scene proposal should make common
    referents: tuple[ObjectSpec, ...] = ()  # "the X" phrases: the demo keeps each to at most one object


def _pick(rng: np.random.Generator, values) -> str:
    return values[int(rng.integers(len(values)))]


def _only(scene: Scene, spec: ObjectSpec):
    """The one object matching ``spec``, or None when there are none or several. (Inlined
    attribute tests: this runs for every rejected scene.)"""
    color, shape, size = spec.color, spec.shape, spec.size
    found = None
    for o in scene.objects:
        if (shape is None or o.shape == shape) and (color is None or o.color == color) and \
                (size is None or o.size == size) and (spec.material is None or o.material == spec.material):
            if found is not None:
                return None
            found = o
    return found


def _ambiguous(scene: Scene, hyp: Hypothesis) -> bool:
    """Several objects fit one of the hypothesis' "the X" phrases. Such scenes are neutral by the
    labels' definition, but the demo leaves them out: neutral then means "there is no X", which a
    tiny model trained for 300 steps can learn, where counting referents was not learnt."""
    return any(sum(spec.matches(o) for o in scene.objects) > 1 for spec in hyp.referents)


def _reference(rng: np.random.Generator, world: WorldConfig) -> ObjectSpec:
    """"cube", "red cube" or "large cube"."""
    kind = int(rng.integers(4))
    return ObjectSpec(color=_pick(rng, world.colors) if kind == 1 else None, shape=_pick(rng, world.shapes),
                      size=_pick(rng, SIZES) if kind == 2 else None)


def attribute_hypothesis(rng: np.random.Generator, world: WorldConfig) -> Hypothesis:
    ref = _reference(rng, world)
    attrs = [a for a in ("color", "size", "material") if getattr(ref, a) is None]
    attr = _pick(rng, attrs)
    value = _pick(rng, {"color": world.colors, "size": SIZES, "material": MATERIALS}[attr])
    text = f"The {ref.noun_phrase()} is {'made of ' if attr == 'material' else ''}{value}."

    def label(scene: Scene) -> str:
        obj = _only(scene, ref)
        if obj is None:
            return "neutral"
        return "entailment" if getattr(obj, attr) == value else "contradiction"

    return Hypothesis(text, label, (ref, ObjectSpec(shape=ref.shape, **{attr: value})), (ref,))


def relation_hypothesis(rng: np.random.Generator, world: WorldConfig) -> Hypothesis:
    a = ObjectSpec(color=_pick(rng, world.colors), shape=_pick(rng, world.shapes))
    b = a
    while b == a:
        b = ObjectSpec(color=_pick(rng, world.colors), shape=_pick(rng, world.shapes))
    left = bool(rng.integers(2))
    text = f"The {a.noun_phrase()} is {'left' if left else 'right'} of the {b.noun_phrase()}."

    def label(scene: Scene) -> str:
        oa, ob = _only(scene, a), _only(scene, b)
        if oa is None or ob is None:
            return "neutral"
        return "entailment" if (oa.center_x < ob.center_x) == left else "contradiction"

    return Hypothesis(text, label, (a, b), (a, b))


def side_hypothesis(rng: np.random.Generator, world: WorldConfig) -> Hypothesis:
    ref = _reference(rng, world)
    left = bool(rng.integers(2))
    text = f"The {ref.noun_phrase()} is on the {'left' if left else 'right'} side of the image."

    def label(scene: Scene) -> str:
        obj = _only(scene, ref)
        if obj is None:
            return "neutral"
        return "entailment" if (obj.center_x < scene.width / 2) == left else "contradiction"

    return Hypothesis(text, label, (ref,), (ref,))


TEMPLATES: dict[str, Callable[[np.random.Generator, WorldConfig], Hypothesis]] = {
    "attribute": attribute_hypothesis,
    "relation": relation_hypothesis,
    "side": side_hypothesis,
}


def _parses(text: str) -> tuple[str, str]:
    """Simple stand-ins for SNLI's binary and Penn-tree parses (unused by the models)."""
    words = text.rstrip(".").split() + ["."]
    return "( " + " ".join(words) + " )", "(ROOT (S " + " ".join(f"(X {w})" for w in words) + "))"


def make_split(split: str, n: int, first_image: int, rng: np.random.Generator, world: WorldConfig,
               max_tries: int = 5000):
    """``n`` SNLI-VE records (one hypothesis per image), their scenes and per-template label counts."""
    names = list(TEMPLATES)
    template_of = [names[k % len(names)] for k in rng.permutation(n)] if n else []
    wants = {t: list(rng.permutation([LABELS[k % 3] for k in range(template_of.count(t))])) for t in names}
    stats = {t: {label: 0 for label in LABELS} for t in names}
    records, scenes = [], []
    for k, template in enumerate(template_of):
        hyp = TEMPLATES[template](rng, world)
        want = wants[template].pop()
        image_id = str(first_image + k)
        scene: Optional[Scene] = None
        for _ in range(max_tries):
            candidate = make_scene(rng, image_id, hyp.focus, focus_rate=0.6 * rng.random(), world=world)
            if hyp.label(candidate) == want and not _ambiguous(candidate, hyp):
                scene = candidate
                break
        if scene is None:
            raise ValueError(f"demo SNLI-VE: no scene in {max_tries} draws makes {hyp.text!r} {want}; the world "
                             f"{world} is too small (use more colours, shapes or objects)")
        stats[template][want] += 1
        premise = make_captions(scene, rng, n=1)[0].text
        caption_id = f"{image_id}.jpg#0"
        s1_binary, s1_parse = _parses(premise)
        s2_binary, s2_parse = _parses(hyp.text)
        annotators = [want] if split == "train" else [want, want, want, _pick(rng, LABELS), want]
        records.append({
            "Flickr30K_ID": image_id, "annotator_labels": annotators, "captionID": caption_id,
            "gold_label": want, "pairID": f"{caption_id}r1{LABEL_LETTER[want]}",
            "sentence1": premise, "sentence1_binary_parse": s1_binary, "sentence1_parse": s1_parse,
            "sentence2": hyp.text, "sentence2_binary_parse": s2_binary, "sentence2_parse": s2_parse,
        })
        scenes.append(scene)
    return records, scenes, stats


DEFAULT_SIZES = {"train": 6000, "dev": 1000, "test": 1000}  # hypotheses (one image each)


def generate(out: Path, writer, ctx, sizes: dict[str, int]):
    """Write ``snli_ve/snli_ve_{train,dev,test}.jsonl`` and every image's regions."""
    from . import DemoTaskResult

    folder = out / "snli_ve"
    folder.mkdir(exist_ok=True)
    files, texts, manifest = {}, [], {}
    first = FIRST_IMAGE
    for split, n in sizes.items():
        records, scenes, stats = make_split(split, n, first, ctx.scene_rng, ctx.world)
        first += n
        for scene in scenes:
            feats, boxes = ctx.renderer.render(scene, ctx.render_rng)
            writer.add(scene.image_id, feats, boxes, scene.width, scene.height)
        path = folder / f"snli_ve_{split}.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
        files[split] = str(path)
        texts += [t for r in records for t in (r["sentence1"], r["sentence2"])]
        manifest[split] = {"pairs": len(records), "images": len(scenes),
                           "hypotheses": len({r["sentence2"] for r in records}), "labels": stats}
    return DemoTaskResult(files, texts, {"splits": manifest})
