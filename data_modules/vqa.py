"""VQA v2: open-ended questions about COCO images, read from the public questions + annotations JSON.

One row per question: ``[CLS] question [SEP]`` + the image's regions. ``targets`` (B, A) holds the
soft scores (0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / 4+ matching annotators, see
``data_modules.answers``) over the answer vocabulary of ``ans2label.json``; a question none of
whose human answers is in the vocabulary gets an all-zero row (it can only score 0).
Questions and annotations are joined on ``question_id``; a question without an annotation (or
the reverse) is an error, except for test files given without annotations (all-zero targets,
for predictions). Store keys come from the int ``image_id`` through ``image_key``
(``"{image_id}"`` by default, ``"COCO_val2014_{image_id:012d}"`` for UNITER-style names).
"""
from __future__ import annotations

import argparse
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from .answers import labels_from_ans2label, read_ans2label, soft_targets
from .base import VLDataModule
from .batching import collate_pixel_rows, collate_rows
from .features import RegionFeatureStore
from .images import ImageSource
from .image_keys import ImageKeyPattern, key_pattern
from .jsonl import parse_json, read_json, read_text
from .tokenization import encode_uniter_batch

log = logging.getLogger(__name__)

NUM_HUMAN_ANSWERS = 10
IMAGE_KEY_FIELDS = {"image_id": 1}  # image_key fields with sample values (COCO's int image_id)


@dataclass(frozen=True)
class VqaQuestion:
    question_id: int
    image_id: int
    question: str


@dataclass(frozen=True)
class VqaAnnotation:
    question_id: int
    image_id: int
    answers: tuple[str, ...]
    multiple_choice_answer: str


@dataclass(frozen=True)
class QaExample:
    """One question, tokenised, with its store key and sparse target ``{label index: score}``."""

    qid: str
    input_ids: tuple[int, ...]
    image: str
    target: tuple[tuple[int, float], ...]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_object(path: str | Path, what: str, list_key: str) -> list:
    """The list under ``list_key`` of a JSON object file, with file-naming errors."""
    data = read_json(path, f"a VQA {what} file")
    if not isinstance(data, dict) or not isinstance(data.get(list_key), list):
        got = type(data).__name__ if not isinstance(data, dict) else f"keys {sorted(data)[:6]}"
        raise ValueError(f"{path}: expected a JSON object with a {list_key!r} list (a VQA {what} file), got {got}")
    return data[list_key]


def read_vqa_questions(path: str | Path) -> list[VqaQuestion]:
    """``questions`` of a ``v2_OpenEnded_mscoco_<split>_questions.json`` file."""
    items = _load_object(path, "questions", "questions")
    out, seen = [], {}
    for i, q in enumerate(items):
        where = f"{path}, questions[{i}]"
        if not isinstance(q, dict):
            raise ValueError(f"{where}: a JSON {type(q).__name__}, expected an object with image_id, question, question_id")
        qid = q.get("question_id")
        label = f" (question_id {qid})" if _is_int(qid) else ""
        for field, ok, want in (("question_id", _is_int, "an int"), ("image_id", _is_int, "an int"),
                                ("question", lambda v: isinstance(v, str), "a string")):
            if not ok(q.get(field)):
                got = "missing" if field not in q else f"{type(q[field]).__name__} {q[field]!r}"
                raise ValueError(f"{where}{label}: field {field!r} is {got}; expected {want}")
        if qid in seen:
            raise ValueError(f"{where}: question_id {qid} already used by questions[{seen[qid]}]")
        seen[qid] = i
        out.append(VqaQuestion(qid, q["image_id"], q["question"]))
    if not out:
        raise ValueError(f"{path} holds no questions; expected a non-empty 'questions' list")
    return out


