"""GQA-style compositional questions about demo scenes, in GQA's balanced-questions JSON.

Templates are relational or compositional, like GQA's: the colour or the shape of an object
picked out through a relation ("What color is the sphere to the left of the red cube?", "What is
the green object to the right of the cone?"), which side one object is on ("Is the blue sphere to
the left or to the right of the cube?"), the shape of an object picked out by two attributes
("What shape is the small red object?"), a relational yes/no ("Is there a yellow object to the
left of the sphere?") and an attribute comparison ("Do the cube and the cylinder have the same
color?"). Every description in a question denotes exactly one object of its image (checked).
Answers are balanced per template and assigned independently of the wording, and questions are
packed several to an image, with the VQA demo's machinery (``demo/vqa.py``).

Files: ``gqa/{train,val,testdev}_balanced_questions.json`` (one object keyed by question id;
records with question, imageId, answer, fullAnswer, isBalanced, groups, entailed, equivalent,
types, semantic, semanticStr, annotations) and ``gqa/ans2label.json`` (train + val answers,
sorted). imageIds are strings from "2000000"; object ids ``<imageId><k:02d>``.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import numpy as np

from ..answers import build_gqa_vocabulary, write_ans2label
from .vqa import DemoQuestion, balanced_jobs, fits, pack_images, pick, unique
from .world import SIZES, ObjectSpec, Scene, WorldConfig

FOLDER = "gqa"
IMAGE_ID_START = 2_000_000
FILES = {"train": "train", "dev": "val", "test": "testdev"}
SIDES = ("left", "right")


def _on_side(obj, ref, side: str) -> bool:
    return obj.center_x < ref.center_x if side == "left" else obj.center_x > ref.center_x


def _ref_spec(rng, world: WorldConfig) -> ObjectSpec:
    """A reference object: a shape, with a colour half of the time."""
    return ObjectSpec(color=pick(rng, world.colors) if rng.random() < 0.5 else None, shape=pick(rng, world.shapes))


def _index(scene: Scene, obj) -> int:
    return next(i for i, o in enumerate(scene.objects) if o is obj)


def _one_on_side(scene: Scene, ref_spec: ObjectSpec, spec: ObjectSpec, side: str):
    """(ref, the only ``spec`` object on ``side`` of it) or None."""
    ref = unique(scene, ref_spec)
    if ref is None:
        return None
    found = [o for o in scene.objects if o is not ref and fits(o, spec) and _on_side(o, ref, side)]
    return (ref, found[0]) if len(found) == 1 else None


def rel_color_question(rng, world: WorldConfig) -> DemoQuestion:
    ref, side = _ref_spec(rng, world), pick(rng, SIDES)
    # another shape: "the cube left of the cube" cannot hold when "the cube" is one object
    target = ObjectSpec(shape=pick(rng, [s for s in world.shapes if s != ref.shape] or world.shapes))
    text = f"What color is the {target.noun_phrase()} to the {side} of the {ref.noun_phrase()}?"

    def solve(scene):
        hit = _one_on_side(scene, ref, target, side)
        return None if hit is None else hit[1].color

    return DemoQuestion("rel_color", text, solve, (ref, target), "color",
                        {"structural": "query", "semantic": "rel", "detailed": "relS", "select": ref,
                         "relate": (target, side), "query": "color", "full": "The {t} is {a}."},
                        subject=lambda scene: (_one_on_side(scene, ref, target, side) or (None, None))[1],
                        attribute="color")


def rel_shape_question(rng, world: WorldConfig) -> DemoQuestion:
    # a coloured reference and another colour: every shape stays a possible answer
    ref = ObjectSpec(color=pick(rng, world.colors), shape=pick(rng, world.shapes))
    side = pick(rng, SIDES)
    target = ObjectSpec(color=pick(rng, [c for c in world.colors if c != ref.color] or world.colors))
    text = f"What is the {target.noun_phrase()} to the {side} of the {ref.noun_phrase()}?"

    def solve(scene):
        hit = _one_on_side(scene, ref, target, side)
        return None if hit is None else hit[1].shape

    return DemoQuestion("rel_shape", text, solve, (ref, target), "shape",
                        {"structural": "query", "semantic": "rel", "detailed": "relO", "select": ref,
                         "relate": (target, side), "query": "name", "full": "The {t} is a {a}."},
                        subject=lambda scene: (_one_on_side(scene, ref, target, side) or (None, None))[1],
                        attribute="shape")


def side_question(rng, world: WorldConfig) -> DemoQuestion:
    a = ObjectSpec(color=pick(rng, world.colors), shape=pick(rng, world.shapes))
    b = _ref_spec(rng, world)
    while b.shape == a.shape and b.color in (None, a.color):  # distinct descriptions
        b = _ref_spec(rng, world)
    text = f"Is the {a.noun_phrase()} to the left or to the right of the {b.noun_phrase()}?"

    def solve(scene):
        oa, ob = unique(scene, a), unique(scene, b)
        if oa is None or ob is None or oa is ob:
            return None
        return "left" if oa.center_x < ob.center_x else "right"

    return DemoQuestion("side", text, solve, (a, b), "side",
                        {"structural": "choose", "semantic": "rel", "detailed": "chooseRel", "select": a, "other": b,
                         "query": "side", "full": "The {t} is to the {a} of the {o}."})


def attr_shape_question(rng, world: WorldConfig) -> DemoQuestion:
    spec = ObjectSpec(size=pick(rng, SIZES), color=pick(rng, world.colors))
    text = f"What shape is the {spec.noun_phrase()}?"

    def solve(scene):
        obj = unique(scene, spec)
        return None if obj is None else obj.shape

    return DemoQuestion("attr_shape", text, solve, (spec,), "shape",
                        {"structural": "query", "semantic": "obj", "detailed": "categoryAttr", "select": spec,
                         "query": "name", "full": "The {t} is a {a}."},
                        subject=lambda scene: unique(scene, spec), attribute="shape")


def rel_exist_question(rng, world: WorldConfig) -> DemoQuestion:
    ref, side = _ref_spec(rng, world), pick(rng, SIDES)
    target = ObjectSpec(color=pick(rng, world.colors))
    text = f"Is there {target.with_article()} to the {side} of the {ref.noun_phrase()}?"

    def solve(scene):
        r = unique(scene, ref)
        if r is None:
            return None
        return "yes" if any(o is not r and fits(o, target) and _on_side(o, r, side) for o in scene.objects) else "no"

    return DemoQuestion("rel_exist", text, solve, (ref, target), "yes/no",
                        {"structural": "verify", "semantic": "rel", "detailed": "existRelS", "select": ref,
                         "relate": (target, side), "query": "exist", "full": "{A}, there is {t} to the {s} of the {r}."})


def same_color_question(rng, world: WorldConfig) -> DemoQuestion:
    a = ObjectSpec(shape=pick(rng, world.shapes), size=pick(rng, SIZES) if rng.random() < 0.5 else None)
    b = ObjectSpec(shape=pick(rng, [s for s in world.shapes if s != a.shape] or world.shapes))
    text = f"Do the {a.noun_phrase()} and the {b.noun_phrase()} have the same color?"

    def solve(scene):
        oa, ob = unique(scene, a), unique(scene, b)
        if oa is None or ob is None or oa is ob:
            return None
        return "yes" if oa.color == ob.color else "no"

    return DemoQuestion("same_color", text, solve, (a, b), "yes/no",
                        {"structural": "compare", "semantic": "attr", "detailed": "sameColor", "select": a, "other": b,
                         "query": "same color", "full": "{A}, the {t} and the {o} have {same} color."})


TEMPLATES: dict[str, Callable[[np.random.Generator, WorldConfig], DemoQuestion]] = {
    "rel_color": rel_color_question,
    "rel_shape": rel_shape_question,
    "side": side_question,
    "attr_shape": attr_shape_question,
    "rel_exist": rel_exist_question,
    "same_color": same_color_question,
}


def template_answers(template: str, world: WorldConfig) -> tuple[str, ...]:
    return {"rel_color": tuple(world.colors), "rel_shape": tuple(world.shapes), "side": SIDES,
            "attr_shape": tuple(world.shapes), "rel_exist": ("yes", "no"), "same_color": ("yes", "no")}[template]


# ---- GQA records ------------------------------------------------------------------------------
def _object_id(scene: Scene, obj) -> str:
    return f"{scene.image_id}{_index(scene, obj):02d}"


def _select_steps(spec: ObjectSpec, obj_id: str, start: int) -> list[dict]:
    """GQA's program for a description: select the noun, then one filter per attribute."""
    steps = [{"operation": "select", "argument": f"{spec.shape or 'object'} ({obj_id})", "dependencies": []}]
    for attr in ("size", "color", "material"):
        value = getattr(spec, attr)
        if value is not None:
            steps.append({"operation": f"filter {attr}", "argument": value, "dependencies": [start + len(steps) - 1]})
    return steps


