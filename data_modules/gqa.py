"""GQA (balanced): compositional questions about Visual Genome images, read from the public
``{train,val,testdev}_balanced_questions.json`` (one JSON object keyed by question id).

One row per question: ``[CLS] question [SEP]`` + the image's regions. GQA has one answer per
question, compared exactly (after stripping), so ``targets`` (B, A) is one-hot over the answers of
``ans2label.json``; an answer outside the vocabulary gives an all-zero row (it counts as wrong) and
their number is logged at setup. A file without answers (test / challenge) gives all-zero rows.
Store keys come from the string ``imageId`` through ``image_key`` (default ``"{image_id}"``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .base import VLDataModule
from .jsonl import read_json
from .tokenization import encode_uniter_batch
from .image_keys import ImageKeyPattern, key_pattern
from .vqa import AnswerVocabulary, QaDataset, QaExample

log = logging.getLogger(__name__)
IMAGE_KEY_FIELDS = {"image_id": "2375429"}  # image_key fields with sample values (imageId is a string)


def image_key_pattern(image_key: str | ImageKeyPattern = "{image_id}") -> ImageKeyPattern:
    """GQA's ``image_key`` checked: field ``{image_id}`` (a string: ``{image_id:012d}`` is refused)."""
    return key_pattern(image_key, IMAGE_KEY_FIELDS, "GQA image_key")


@dataclass(frozen=True)
class GqaQuestion:
    qid: str
    image_id: str
    question: str
    answer: Optional[str]


def read_gqa_questions(path: str | Path, require_answers: bool = True) -> list[GqaQuestion]:
    """Records of a balanced-questions file, in file order. ``require_answers=False`` accepts
    records without ``answer`` (test files)."""
    path = Path(path)
    data = read_json(path, "a GQA question file (<split>_balanced_questions.json)")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a JSON {type(data).__name__}, expected an object keyed by question id "
                         "({qid: {question, imageId, answer, ...}})")
    out = []
    for qid, rec in data.items():
        where = f"{path}, question {qid!r}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: a JSON {type(rec).__name__}, expected an object with question, imageId, answer")
        fields = ("question", "imageId", "answer") if require_answers else ("question", "imageId")
        for field in fields:
            value = rec.get(field)
            if not isinstance(value, str) or (field != "answer" and not value.strip()):
                got = "missing" if field not in rec else f"{type(value).__name__} {value!r}"
                raise ValueError(f"{where}: field {field!r} is {got}; expected a non-empty string"
                                 + (" (imageId is a string in GQA, e.g. \"2375429\")" if field == "imageId" else ""))
        answer = rec.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"{where}: field 'answer' is {type(answer).__name__} {answer!r}; expected a string")
        out.append(GqaQuestion(qid, rec["imageId"], rec["question"], None if answer is None else answer.strip()))
    if not out:
        raise ValueError(f"{path} holds no questions; expected an object keyed by question id")
    return out


class GqaDataModule(AnswerVocabulary, VLDataModule):
    """GQA balanced questions. ``train_file`` / ``val_file`` / ``test_file`` (testdev, the study's
    column) are ``*_balanced_questions.json``; ``train_file`` may list several files, read as one
    split with disjoint question ids (LXMERT trains on train + val balanced, validating on testdev); ``ans2label``: ``{answer: index}`` JSON (e.g. the
    1,842 answers of train + val). ``image_key`` maps ``{image_id}`` (the ``imageId`` string) to the
    store key. ``batch_size`` counts questions. Other arguments: see ``VLDataModule``."""

    supports_images = True  # GQA's images/{imageId}.jpg: the stem is the image_key

    def __init__(
        self,
        train_file: Union[str, list[str]],
        val_file: str,
        ans2label: str,
        test_file: Optional[str] = None,
        image_key: str = "{image_id}",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.set_image_key(image_key, image_key_pattern)
        self.train_files = [train_file] if isinstance(train_file, str) else list(train_file)
        if not self.train_files:
            raise ValueError("train_file lists no files")
        self.set_split_files(" + ".join(self.train_files), val_file, test_file)
        self.ans2label_path = ans2label
        self.out_of_vocabulary: dict[str, int] = {}

    def read_split(self, split: str, path: str) -> list[GqaQuestion]:
        """The split's questions: the train split's files in order, question ids disjoint."""
        if split != "train":
            return read_gqa_questions(path, require_answers=split != "test")
        questions: list[GqaQuestion] = []
        first_file: dict[str, str] = {}
        for file in self.train_files:
            for q in read_gqa_questions(file):
                if q.qid in first_file:
                    raise ValueError(f"question {q.qid!r} is in both {first_file[q.qid]} and {file}; expected "
                                     "disjoint train files")
                first_file[q.qid] = file
                questions.append(q)
        return questions

    def build_dataset(self, split: str, path: str) -> QaDataset:
        questions = self.read_split(split, path)
        ans2label = self.ans2label
        input_ids = encode_uniter_batch(self.tokenizer, [q.question for q in questions], self.max_txt_len)
        examples, oov = [], 0
        for q, ids in zip(questions, input_ids):
            target: tuple = ()
            if q.answer is not None:
                if q.answer in ans2label:
                    target = ((ans2label[q.answer], 1.0),)
                else:
                    oov += 1
            examples.append(QaExample(q.qid, tuple(ids), self.key_pattern.format(image_id=q.image_id), target))
        self.out_of_vocabulary[split] = oov
        if oov:
            log.warning("GQA %s (%s): %d of %d answers are not in the %d-answer vocabulary %s; their targets are "
                        "all zero (they count as wrong)", split, path, oov, len(examples), len(ans2label),
                        self.ans2label_path)
        return QaDataset(examples, self.store, len(ans2label), source=str(path), what=f"the GQA {split} questions",
                         labeled=all(q.answer is not None for q in questions))


def build_ans2label(init: dict, min_count: int) -> tuple[Path, str]:
    """``lightning-vl data``: GQA's ``ans2label.json`` from the train + val balanced answers
    (``min_count`` does not apply); ``init``: the config's ``data.init_args``."""
    from .answers import build_gqa_vocabulary, write_ans2label

    train = init["train_file"]
    files = list(dict.fromkeys([*([train] if isinstance(train, str) else train), init["val_file"]]))
    answers = build_gqa_vocabulary(files)
    write_ans2label(init["ans2label"], answers)
    return Path(init["ans2label"]), f"{len(answers)} answers of the train + val balanced questions"


# files of data.init_args that ``lightning-vl data`` builds when they are missing (data_modules/prepare.py)
DERIVED_FILES = {"ans2label": build_ans2label}
