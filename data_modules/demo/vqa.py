"""VQA v2-style questions about demo scenes, in VQA's public questions + annotations JSON.

Templates: counting ("How many red cubes are there?", 0-6), existence ("Is there a metal cone?"),
and queries of the colour, shape or material of a uniquely described object. As in NLVR2's
generator, every question's wording is drawn first and its answer is assigned from a balanced
list per template, independently of the wording; a scene is then sampled (from a proposal that
depends on the wording only) until the question has that answer. So the text alone names the
template, never the answer. Several questions share an image, as in VQA (about five): after an
image is made for the first waiting question, the next waiting questions whose pre-assigned
answer the image happens to have are asked about it too.

Ten "annotators" answer each question: most give the true answer, some a surface variant
("two", "2.", "Yes!", "the cube") that the official normalisation maps back, and on average
~10% (none on half the questions, 10-30% on the others) a neighbouring count, the other yes/no or another attribute value,
so soft scores below 1 occur. Image ids are ints from 1,000,000 (store key ``str(image_id)``),
``question_id = image_id * 1000 + k``. Files: ``vqa/v2_OpenEnded_mscoco_{train2014,val2014,
test-dev2015}_questions.json``, ``vqa/v2_mscoco_{...}_annotations.json`` (test-dev has
annotations here, so the demo can score it) and ``vqa/ans2label.json`` built from the train
annotations with the standard recipe.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np

from ..answers import build_vqa_vocabulary, prep_answer, write_ans2label
from .world import MATERIALS, SIZES, ObjectSpec, Scene, WorldConfig, make_scene

FOLDER = "vqa"
IMAGE_ID_START = 1_000_000
SUBTYPES = {"train": "train2014", "dev": "val2014", "test": "test-dev2015"}
MAX_COUNT = 6
MIN_COUNT = 5  # vocabulary threshold for the demo (9 on real VQA); keeps every template answer
SMALL_TRAIN = 2000  # fewer training questions: keep every answer (min_count 1)
NUMBER_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
QUESTIONS_PER_IMAGE = (3, 6)  # drawn per image, inclusive
SCAN = 60  # waiting questions tried on an image made for another one


@dataclass(frozen=True)
class DemoQuestion:
    """A worded question: ``solve(scene)`` gives its answer there, or None when its presupposition
    (e.g. "the large sphere" is one object) fails; ``focus`` is what the scene proposal favours."""

    template: str
    text: str
    solve: Callable[[Scene], Optional[str]]
    focus: tuple[ObjectSpec, ...]
    kind: str  # "number", "yes/no", "color", "shape", "material", "side": how annotators err
    info: dict = field(default_factory=dict)
    # For queries of an attribute that the presupposition does not mention: the object whose
    # attribute is the answer (or None). Setting it to the wanted value gives the scene rejection
    # sampling would, with far fewer draws (the attribute is independent of the presupposition).
    subject: Optional[Callable[[Scene], object]] = None
    attribute: Optional[str] = None


def assign_answer(scene: Scene, question: DemoQuestion, want: str) -> Scene:
    """``scene`` with the queried attribute of the question's subject set to ``want``."""
    obj = question.subject(scene) if question.subject is not None else None
    if obj is None:
        return scene
    objects = tuple(dataclasses.replace(o, **{question.attribute: want}) if o is obj else o for o in scene.objects)
    return dataclasses.replace(scene, objects=objects)


def pick(rng: np.random.Generator, values: Sequence):
    return values[int(rng.integers(len(values)))]


@lru_cache(maxsize=None)
def _wanted(spec: ObjectSpec) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in vars(spec).items() if v is not None)


def fits(obj, spec: ObjectSpec) -> bool:
    """``spec.matches(obj)``, faster: scenes are rejection-sampled by the ten thousand."""
    for name, value in _wanted(spec):
        if getattr(obj, name) != value:
            return False
    return True


def count(scene: Scene, spec: ObjectSpec) -> int:
    return sum(1 for o in scene.objects if fits(o, spec))


