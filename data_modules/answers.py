"""VQA answers: the official normalisation, soft scores, answer vocabularies and ``ans2label.json``.

Normalisation follows the **newest** GT-Vision-Lab ``vqaEval.py`` (master, the one with
``{ } - !`` in the punctuation list and ASCII apostrophes in the contraction table):

1. newlines / tabs become spaces, ends are stripped;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a
   space somewhere in the (original) text or the text has a digit-comma-digit, else replaced by a
   space; then every ``.`` not followed by a digit is removed (``2.5`` survives). ``'`` and ``:``
   are kept (``don't``, ``8:00``);
3. digits / articles: lower-case, split on whitespace, number words ``none zero one .. ten`` →
   ``0 0 1 .. 10``, drop ``a an the``, repair apostrophe-less contractions (``dont`` → ``don't``).

The evaluator applies steps 2-3 only when the 10 human answers are not all identical
(``vqa_accuracy`` reproduces that). Its table's keys that can never match after lower-casing
(``Im``, ``Ive``, ``Id've``, ``I'dve``) and its identity entries are left out: same behaviour.

Training side (``prep_answer``): every answer goes through steps 1-3 unconditionally and then
loses any remaining ``,`` (bottom-up-attention-vqa / OpenVQA ``prep_ans``). Both the vocabulary
(normalised ``multiple_choice_answer``) and the soft targets (normalised human answers, as OpenVQA
does; the BUTD script counts the raw answers, which misses ``"Two"`` vs ``"2"``) use it.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

from .jsonl import read_json

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(("a", "an", "the"))

# The contracted forms of vqaEval's table. Its keys are these forms with exactly one apostrophe
# left out (``couldn't've`` → ``couldnt've`` and ``couldn'tve``); see _contraction_table.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
"""


def _contraction_table() -> dict[str, str]:
    table = {}
    for full in _CONTRACTED.split():
        cuts = [i for i, c in enumerate(full) if c == "'"]
        for i in cuts:
            table[full[:i] + full[i + 1:]] = full
    table["somebody'd"] = "somebodyd"  # sic: vqaEval maps this one backwards
    return table


CONTRACTIONS = _contraction_table()
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_PUNCT_CHARS = frozenset(PUNCTUATION + (".",))

# m matching human answers (of 10) -> VQA accuracy; equals vqaEval's leave-one-out average.
SOFT_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)