def read_vqa_annotations(path: str | Path) -> dict[int, VqaAnnotation]:
    """``annotations`` of a ``v2_mscoco_<split>_annotations.json`` file, by question id; each must
    have 10 human answers."""
    items = _load_object(path, "annotations", "annotations")
    out: dict[int, VqaAnnotation] = {}
    index: dict[int, int] = {}
    for i, a in enumerate(items):
        where = f"{path}, annotations[{i}]"
        if not isinstance(a, dict):
            raise ValueError(f"{where}: a JSON {type(a).__name__}, expected an object with question_id, image_id, "
                             "answers, multiple_choice_answer")
        qid = a.get("question_id")
        label = f" (question_id {qid})" if _is_int(qid) else ""
        for field, ok, want in (("question_id", _is_int, "an int"), ("image_id", _is_int, "an int"),
                                ("multiple_choice_answer", lambda v: isinstance(v, str), "a string"),
                                ("answers", lambda v: isinstance(v, list), "a list of 10 {answer, answer_confidence, answer_id}")):
            if not ok(a.get(field)):
                got = "missing" if field not in a else f"{type(a[field]).__name__} {a[field]!r}"
                raise ValueError(f"{where}{label}: field {field!r} is {got}; expected {want}")
        answers = a["answers"]
        if len(answers) != NUM_HUMAN_ANSWERS:
            raise ValueError(f"{where}{label}: {len(answers)} human answers, expected {NUM_HUMAN_ANSWERS}")
        texts = []
        for k, ans in enumerate(answers):
            if not isinstance(ans, dict) or not isinstance(ans.get("answer"), str):
                raise ValueError(f"{where}{label}: answers[{k}] is {ans!r}; expected an object with a string 'answer'")
            texts.append(ans["answer"])
        if qid in out:
            raise ValueError(f"{where}: question_id {qid} already annotated by annotations[{index[qid]}]")
        index[qid] = i
        out[qid] = VqaAnnotation(qid, a["image_id"], tuple(texts), a["multiple_choice_answer"])
    return out


def read_question_ids(path: str | Path) -> set[int]:
    """Question ids from a JSON list of ints or a text file (ints separated by whitespace or commas)."""
    path = Path(path)
    expected = "a question-id file (a JSON list of ints, or ints separated by whitespace or commas)"
    text = read_text(path, expected)
    if text.lstrip().startswith("["):
        values = parse_json(text, path, "a JSON list of question ids")
        if not isinstance(values, list):
            raise ValueError(f"{path}: a JSON {type(values).__name__}, expected a list of question ids")
        for i, v in enumerate(values):
            if not _is_int(v):
                raise ValueError(f"{path}: entry {i} is {v!r}; expected an int question id")
        ids = set(values)
    else:
        ids = set()
        for lineno, line in enumerate(text.splitlines(), start=1):
            for token in line.replace(",", " ").split():
                try:
                    ids.add(int(token))
                except ValueError:
                    raise ValueError(f"{path}, line {lineno}: {token!r} is not an int question id") from None
    if not ids:
        raise ValueError(f"{path} lists no question ids")
    return ids


def join_questions(questions: list[VqaQuestion], annotations: Optional[dict[int, VqaAnnotation]],
                   q_path: str, a_path: Optional[str]) -> list[tuple[VqaQuestion, Optional[VqaAnnotation]]]:
    """Pair each question with its annotation; unmatched ids on either side are an error."""
    if annotations is None:
        return [(q, None) for q in questions]
    qids = {q.question_id for q in questions}
    lacking = [q.question_id for q in questions if q.question_id not in annotations]
    extra = [qid for qid in annotations if qid not in qids]
    for ids, msg in ((lacking, f"questions of {q_path} have no annotation in {a_path}"),
                     (extra, f"annotations of {a_path} have no question in {q_path}")):
        if ids:
            raise ValueError(f"{len(ids)} {msg}: question_id {', '.join(map(str, ids[:5]))}"
                             f"{' ...' if len(ids) > 5 else ''}; expected the files of one split")
    pairs = []
    for q in questions:
        a = annotations[q.question_id]
        if a.image_id != q.image_id:
            raise ValueError(f"question_id {q.question_id}: image_id {q.image_id} in {q_path} but {a.image_id} in "
                             f"{a_path}; expected the same image")
        pairs.append((q, a))
    return pairs


def check_images(examples, store: RegionFeatureStore | ImageSource, source: str, what: str) -> None:
    """Every example's image must be in the store (checked for all at once, before training)."""
    store.require(((ex.image, f"question {ex.qid}") for ex in examples), source or what)