def unique(scene: Scene, spec: ObjectSpec):
    """The only object matching ``spec``, or None."""
    found = None
    for obj in scene.objects:
        if fits(obj, spec):
            if found is not None:
                return None
            found = obj
    return found


def phrase(spec: ObjectSpec, plural: bool = False) -> str:
    return spec.noun_phrase(plural=plural)


# ---- VQA templates ------------------------------------------------------------------------------
def count_question(rng, world: WorldConfig) -> DemoQuestion:
    kind = int(rng.integers(3))
    spec = ObjectSpec(color=pick(rng, world.colors) if kind != 1 else None,
                      shape=pick(rng, world.shapes) if kind != 0 else None)
    return DemoQuestion("count", f"How many {phrase(spec, plural=True)} are there?",
                        lambda s: str(count(s, spec)), (spec,), "number",
                        {"question_type": "how many", "answer_type": "number"})


def exist_question(rng, world: WorldConfig) -> DemoQuestion:
    extra = int(rng.integers(3))
    spec = ObjectSpec(color=pick(rng, world.colors), shape=pick(rng, world.shapes),
                      size=pick(rng, SIZES) if extra == 1 else None,
                      material=pick(rng, MATERIALS) if extra == 2 else None)
    return DemoQuestion("exist", f"Is there {spec.with_article()}?",
                        lambda s: "yes" if any(fits(o, spec) for o in s.objects) else "no", (spec,), "yes/no",
                        {"question_type": "is there a", "answer_type": "yes/no"})


def _query(template: str, attribute: str, spec: ObjectSpec, text: str, qtype: str) -> DemoQuestion:
    def solve(scene):
        obj = unique(scene, spec)
        return None if obj is None else getattr(obj, attribute)
    return DemoQuestion(template, text, solve, (spec,), attribute, {"question_type": qtype, "answer_type": "other"},
                        subject=lambda scene: unique(scene, spec), attribute=attribute)


def color_question(rng, world: WorldConfig) -> DemoQuestion:
    extra = int(rng.integers(3))
    spec = ObjectSpec(shape=pick(rng, world.shapes), size=pick(rng, SIZES) if extra == 1 else None,
                      material=pick(rng, MATERIALS) if extra == 2 else None)
    return _query("color", "color", spec, f"What color is the {phrase(spec)}?", "what color is the")


def shape_question(rng, world: WorldConfig) -> DemoQuestion:
    extra = int(rng.integers(2))
    spec = ObjectSpec(color=pick(rng, world.colors), size=pick(rng, SIZES) if extra else None,
                      material=None if extra else pick(rng, MATERIALS))
    return _query("shape", "shape", spec, f"What shape is the {phrase(spec)}?", "what")


def material_question(rng, world: WorldConfig) -> DemoQuestion:
    extra = int(rng.integers(2))
    spec = ObjectSpec(shape=pick(rng, world.shapes), color=pick(rng, world.colors) if extra else None,
                      size=None if extra else pick(rng, SIZES))
    return _query("material", "material", spec, f"What is the {phrase(spec)} made of?", "what is the")


TEMPLATES: dict[str, Callable[[np.random.Generator, WorldConfig], DemoQuestion]] = {
    "count": count_question,
    "exist": exist_question,
    "color": color_question,
    "shape": shape_question,
    "material": material_question,
}


def template_answers(template: str, world: WorldConfig) -> tuple[str, ...]:
    """The answers a VQA template is balanced over."""
    return {
        "count": tuple(str(n) for n in range(min(MAX_COUNT, world.max_objects) + 1)),
        "exist": ("yes", "no"),
        "color": tuple(world.colors),
        "shape": tuple(world.shapes),
        "material": MATERIALS,
    }[template]


# ---- balanced questions packed onto shared images ---------------------------------------------
def balanced_jobs(n: int, rng: np.random.Generator, world: WorldConfig, templates: dict, answers_of) -> list:
    """``n`` (question, wanted answer) pairs: templates in turn, answers cycled per template in a
    random order, wordings drawn independently of the answers."""
    names = list(templates)
    per_template = {t: [names[k % len(names)] for k in range(n)].count(t) for t in names}
    wants = {}
    for t, m in per_template.items():
        options = answers_of(t, world)
        wants[t] = [options[k] for k in rng.permutation(np.arange(m) % len(options))]
    order = [names[k % len(names)] for k in rng.permutation(n)]
    return [(templates[t](rng, world), wants[t].pop()) for t in order]


