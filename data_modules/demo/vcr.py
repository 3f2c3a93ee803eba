"""VCR-style questions about demo scenes, in VCR's public schema (``vcr/{train,val,test}.jsonl``
plus one metadata JSON per image under ``vcr/vcr1images/<movie>/``).

Objects are the scene's objects, named by their shape (the "class"), listed **left to right**:
UNITER gives regions no index embedding, so the only way a model can tell which region "[2]"
means is a visible cue, and here it is "the third object from the left". (Questions about left /
right would then be answerable from the indices alone, so there are none.) Regions are written
with ``shuffle=False``: object i is region i (VCR's ground-truth boxes, in ``objects`` order),
then the 1-3 clutter regions (the "detected" boxes).

Templates, each asking about one or two mentioned objects; the 4 answers form a 2×2 grid over two
attributes (true / other value of each), and so do the 4 rationales, which describe the answered
object(s) fully ("[i] is a small red metal cube .") and differ in two attributes the question did
not ask about:

* ``color_material``: "What color is [i] and what is it made of ?" — rationales: size × shape;
* ``size_shape``: "What shape is [i] ?" ("[i] is a small cube .") — rationales: color × material;
* ``color_shape``: "What is [i] ?" ("[i] is a red cube .") — rationales: size × material;
* ``pair_colors``: "What colors are [i, j] ?" (a two-object mention, "[i] and [j]") — colour of
  i × colour of j; rationales: shape of i × shape of j.

The "other" value of an attribute is drawn uniformly among the values no object of the image has,
when there are such values (else among all false values). So a wrong choice can often be ruled
out by "nothing in the image is yellow" — learnable without resolving the mention — while
two-valued attributes (size, material) usually need the mentioned object itself. The right
choice's position is drawn from a balanced list per template, so neither the question, the
choices nor their order say which choice is right: the image must be read. Scenes have 2-4
objects (``pair_colors`` needs two; more make "[3]" hard to find for a tiny model).

Store keys (``img_id``) are ``vcr-<split>-<n>``, unique in the shared demo store; the DataModule's
default ``image_key="{img_id}"`` finds them. Movies are ``demo_vcr_<split>_<m>`` (20 frames each),
``img_fn`` = ``<movie>/<movie>@<frame>.jpg``. Two questions are asked per image. Unlike VCR's test
file, the demo's ``test.jsonl`` keeps its labels, so ``trainer.test`` can score it.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from .world import COLORS, MATERIALS, SHAPES, SIZES, Scene, SceneObject, WorldConfig, make_scene

TEMPLATES = ("color_material", "size_shape", "color_shape", "pair_colors")
QUESTIONS_PER_IMAGE = 2
FRAMES_PER_MOVIE = 20
SPLIT_FILES = {"train": "train", "dev": "val", "test": "test"}
DEFAULT_SIZES = {"train": 3000, "dev": 500, "test": 500}
ATTRIBUTES = ("size", "color", "material", "shape")


MAX_OBJECTS = 4


def vcr_world(world: WorldConfig) -> WorldConfig:
    """The task's world: 2 to ``MAX_OBJECTS`` objects per scene (within the world's own range)."""
    high = min(world.max_objects, MAX_OBJECTS)
    return replace(world, min_objects=min(max(world.min_objects, 2), high), max_objects=high)


def _values(world: WorldConfig, attribute: str) -> tuple[str, ...]:
    return {"color": world.colors, "shape": world.shapes, "size": SIZES, "material": MATERIALS}[attribute]


def _other(rng: np.random.Generator, world: WorldConfig, attribute: str, true: str,
           objs: list[SceneObject]) -> str:
    """A false value, uniformly among those no object of the image has if any (else among all
    false values; from outside the palette only when it has a single value)."""
    pool = [v for v in _values(world, attribute) if v != true]
    absent = [v for v in pool if all(getattr(o, attribute) != v for o in objs)]
    pool = absent or pool
    if not pool:
        pool = [v for v in {"color": COLORS, "shape": SHAPES}[attribute] if v != true]
    return pool[int(rng.integers(len(pool)))]


def _grid(rng, world, objs: list[SceneObject], slots: list[tuple[int, str]]) -> list[dict[tuple[int, str], str]]:
    """The 4 assignments of (true / other value) to two (object, attribute) slots; the all-true one first."""
    others = {s: _other(rng, world, s[1], getattr(objs[s[0]], s[1]), objs) for s in slots}
    out = []
    for a in (True, False):
        for b in (True, False):
            out.append({s: (getattr(objs[s[0]], s[1]) if keep else others[s])
                        for s, keep in zip(slots, (a, b))})
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _description(idx: int, obj: SceneObject, values: dict[str, str]) -> list:
    """``[i] is a small red metal cube`` with ``values`` overriding the object's attributes."""
    attrs = [values.get(a, getattr(obj, a)) for a in ATTRIBUTES]
    return [[idx], "is", _article(attrs[0]), *attrs]