class QaDataset(Dataset):
    """One row per question (VQA and GQA): text + the image's regions (or, from an image source,
    its resized pixels); dense soft-score targets."""

    def __init__(self, examples: list[QaExample], store: RegionFeatureStore | ImageSource, num_labels: int,
                 source: str = "", what: str = "the questions", labeled: bool = True):
        check_images(examples, store, source, what)
        self.labeled = labeled  # False: a test file without answers (batches say so; metrics refuse them)
        self.examples = examples
        self.store = store
        self.num_labels = num_labels
        self.source = source

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        target = torch.zeros(self.num_labels, dtype=torch.float32)
        for label, score in ex.target:
            target[label] = score
        row = {"input_ids": torch.tensor(ex.input_ids, dtype=torch.long)}
        if isinstance(self.store, ImageSource):
            row["pixels"] = self.store.get(ex.image, example=f"question {ex.qid}")
        else:
            row["img_feat"], row["img_pos_feat"] = self.store.get(ex.image, example=f"question {ex.qid}")
        return {"row": row, "target": target, "id": ex.qid, "labeled": self.labeled}

    def collate(self, items: list[dict]) -> dict:
        """Row k = question k; ``targets`` (B, A) float32 soft scores; ``ids`` the question ids.
        With an image source the rows are pixel rows (``collate_pixel_rows``)."""
        rows = [item["row"] for item in items]
        if isinstance(self.store, ImageSource):
            batch = collate_pixel_rows(rows, self.store.transform.size_divisor)
        else:
            batch = collate_rows(rows)
        batch["targets"] = torch.stack([item["target"] for item in items])
        batch["ids"] = [item["id"] for item in items]
        if not all(item.get("labeled", True) for item in items):
            batch["unlabeled"] = True
        return batch


def image_key_pattern(image_key: str | ImageKeyPattern = "{image_id}") -> ImageKeyPattern:
    """VQA's ``image_key`` checked: field ``{image_id}`` (an int)."""
    return key_pattern(image_key, IMAGE_KEY_FIELDS, "VQA image_key")


class AnswerVocabulary:
    """Answer classification (VQA, GQA): the ``ans2label`` file, read on first use, gives the
    label strings the CLI hands to the model. Needs ``self.ans2label_path``."""

    ans2label_path: str
    _ans2label: Optional[dict[str, int]] = None

    @property
    def ans2label(self) -> dict[str, int]:
        if self._ans2label is None:
            self._ans2label = read_ans2label(self.ans2label_path)
        return self._ans2label

    @property
    def labels(self) -> list[str]:
        """Answer strings in index order."""
        return labels_from_ans2label(self.ans2label)