def record(scene: Scene, q: DemoQuestion, answer: str, qid: str) -> dict:
    """The GQA record of a solved question: program, full answer and object annotations."""
    info = q.info
    ref = unique(scene, info["select"])
    steps = _select_steps(info["select"], _object_id(scene, ref), 0)
    ann_q = {str(q.text.rstrip("?").split().index(info["select"].shape or "object")): _object_id(scene, ref)} \
        if (info["select"].shape or "object") in q.text.rstrip("?").split() else {}
    target = other = None
    if "relate" in info:
        spec, side = info["relate"]
        found = [o for o in scene.objects if o is not ref and fits(o, spec) and _on_side(o, ref, side)]
        target = found[0] if len(found) == 1 else None
        noun = spec.shape or "object"
        arg = f"{noun},to the {side} of,s ({_object_id(scene, target) if target is not None else '-'})"
        steps.append({"operation": "relate", "argument": arg, "dependencies": [len(steps) - 1]})
        if info["query"] == "exist":
            steps.append({"operation": "exist", "argument": "?", "dependencies": [len(steps) - 1]})
        else:
            steps.append({"operation": "query", "argument": info["query"], "dependencies": [len(steps) - 1]})
    elif "other" in info:
        other = unique(scene, info["other"])
        first = len(steps) - 1
        steps += _select_steps(info["other"], _object_id(scene, other), len(steps))
        op = "choose rel" if info["query"] == "side" else "same color"
        arg = f"{info['other'].shape},left|right,s" if op == "choose rel" else ""
        steps.append({"operation": op, "argument": arg, "dependencies": [first, len(steps) - 1]})
    else:
        steps.append({"operation": "query", "argument": info["query"], "dependencies": [len(steps) - 1]})
    semantic_str = "->".join(
        f"{s['operation']}: {s['argument']}" + (f" [{', '.join(map(str, s['dependencies']))}]" if s["dependencies"] else "")
        for s in steps)
    subject = target if target is not None else ref
    full = info["full"].format(
        t=(info["relate"][0].noun_phrase() if target is not None else info["select"].noun_phrase())
        if info["query"] != "exist" else info["relate"][0].with_article(),
        a=answer, A=answer.capitalize(), o=info["other"].noun_phrase() if "other" in info else "",
        s=info["relate"][1] if "relate" in info else "", r=info["select"].noun_phrase(),
        same="the same" if answer == "yes" else "different")
    if info["query"] == "exist" and answer == "no":
        full = f"No, there is no {info['relate'][0].noun_phrase()} to the {info['relate'][1]} of the {info['select'].noun_phrase()}."
    global_group = {"color": "color", "name": info["relate"][0].shape if target is not None else None,
                    "side": None, "exist": None, "same color": None}.get(info["query"])
    return {
        "question": q.text,
        "imageId": scene.image_id,
        "answer": answer,
        "fullAnswer": full,
        "isBalanced": True,
        "groups": {"global": global_group, "local": f"{len(steps):02d}-{q.template}"},
        "entailed": [],
        "equivalent": [qid],
        "types": {"structural": info["structural"], "semantic": info["semantic"], "detailed": info["detailed"]},
        "semantic": steps,
        "semanticStr": semantic_str,
        "annotations": {"question": ann_q, "answer": {}, "fullAnswer": {"1": _object_id(scene, subject)}},
    }