# single-object templates: question (None = the mention), the answers' two attributes, the rationales' two
SINGLE = {
    "color_material": (["What", "color", "is", None, "and", "what", "is", "it", "made", "of", "?"],
                       ("color", "material"), ("size", "shape")),
    "size_shape": (["What", "shape", "is", None, "?"], ("size", "shape"), ("color", "material")),
    "color_shape": (["What", "is", None, "?"], ("color", "shape"), ("size", "material")),
}


def make_question(template: str, scene: Scene, rng: np.random.Generator, world: WorldConfig):
    """``(question, answers, rationales)`` as mixed-token lists, the right choice first in both."""
    objs = list(scene.objects)
    n = len(objs)
    i = int(rng.integers(n))
    if template in SINGLE:
        question, (first, second), rationale_slots = SINGLE[template]
        question = [[i] if t is None else t for t in question]
        grid = _grid(rng, world, objs, [(i, first), (i, second)])
        if template == "color_material":
            answers = [[[i], "is", g[(i, "color")], "and", "made", "of", g[(i, "material")], "."] for g in grid]
        else:
            answers = [[[i], "is", _article(g[(i, first)]), g[(i, first)], g[(i, second)], "."] for g in grid]
        grid = _grid(rng, world, objs, [(i, a) for a in rationale_slots])
        rationales = [_description(i, objs[i], {a: v for (_, a), v in g.items()}) + ["."] for g in grid]
    elif template == "pair_colors":
        j = int(rng.integers(n - 1))
        j += j >= i
        question = ["What", "colors", "are", [i, j], "?"]
        grid = _grid(rng, world, objs, [(i, "color"), (j, "color")])
        answers = [[[i], "is", g[(i, "color")], "and", [j], "is", g[(j, "color")], "."] for g in grid]
        grid = _grid(rng, world, objs, [(i, "shape"), (j, "shape")])
        rationales = [_description(i, objs[i], {"shape": g[(i, "shape")]}) + [","]
                      + _description(j, objs[j], {"shape": g[(j, "shape")]}) + ["."] for g in grid]
    else:
        raise ValueError(f"demo VCR template {template!r}: expected one of {list(TEMPLATES)}")
    return question, answers, rationales


def _orig(tokens: list) -> str:
    """VCR's ``*_orig`` strings: object mentions as 1-based numbers."""
    return " ".join(t if isinstance(t, str) else " and ".join(str(k + 1) for k in t) for t in tokens)


def _words(tokens: list, objects: list[str]) -> str:
    """A sentence as the model reads it, for the vocabulary (mentions become their class names)."""
    return " ".join(t if isinstance(t, str) else " and ".join(objects[k] for k in t) for t in tokens)