class VqaDataModule(AnswerVocabulary, VLDataModule):
    """VQA v2 in its public format.

    ``train_questions`` / ``train_annotations``: paired lists (UNITER trains on train2014 and most
    of val2014). ``val_questions`` / ``val_annotations``: the validation split, optionally cut to
    the question ids of ``val_ids`` (UNITER's held-out mini-dev of val2014); ``train_exclude_ids``
    drops ids from training so that mini-dev is never trained on. ``test_questions`` with
    optional ``test_annotations`` (without them targets are all zero, for predictions).
    ``ans2label``: ``{answer: index}`` JSON (the 3,129-answer vocabulary). ``image_key`` maps
    ``{image_id}`` (int) to the store key. ``batch_size`` counts questions. Other arguments: see
    ``VLDataModule``."""

    supports_images = True

    def __init__(
        self,
        train_questions: list[str],
        train_annotations: list[str],
        val_questions: str,
        val_annotations: str,
        ans2label: str,
        test_questions: Optional[str] = None,
        test_annotations: Optional[str] = None,
        val_ids: Optional[str] = None,
        train_exclude_ids: Optional[str] = None,
        image_key: str = "{image_id}",
        **kwargs,
    ):
        super().__init__(**kwargs)
        train_questions = [train_questions] if isinstance(train_questions, str) else list(train_questions)
        train_annotations = [train_annotations] if isinstance(train_annotations, str) else list(train_annotations)
        if not train_questions or len(train_questions) != len(train_annotations):
            raise ValueError(f"train_questions ({len(train_questions)} files) and train_annotations "
                             f"({len(train_annotations)} files) must be non-empty paired lists, one annotations "
                             "file per questions file")
        if test_annotations and not test_questions:
            raise ValueError("test_annotations given without test_questions")
        self.set_image_key(image_key, image_key_pattern)
        self.set_split_files(" + ".join(train_questions), val_questions, test_questions)
        self.train_questions, self.train_annotations = train_questions, train_annotations
        self.val_questions, self.val_annotations = val_questions, val_annotations
        self.test_questions, self.test_annotations = test_questions, test_annotations
        self.val_ids, self.train_exclude_ids = val_ids, train_exclude_ids
        self.ans2label_path = ans2label

    def _pairs(self, split: str) -> list[tuple[str, Optional[str]]]:
        if split == "train":
            return list(zip(self.train_questions, self.train_annotations))
        if split == "val":
            return [(self.val_questions, self.val_annotations)]
        return [(self.test_questions, self.test_annotations)]

    def read_split(self, split: str) -> list[tuple[VqaQuestion, Optional[VqaAnnotation]]]:
        """The split's (question, annotation) pairs after the id filters; question ids unique."""
        pairs: list = []
        first_file: dict[int, str] = {}
        for q_path, a_path in self._pairs(split):
            questions = read_vqa_questions(q_path)
            annotations = read_vqa_annotations(a_path) if a_path else None
            for q, a in join_questions(questions, annotations, q_path, a_path):
                if q.question_id in first_file:
                    raise ValueError(f"question_id {q.question_id} is in both {first_file[q.question_id]} and {q_path}; "
                                     f"expected disjoint {split} files")
                first_file[q.question_id] = q_path
                pairs.append((q, a))
        if split == "val" and self.val_ids:
            keep = read_question_ids(self.val_ids)
            unknown = sorted(keep - first_file.keys())
            if unknown:
                raise ValueError(f"{self.val_ids}: {len(unknown)} question ids are not in {self.val_questions}: "
                                 f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; expected a subset of the val questions")
            pairs = [p for p in pairs if p[0].question_id in keep]
        if split == "train" and self.train_exclude_ids:
            drop = read_question_ids(self.train_exclude_ids)
            before = len(pairs)
            pairs = [p for p in pairs if p[0].question_id not in drop]
            log.info("VQA train: dropped %d of %d questions listed in %s", before - len(pairs), before,
                     self.train_exclude_ids)
            if not pairs:
                raise ValueError(f"{self.train_exclude_ids} excludes every training question")
        return pairs

    def build_dataset(self, split: str, path: str) -> QaDataset:
        pairs = self.read_split(split)
        ans2label = self.ans2label
        input_ids = encode_uniter_batch(self.tokenizer, [q.question for q, _ in pairs], self.max_txt_len)
        examples, unanswerable = [], 0
        for (q, a), ids in zip(pairs, input_ids):
            target = soft_targets(a.answers, ans2label) if a is not None else {}
            unanswerable += a is not None and not target
            examples.append(QaExample(str(q.question_id), tuple(ids), self.key_pattern.format(image_id=q.image_id),
                                      tuple(sorted(target.items()))))
        if unanswerable:
            log.info("VQA %s: %d of %d questions have no human answer in the %d-answer vocabulary (all-zero targets)",
                     split, unanswerable, len(examples), len(ans2label))
        return QaDataset(examples, self.store, len(ans2label), source=str(path), what=f"the VQA {split} questions",
                         labeled=all(a is not None for _, a in pairs))


def build_ans2label(init: dict, min_count: int) -> tuple[Path, str]:
    """``lightning-vl data``: VQA's ``ans2label.json`` by the standard recipe (normalised
    ``multiple_choice_answer`` of the training annotations, kept when >= ``min_count`` distinct
    questions give it); ``init``: the config's ``data.init_args``."""
    from .answers import build_vqa_vocabulary, write_ans2label

    annotations = []
    for path in init["train_annotations"]:
        annotations += _load_object(path, "annotations", "annotations")
    answers = build_vqa_vocabulary(annotations, min_count=min_count, source=", ".join(init["train_annotations"]))
    write_ans2label(init["ans2label"], answers)
    return Path(init["ans2label"]), f"{len(answers)} answers with >= {min_count} questions"


# files of data.init_args that ``lightning-vl data`` builds when they are missing (data_modules/prepare.py)
DERIVED_FILES = {"ans2label": build_ans2label}


# ViLT's VQA split (the paper's "VQA mini-dev (ViLT's)") --------------------------------------------
# dandelin/ViLT vilt/utils/write_vqa.py drops every question none of whose human answers is in the
# answer vocabulary (train2014 and val2014 alike), shuffles val2014's remaining images and keeps the
# last 1,000 apart (vqav2_rest_val, its validation set); the rest of val2014 (vqav2_trainable_val)
# trains with train2014 (vilt/datasets/vqav2_dataset.py). The shuffle is unseeded and the split was
# not published, so ``vilt_minival`` draws the 1,000 images with a fixed seed from the sorted image
# ids: the same construction, not ViLT's own images. ``python -m data_modules.vqa --help``.
VILT_MINIVAL_IMAGES = 1000  # write_vqa.py: pdtable[-1000:] (rows are images)


def answerable(questions: str, annotations: str, ans2label: dict) -> tuple[list[tuple[int, int]], list[int]]:
    """``([(question_id, image_id)] with an in-vocabulary human answer, [unanswerable question ids])``."""
    keep, drop = [], []
    for q, a in join_questions(read_vqa_questions(questions), read_vqa_annotations(annotations), questions, annotations):
        if soft_targets(a.answers, ans2label):
            keep.append((q.question_id, q.image_id))
        else:
            drop.append(q.question_id)
    return keep, drop


def vilt_minival(val: tuple[str, str], ans2label: str, train: Sequence[tuple[str, str]] = (),
                 images: int = VILT_MINIVAL_IMAGES, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(mini-dev question ids, training exclusions)``: the answerable questions of ``images``
    val images drawn with ``seed``; exclusions = those + the unanswerable questions of ``val`` and
    ``train`` (pairs of questions, annotations files).

    Raises:
        ValueError: fewer than ``images`` val images have an answerable question.
    """
    vocab = read_ans2label(ans2label)
    kept, dropped = answerable(*val, vocab)
    image_ids = sorted({image for _, image in kept})
    if len(image_ids) < images:
        raise ValueError(f"{val[0]}: {len(image_ids)} images with an answerable question, fewer than {images}")
    random.Random(seed).shuffle(image_ids)
    held = set(image_ids[-images:])
    minival = sorted(qid for qid, image in kept if image in held)
    for pair in train:
        dropped += answerable(*pair, vocab)[1]
    return minival, sorted(set(minival) | set(dropped))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m data_modules.vqa``: ViLT's mini-dev question ids (``--out``, the config's
    ``val_ids``) and, with ``--exclude-out``, those plus every unanswerable question of ``--val`` and
    ``--train`` (``train_exclude_ids``: the training set is then ViLT's, answerable questions only)."""
    ap = argparse.ArgumentParser(description="ViLT's VQA mini-dev (1,000 val2014 images, answerable questions) "
                                             "as question-id files")
    ap.add_argument("--val", nargs=2, required=True, metavar=("QUESTIONS", "ANNOTATIONS"), help="val2014's files")
    ap.add_argument("--train", nargs=2, action="append", default=[], metavar=("QUESTIONS", "ANNOTATIONS"),
                    help="other training files (repeatable): their unanswerable questions are excluded")
    ap.add_argument("--ans2label", required=True)
    ap.add_argument("--images", type=int, default=VILT_MINIVAL_IMAGES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="the mini-dev's question ids (val_ids)")
    ap.add_argument("--exclude-out", help="mini-dev + unanswerable question ids (train_exclude_ids)")
    args = ap.parse_args(argv)
    minival, exclude = vilt_minival(tuple(args.val), args.ans2label, [tuple(p) for p in args.train], args.images,
                                    args.seed)
    for path, ids in ((args.out, minival), (args.exclude_out, exclude)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
            print(f"{path}: {len(ids)} question ids")


if __name__ == "__main__":
    main()