def pack_images(jobs: list, rng: np.random.Generator, world: WorldConfig, image_ids, per_image=QUESTIONS_PER_IMAGE,
                scan: int = SCAN, max_tries: int = 5000, task: str = "VQA") -> list[tuple[Scene, list]]:
    """Images for the jobs: ``[(scene, [(question, answer), ...]), ...]``. Each image is sampled for
    the first waiting job (rejection on its pre-assigned answer); then later waiting jobs whose
    answer the image has join it (distinct wordings), up to a per-image number."""
    pending = list(jobs)
    images = []
    while pending:
        question, want = pending.pop(0)
        image_id = next(image_ids)
        for _ in range(max_tries):
            scene = make_scene(rng, image_id, question.focus, focus_rate=0.9 * rng.random(), world=world)
            if question.subject is not None:
                scene = assign_answer(scene, question, want)
            if question.solve(scene) == want:
                break
        else:
            raise ValueError(f"demo {task}: no scene in {max_tries} draws answers {question.text!r} with {want!r}; "
                             f"the world {world} is too small for the {question.template!r} template")
        asked = [(question, want)]
        texts = {question.text}
        room = int(rng.integers(per_image[0], per_image[1] + 1)) - 1
        k = 0
        while room and k < min(scan, len(pending)):
            other, other_want = pending[k]
            if other.text not in texts and other.solve(scene) == other_want:
                asked.append(pending.pop(k))
                texts.add(other.text)
                room -= 1
            else:
                k += 1
        images.append((scene, asked))
    return images


# ---- annotators ---------------------------------------------------------------------------------
def surface_variant(answer: str, kind: str, u: float) -> str:
    """A way of writing ``answer`` that the VQA normalisation maps back to it."""
    if kind == "number":
        n = int(answer)
        forms = [NUMBER_NAMES[n], NUMBER_NAMES[n].capitalize(), f"{n}."] + (["none"] if n == 0 else [])
    elif kind == "yes/no":
        forms = [answer.capitalize(), f"{answer}.", f"{answer.capitalize()}!"]
    elif kind == "shape":
        forms = [answer.capitalize(), f"a {answer}", f"the {answer}."]
    else:
        forms = [answer.capitalize(), f"{answer}.", f"the {answer}"]
    return forms[int(u * len(forms))]


def neighbour(answer: str, kind: str, world: WorldConfig, u: float) -> str:
    """A plausible wrong answer: a neighbouring count, the other yes/no, another value."""
    if kind == "number":
        n = int(answer)
        return str(n + 1) if n == 0 or u < 0.5 else str(n - 1)
    options = {"yes/no": ("yes", "no"), "color": world.colors, "shape": world.shapes,
               "material": MATERIALS, "side": ("left", "right")}[kind]
    others = [o for o in options if o != answer]
    return others[int(u * len(others))] if others else answer


def human_answers(truth: str, kind: str, world: WorldConfig, rng: np.random.Generator) -> list[dict]:
    """Ten VQA answer entries. Half the questions are clear-cut (nobody errs); on the others each
    annotator errs with a rate uniform in [0.1, 0.3] (~10% overall: more would hand a constant
    answer too much partial credit on two-way questions)."""
    u = rng.random((10, 4))
    rate = 0.0 if u[0, 3] < 0.5 else 0.1 + 0.2 * u[1, 3]
    out = []
    for k in range(10):
        wrong = u[k, 0] < rate
        answer = neighbour(truth, kind, world, u[k, 1]) if wrong else truth
        if u[k, 2] < 0.25:
            answer = surface_variant(answer, kind, u[k, 3])
        confidence = "maybe" if wrong or u[k, 3] < 0.1 else "yes"
        out.append({"answer": answer, "answer_confidence": confidence, "answer_id": k + 1})
    return out