def make_split(split: str, n: int, rng: np.random.Generator, world: WorldConfig):
    """``n`` VCR records, the scenes they show and per-template counts of right positions."""
    file_split = SPLIT_FILES.get(split, split)
    world = vcr_world(world)
    if n <= 0:
        return [], [], {t: {"questions": 0, "answer_label": [0] * 4, "rationale_label": [0] * 4} for t in TEMPLATES}
    templates = [TEMPLATES[k % len(TEMPLATES)] for k in rng.permutation(n)]
    wants = {t: {f: list(rng.permutation(np.arange(templates.count(t)) % 4)) for f in ("answer", "rationale")}
             for t in TEMPLATES}
    stats = {t: {"questions": 0, "answer_label": [0] * 4, "rationale_label": [0] * 4} for t in TEMPLATES}
    records, scenes, scene = [], [], None
    for q in range(n):
        if q % QUESTIONS_PER_IMAGE == 0:
            k = len(scenes)
            scene = make_scene(rng, f"vcr-{file_split}-{k}", world=world)
            scenes.append(scene)
        k = len(scenes) - 1
        movie = f"demo_vcr_{file_split}_{k // FRAMES_PER_MOVIE}"
        frame = f"{movie}/{movie}@{k % FRAMES_PER_MOVIE}"
        template = templates[q]
        question, answers, rationales = make_question(template, scene, rng, world)
        labels = {}
        for field, choices in (("answer", answers), ("rationale", rationales)):
            right = int(wants[template][field].pop())
            wrong = [choices[1 + p] for p in rng.permutation(3)]
            labels[field] = right
            choices[:] = wrong[:right] + [choices[0]] + wrong[right:]
            stats[template][f"{field}_label"][right] += 1
        stats[template]["questions"] += 1
        objects = [o.shape for o in scene.objects]
        records.append({
            "movie": movie,
            "objects": objects,
            "interesting_scores": [int(rng.integers(-1, 3))],
            "answer_likelihood": ("likely", "possible", "unlikely")[int(rng.integers(3))],
            "img_fn": frame + ".jpg",
            "metadata_fn": frame + ".json",
            "answer_orig": _orig(answers[labels["answer"]]),
            "question_orig": _orig(question),
            "rationale_orig": _orig(rationales[labels["rationale"]]),
            "question": question,
            "answer_match_iter": [int(x) for x in rng.integers(0, 4, 3)],
            "answer_sources": [int(x) for x in rng.integers(0, 10000, 4)],
            "answer_choices": answers,
            "answer_label": labels["answer"],
            "rationale_choices": rationales,
            "rationale_label": labels["rationale"],
            "rationale_sources": [int(x) for x in rng.integers(0, 10000, 4)],
            "rationale_match_iter": [int(x) for x in rng.integers(0, 4, 3)],
            "img_id": scene.image_id,
            "question_number": q % QUESTIONS_PER_IMAGE,
            "annot_id": f"{file_split}-{q}",
            "match_fold": f"{file_split}-{q % 2}",
            "match_index": q,
            "template": template,  # demo only: which generator made the question
        })
    return records, scenes, stats


def metadata(scene: Scene) -> dict:
    """VCR's per-image JSON: ground-truth boxes (pixel x1, y1, x2, y2, score), names, size."""
    return {"boxes": [[round(float(v), 2) for v in o.box] + [1.0] for o in scene.objects],
            "segms": [[] for _ in scene.objects], "names": [o.shape for o in scene.objects],
            "width": scene.width, "height": scene.height}


def generate(out, writer, ctx, sizes: dict[str, int]):
    """Write ``vcr/{train,val,test}.jsonl``, the per-image metadata and every image's regions."""
    from . import DemoTaskResult

    folder = out / "vcr"
    folder.mkdir(exist_ok=True)
    files, texts, manifest = {}, ["and"], {}
    for split, n in sizes.items():
        records, scenes, stats = make_split(split, n, ctx.scene_rng, ctx.world)
        by_id = {}
        for scene in scenes:
            feats, boxes = ctx.renderer.render(scene, ctx.render_rng, shuffle=False)
            writer.add(scene.image_id, feats, boxes, scene.width, scene.height)
            by_id[scene.image_id] = scene
        for r in records[::QUESTIONS_PER_IMAGE]:
            meta = folder / "vcr1images" / r["metadata_fn"]
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps(metadata(by_id[r["img_id"]])) + "\n", encoding="utf-8")
        name = SPLIT_FILES.get(split, split)
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        files[split] = str(path)
        for r in records:
            texts += [_words(s, r["objects"]) for s in (r["question"], *r["answer_choices"], *r["rationale_choices"])]
        texts += sorted({o for r in records for o in r["objects"]})
        manifest[split] = {"questions": len(records), "images": len(scenes),
                           "objects_per_image": float(np.mean([len(s.objects) for s in scenes])) if scenes else None,
                           "templates": stats}
    files["images"] = str(folder / "vcr1images")
    return DemoTaskResult(files, texts, {"splits": manifest})