def process_punctuation(text: str) -> str:
    """vqaEval step 2 (decisions are made on the original text, as the evaluator does)."""
    if not _PUNCT_CHARS.intersection(text):
        return text
    delete = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        out = out.replace(p, "" if delete or (p + " ") in text or (" " + p) in text else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digit_article(text: str) -> str:
    """vqaEval step 3: lower-case, number words to digits, no articles, contractions repaired."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


@lru_cache(maxsize=1 << 16)
def normalize_answer(answer: str) -> str:
    """The evaluator's full normalisation of one answer (steps 1-3); cached, answers repeat a lot."""
    return process_digit_article(process_punctuation(_clean_whitespace(answer)))


def prep_answer(answer: str) -> str:
    """Training-side normalisation: ``normalize_answer`` then no commas (BUTD / OpenVQA)."""
    return normalize_answer(answer).replace(",", "")


def soft_score(matches: int) -> float:
    """VQA accuracy of an answer given by ``matches`` of the 10 annotators."""
    if matches < 0:
        raise ValueError(f"matching answers must be >= 0, got {matches}")
    return SOFT_SCORES[min(matches, 4)]


def vqa_accuracy(prediction: str, gt_answers: Iterable[str]) -> float:
    """The official per-question accuracy (newest vqaEval): mean over the 10 leave-one-out sets of
    min(#matches among the other 9 / 3, 1); normalisation only when the answers disagree."""
    gts = [_clean_whitespace(a) for a in gt_answers]
    if not gts:
        raise ValueError("vqa_accuracy needs the human answers, got none")
    pred = _clean_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    matches = [g == pred for g in gts]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(gts)


def soft_targets(answers: Iterable[str], ans2label: Mapping[str, int]) -> dict[int, float]:
    """``{label index: soft score}`` from the human answers (normalised with ``prep_answer``);
    answers outside the vocabulary are dropped (all dropped = an all-zero target)."""
    counts = Counter(prep_answer(a) for a in answers)
    return {ans2label[a]: soft_score(m) for a, m in counts.items() if a in ans2label}


def build_vqa_vocabulary(annotations: Iterable[Mapping], min_count: int = 9, source: str = "annotations") -> list[str]:
    """The standard answer vocabulary (3,129 answers on train2014 + val2014 with ``min_count=9``):
    ``prep_answer(multiple_choice_answer)`` counted once per distinct question, kept when the
    count is >= ``min_count``; ordered by descending count, then alphabetically."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    per_question: dict[int, str] = {}
    for i, ann in enumerate(annotations):
        mca = ann.get("multiple_choice_answer") if isinstance(ann, Mapping) else None
        qid = ann.get("question_id") if isinstance(ann, Mapping) else None
        if not isinstance(mca, str) or not isinstance(qid, int) or isinstance(qid, bool):
            raise ValueError(f"{source}: annotation {i} (question_id {qid!r}) needs an int question_id and a "
                             f"string multiple_choice_answer, got {mca!r}")
        per_question[qid] = prep_answer(mca)  # a question listed twice counts once
    counts = Counter(per_question.values())
    return sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))


def build_gqa_vocabulary(paths: Iterable[str | Path]) -> list[str]:
    """All answers (stripped; GQA compares answers exactly) of the given balanced-question files,
    sorted. LXMERT builds it from train + val (1,842 answers)."""
    answers: set[str] = set()
    for path in paths:
        data = read_json(path, "a GQA question file (<split>_balanced_questions.json)")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a JSON {type(data).__name__}, expected an object keyed by question id")
        for qid, rec in data.items():
            answer = rec.get("answer") if isinstance(rec, dict) else None
            if not isinstance(answer, str):
                raise ValueError(f"{path}: question {qid!r} has answer {answer!r}; expected a string "
                                 "(test files without answers cannot build a vocabulary)")
            answers.add(answer.strip())
    return sorted(answers)


def read_ans2label(path: str | Path) -> dict[str, int]:
    """``{answer: index}`` with indices exactly 0..A-1 (UNITER's ``utils/ans2label.json`` format)."""
    data = read_json(path, "an ans2label file (a JSON object answer -> index)")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping answer -> index, got "
                         f"{type(data).__name__}{'' if data else ' (empty)'}")
    seen: dict[int, str] = {}
    for answer, index in data.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"{path}: answer {answer!r} has index {index!r}; expected an int")
        if not 0 <= index < len(data):
            raise ValueError(f"{path}: answer {answer!r} has index {index}; expected 0..{len(data) - 1} "
                             f"for {len(data)} answers")
        if index in seen:
            raise ValueError(f"{path}: index {index} given to both {seen[index]!r} and {answer!r}; "
                             "expected unique indices")
        seen[index] = answer
    return dict(data)


def labels_from_ans2label(ans2label: Mapping[str, int]) -> list[str]:
    """Answer strings in index order."""
    return [a for a, _ in sorted(ans2label.items(), key=lambda kv: kv[1])]


def write_ans2label(path: str | Path, answers: Iterable[str]) -> Path:
    """Write ``{answer: index}`` in the given order; answers must be unique."""
    answers = list(answers)
    if len(set(answers)) != len(answers):
        dup = next(a for i, a in enumerate(answers) if a in answers[:i])
        raise ValueError(f"{path}: answer {dup!r} listed twice; expected unique answers")
    if not answers:
        raise ValueError(f"{path}: no answers to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({a: i for i, a in enumerate(answers)}, indent=1) + "\n", encoding="utf-8")
    return path