def multiple_choice_answer(answers: list[dict], truth: str) -> str:
    """The most common normalised answer (ties: the truth), as VQA's most frequent answer."""
    counts = Counter(prep_answer(a["answer"]) for a in answers)
    best = max(counts.values())
    return truth if counts.get(truth) == best else min(a for a, c in counts.items() if c == best)


# ---- files --------------------------------------------------------------------------------------
def make_split(split: str, n: int, rng: np.random.Generator, world: WorldConfig, first_image_id: int):
    """VQA questions and annotations JSON objects for ``n`` questions, the scenes, and stats."""
    jobs = balanced_jobs(n, rng, world, TEMPLATES, template_answers)
    ids = (str(i) for i in range(first_image_id, first_image_id + 10 * n + 10))
    images = pack_images(jobs, rng, world, ids)
    subtype = SUBTYPES[split]
    questions, annotations = [], []
    stats: dict = {t: Counter() for t in TEMPLATES}
    for scene, asked in images:
        image_id = int(scene.image_id)
        for k, (q, answer) in enumerate(asked):
            qid = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": q.text, "question_id": qid})
            answers = human_answers(answer, q.kind, world, rng)
            annotations.append({"question_type": q.info["question_type"], "multiple_choice_answer":
                                multiple_choice_answer(answers, answer), "answers": answers, "image_id": image_id,
                                "answer_type": q.info["answer_type"], "question_id": qid})
            stats[q.template][answer] += 1
    info = {"description": "lightning-vl demo world questions in VQA v2's format", "version": "2.0", "year": 2024}
    q_file = {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {"name": "demo", "url": ""},
              "data_subtype": subtype, "questions": questions}
    a_file = {"info": info, "license": {"name": "demo", "url": ""}, "data_subtype": subtype, "data_type": "mscoco",
              "annotations": annotations}
    return q_file, a_file, [scene for scene, _ in images], stats


DEFAULT_SIZES = {"train": 8000, "dev": 1000, "test": 1000}


def generate(out, writer, ctx, sizes: dict[str, int]):
    """Write the VQA files, every image, and ``vqa/ans2label.json`` from the train annotations."""
    from . import DemoTaskResult

    folder = out / FOLDER
    folder.mkdir(exist_ok=True)
    files, texts, manifest = {}, [], {}
    next_image = IMAGE_ID_START
    train_annotations, all_annotations = [], []
    for split, n in sizes.items():
        q_file, a_file, scenes, stats = make_split(split, n, ctx.scene_rng, ctx.world, next_image)
        next_image += 10 * n + 10
        for scene in scenes:
            feats, boxes = ctx.renderer.render(scene, ctx.render_rng)
            writer.add(scene.image_id, feats, boxes, scene.width, scene.height)
        subtype = SUBTYPES[split]
        q_path = folder / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
        a_path = folder / f"v2_mscoco_{subtype}_annotations.json"
        q_path.write_text(json.dumps(q_file), encoding="utf-8")
        a_path.write_text(json.dumps(a_file), encoding="utf-8")
        files[f"{split}_questions"], files[f"{split}_annotations"] = str(q_path), str(a_path)
        texts += [q["question"] for q in q_file["questions"]]
        if split == "train":
            train_annotations = a_file["annotations"]
        all_annotations += a_file["annotations"]
        questions = len(q_file["questions"])
        manifest[split] = {"questions": questions, "images": len(scenes),
                           "questions_per_image": questions / len(scenes) if scenes else None,
                           "templates": {t: dict(sorted(c.items())) for t, c in stats.items()}}
    # Tiny worlds (tests) keep every answer: at a handful of questions per answer the threshold
    # would leave an empty vocabulary.
    min_count = MIN_COUNT if len(train_annotations) >= SMALL_TRAIN else 1
    vocab = build_vqa_vocabulary(train_annotations or all_annotations, min_count=min_count,
                                 source=files.get("train_annotations", "demo annotations"))
    files["ans2label"] = str(write_ans2label(folder / "ans2label.json", vocab))
    return DemoTaskResult(files, texts, {"splits": manifest, "answers": len(vocab), "min_count": min_count})