def make_split(split: str, n: int, rng: np.random.Generator, world: WorldConfig, first_image_id: int):
    """``{qid: record}`` for ``n`` questions, the scenes, and per-template answer counts."""
    jobs = balanced_jobs(n, rng, world, TEMPLATES, template_answers)
    ids = (str(i) for i in range(first_image_id, first_image_id + 10 * n + 10))
    images = pack_images(jobs, rng, world, ids, task="GQA")
    records: dict[str, dict] = {}
    stats: dict = {t: Counter() for t in TEMPLATES}
    for scene, asked in images:
        for k, (q, answer) in enumerate(asked):
            qid = f"{scene.image_id}{k:02d}"
            records[qid] = record(scene, q, answer, qid)
            stats[q.template][answer] += 1
    return records, [scene for scene, _ in images], stats


DEFAULT_SIZES = {"train": 8000, "dev": 1000, "test": 1000}


def generate(out, writer, ctx, sizes: dict[str, int]):
    """Write the GQA files, every image, and ``gqa/ans2label.json`` from train + val answers."""
    from . import DemoTaskResult

    folder = out / FOLDER
    folder.mkdir(exist_ok=True)
    files, texts, manifest = {}, [], {}
    next_image = IMAGE_ID_START
    for split, n in sizes.items():
        records, scenes, stats = make_split(split, n, ctx.scene_rng, ctx.world, next_image)
        next_image += 10 * n + 10
        for scene in scenes:
            feats, boxes = ctx.renderer.render(scene, ctx.render_rng)
            writer.add(scene.image_id, feats, boxes, scene.width, scene.height)
        path = folder / f"{FILES[split]}_balanced_questions.json"
        path.write_text(json.dumps(records), encoding="utf-8")
        files[split] = str(path)
        texts += [r["question"] for r in records.values()]
        manifest[split] = {"questions": len(records), "images": len(scenes),
                           "questions_per_image": len(records) / len(scenes) if scenes else None,
                           "templates": {t: dict(sorted(c.items())) for t, c in stats.items()}}
    vocab = build_gqa_vocabulary([files[s] for s in ("train", "dev") if s in files])
    files["ans2label"] = str(write_ans2label(folder / "ans2label.json", vocab))
    return DemoTaskResult(files, texts, {"splits": manifest, "answers": len(vocab)})
