"""VQA v2: answer normalisation and soft scores, vocabulary, file reading, batches, the demo."""
import filecmp
import json
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.answers import (CONTRACTIONS, build_vqa_vocabulary, labels_from_ans2label, normalize_answer,
                                  prep_answer, read_ans2label, soft_score, soft_targets, vqa_accuracy, write_ans2label)
from data_modules.demo import generate_demo
from data_modules.demo import vqa as vqa_demo
from data_modules.demo.world import WorldConfig
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError
from data_modules.vqa import VqaDataModule, read_question_ids, read_vqa_annotations, read_vqa_questions

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", "How", "many", "cubes", "are", "there", "What", "color"]


# ---- answers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("Two.", "2"), ("Yes!", "yes"), ("  yes\n", "yes"), ("a red cube", "red cube"), ("The Sphere", "sphere"),
    ("none", "0"), ("dont know", "don't know"), ("2.5", "2.5"), ("8:00", "8:00"), ("hi-fi", "hi fi"),
    ("yes , no", "yes no"), ("1,000", "1000"), ("couldnt've", "couldn't've"), ("couldn'tve", "couldn't've"),
    ("whats", "what's"), ("im", "im"), ("somebody'd", "somebodyd"), ("red.", "red"), ("(red)", "red"),
])
def test_official_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_prep_answer_also_drops_commas_and_contraction_table_shape():
    assert normalize_answer("red, blue") == "red blue" and normalize_answer("red,blue") == "red blue"
    assert all("," not in prep_answer(a) for a in ("1,5", "a, b", "x ,y", "p,q,r"))
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["'ows'at"] == "'ow's'at" and "shed" not in CONTRACTIONS
    assert all("'" not in k or k.count("'") < v.count("'") for k, v in CONTRACTIONS.items() if k != "somebody'd")


def _leave_one_out(pred, gts):
    """The evaluator's definition, literally: mean over the 10 sets of 9 of min(#matches / 3, 1)."""
    return np.mean([min(1.0, sum(g == pred for g in subset) / 3) for subset in combinations(gts, 9)])


def test_soft_score_table_is_the_leave_one_out_accuracy():
    assert [soft_score(m) for m in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    for m in range(11):
        gts = ["2"] * m + ["3"] * (10 - m)
        assert vqa_accuracy("2", gts) == pytest.approx(soft_score(m)) == pytest.approx(_leave_one_out("2", gts))
    with pytest.raises(ValueError, match=">= 0"):
        soft_score(-1)


def test_evaluator_normalises_only_when_annotators_disagree():
    assert vqa_accuracy("two", ["2"] * 10) == 0.0  # identical answers: compared raw
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == 1.0
    assert vqa_accuracy("Yes.", ["yes", "Yes", "yes!", "no"] + ["yes"] * 6) == 1.0


def test_soft_targets_normalise_human_answers_and_drop_unknown_ones():
    ans2label = {"2": 0, "3": 1, "yes": 2}
    answers = ["2", "Two", "2.", "two", "3", "Three!", "4", "4", "4", "4"]
    assert soft_targets(answers, ans2label) == {0: 1.0, 1: 0.6}
    assert soft_targets(["no"] * 10, ans2label) == {}
    assert soft_targets(["yes"] * 3 + ["no"] * 7, ans2label) == {2: 0.9}


def test_vocabulary_counts_distinct_questions_then_orders_by_count_and_name():
    anns = ([{"question_id": i, "multiple_choice_answer": "Two"} for i in range(4)]
            + [{"question_id": 10 + i, "multiple_choice_answer": "yes"} for i in range(4)]
            + [{"question_id": 20 + i, "multiple_choice_answer": ans} for i, ans in enumerate(["red", "red.", "Red", "red", "red"])]
            + [{"question_id": 30, "multiple_choice_answer": "cat"}] * 6  # one question listed six times
            + [{"question_id": 40 + i, "multiple_choice_answer": "a dog"} for i in range(3)])
    assert build_vqa_vocabulary(anns, min_count=3) == ["red", "2", "yes", "dog"]
    assert build_vqa_vocabulary(anns, min_count=4) == ["red", "2", "yes"]
    assert build_vqa_vocabulary(anns) == []
    with pytest.raises(ValueError, match=r"x.json: annotation 1 \(question_id 5\).*multiple_choice_answer"):
        build_vqa_vocabulary([anns[0], {"question_id": 5}], source="x.json")


def test_ans2label_round_trip_and_validation(tmp_path):
    path = write_ans2label(tmp_path / "a.json", ["net", "yes", ""])
    assert read_ans2label(path) == {"net": 0, "yes": 1, "": 2} and labels_from_ans2label(read_ans2label(path)) == ["net", "yes", ""]
    with pytest.raises(ValueError, match="'yes' listed twice"):
        write_ans2label(tmp_path / "b.json", ["yes", "no", "yes"])
    for content, expected in [({"a": 0, "b": 2}, "'b' has index 2; expected 0..1"), ({"a": 0, "b": 0}, "index 0 given to both"),
                              ({"a": "0"}, "'a' has index '0'; expected an int"), ({}, "non-empty"), (["a"], "non-empty JSON object")]:
        (tmp_path / "bad.json").write_text(json.dumps(content))
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bad.json")) + ".*" + re.escape(expected)):
            read_ans2label(tmp_path / "bad.json")


# ---- files --------------------------------------------------------------------------------------
def _answers(*texts):
    texts = list(texts) + [texts[-1]] * (10 - len(texts))
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def _write_split(folder, name, items, annotations=True):
    """items: (image_id, question_id, question, [human answers])."""
    q = folder / f"v2_OpenEnded_mscoco_{name}_questions.json"
    q.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": name,
                             "questions": [{"image_id": i, "question": text, "question_id": qid} for i, qid, text, _ in items]}))
    if not annotations:
        return str(q), None
    a = folder / f"v2_mscoco_{name}_annotations.json"
    a.write_text(json.dumps({"info": {}, "license": {}, "data_subtype": name, "data_type": "mscoco", "annotations": [
        {"question_id": qid, "image_id": i, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": answers[0], "answers": _answers(*answers)} for i, qid, _, answers in items]}))
    return str(q), str(a)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["questions"][1].pop("image_id"), "questions[1] (question_id 2000): field 'image_id' is missing; expected an int"),
    (lambda d: d["questions"][1].update(question_id="2000"), "questions[1]: field 'question_id' is str '2000'; expected an int"),
    (lambda d: d["questions"][1].update(question=None), "field 'question' is NoneType None; expected a string"),
    (lambda d: d["questions"][1].update(question_id=1000), "questions[1]: question_id 1000 already used by questions[0]"),
    (lambda d: d.pop("questions"), "expected a JSON object with a 'questions' list"),
])
def test_malformed_questions_name_file_entry_and_expectation(tmp_path, mutate, expected):
    q, _ = _write_split(tmp_path, "val2014", [(1, 1000, "How many?", ["1"]), (2, 2000, "What?", ["red"])], annotations=False)
    data = json.loads(Path(q).read_text())
    mutate(data)
    Path(q).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(q) + ".*" + re.escape(expected)):
        read_vqa_questions(q)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["annotations"][1]["answers"].pop(), "annotations[1] (question_id 2000): 9 human answers, expected 10"),
    (lambda d: d["annotations"][1]["answers"][3].update(answer=3), "answers[3] is {'answer': 3"),
    (lambda d: d["annotations"][1].pop("multiple_choice_answer"), "field 'multiple_choice_answer' is missing"),
    (lambda d: d["annotations"][0].update(answers="red"), "field 'answers' is str 'red'; expected a list of 10"),
    (lambda d: d["annotations"][1].update(question_id=1000), "question_id 1000 already annotated by annotations[0]"),
])
def test_malformed_annotations_name_file_entry_and_expectation(tmp_path, mutate, expected):
    _, a = _write_split(tmp_path, "val2014", [(1, 1000, "How many?", ["1"]), (2, 2000, "What?", ["red"])])
    data = json.loads(Path(a).read_text())
    mutate(data)
    Path(a).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(a) + ".*" + re.escape(expected)):
        read_vqa_annotations(a)


def test_question_id_files(tmp_path):
    (tmp_path / "ids.txt").write_text("1000\n2000, 3000\n")
    (tmp_path / "ids.json").write_text("[1000, 2000]")
    assert read_question_ids(tmp_path / "ids.txt") == {1000, 2000, 3000} and read_question_ids(tmp_path / "ids.json") == {1000, 2000}
    (tmp_path / "bad.txt").write_text("1000\nq2000\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: 'q2000' is not an int"):
        read_question_ids(tmp_path / "bad.txt")


# ---- the data module on hand-made files ---------------------------------------------------------
@pytest.fixture
def hand_made(tmp_path):
    """Four COCO-named images in a store, a tiny vocabulary, train/val/test files, ans2label."""
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    rng = np.random.default_rng(0)
    with RegionFeatureWriter(tmp_path / "f.h5", 8) as writer:
        for image_id, n in ((1, 2), (2, 3), (3, 1), (4, 2)):
            writer.add(f"COCO_val2014_{image_id:012d}", rng.standard_normal((n, 8)), [[0, 0, 5, 5]] * n, 10, 10)
    train = _write_split(tmp_path, "train2014", [(1, 1000, "How many cubes are there?", ["2", "Two", "2.", "3"]),
                                                 (2, 2000, "What color?", ["red", "blue", "red", "Red", "pink"])])
    extra = _write_split(tmp_path, "extra", [(3, 3000, "How many?", ["yes"])])
    val = _write_split(tmp_path, "val2014", [(3, 3001, "What color?", ["pink"]), (4, 4000, "How many cubes?", ["0", "none", "1"])])
    test = _write_split(tmp_path, "test-dev2015", [(4, 4001, "What color are there?", ["red"])], annotations=False)
    write_ans2label(tmp_path / "ans2label.json", ["2", "red", "yes", "3", "blue", "0", "1"])
    args = dict(train_questions=[train[0], extra[0]], train_annotations=[train[1], extra[1]], val_questions=val[0],
                val_annotations=val[1], test_questions=test[0], ans2label=str(tmp_path / "ans2label.json"),
                features=str(tmp_path / "f.h5"), tokenizer=str(tok), img_dim=8, batch_size=2, eval_batch_size=2,
                image_key="COCO_val2014_{image_id:012d}")
    return tmp_path, args


def test_batches_hold_soft_score_targets_over_the_vocabulary(hand_made):
    root, args = hand_made
    dm = VqaDataModule(**args)
    assert dm.labels == ["2", "red", "yes", "3", "blue", "0", "1"]  # before setup: the CLI reads it at instantiation
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["ids"] == ["3001", "4000"] and batch["targets"].dtype == torch.float32
    assert batch["targets"].shape == (2, 7)
    # "pink" is not in the vocabulary; "0", "none" -> "0" twice, "1" eight times
    assert batch["targets"].tolist() == [[0.0] * 7, pytest.approx([0, 0, 0, 0, 0, 0.6, 1.0])]
    assert batch["num_bbs"] == [1, 2] and "img_type_ids" not in batch and "txt_type_ids" not in batch
    assert batch["input_ids"][1, : batch["txt_lens"][1]].tolist() == [2, 6, 7, 8, 5, 3]  # [CLS] How many cubes ? [SEP]
    train = {qid: t for b in [dm.datasets["train"].collate([dm.datasets["train"][i] for i in range(3)])]
             for qid, t in zip(b["ids"], b["targets"].tolist())}
    assert train["1000"] == pytest.approx([0.9, 0, 0, 1.0, 0, 0, 0])  # "2" x3 (2, Two, 2.), "3" x7 and train["2000"] == pytest.approx([0, 0.9, 0, 0, 0.3, 0, 0])
    assert train["3000"] == pytest.approx([0, 0, 1.0, 0, 0, 0, 0])
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["ids"] == ["4001"] and batch["targets"].tolist() == [[0.0] * 7]


def test_val_ids_and_train_exclusions(hand_made):
    root, args = hand_made
    (root / "minidev.txt").write_text("4000\n")
    (root / "exclude.txt").write_text("4000 2000\n")
    dm = VqaDataModule(**{**args, "val_ids": str(root / "minidev.txt"), "train_exclude_ids": str(root / "exclude.txt")})
    dm.setup("fit")
    assert [e.qid for e in dm.datasets["val"].examples] == ["4000"]
    assert [e.qid for e in dm.datasets["train"].examples] == ["1000", "3000"]
    (root / "minidev.txt").write_text("4000\n5000\n")
    with pytest.raises(ValueError, match=r"minidev.txt: 1 question ids are not in .*val2014_questions.json: \[5000\]"):
        VqaDataModule(**{**args, "val_ids": str(root / "minidev.txt")}).setup("validate")


def test_join_errors_name_files_and_ids(hand_made):
    root, args = hand_made
    q, a = _write_split(root, "bad", [(3, 3001, "What color?", ["pink"]), (4, 4000, "How many?", ["0"])])
    data = json.loads(Path(a).read_text())
    data["annotations"][1]["question_id"] = 4444
    Path(a).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"1 questions of {re.escape(q)} have no annotation in {re.escape(a)}: question_id 4000"):
        VqaDataModule(**{**args, "val_questions": q, "val_annotations": a}).setup("validate")
    data = json.loads(Path(q).read_text())
    data["questions"][1]["question_id"] = 4444
    data["questions"][1]["image_id"] = 3
    Path(q).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="question_id 4444: image_id 3 in .* but 4 in"):
        VqaDataModule(**{**args, "val_questions": q, "val_annotations": a}).setup("validate")
    data["questions"].pop()
    Path(q).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"annotations of {re.escape(a)} have no question in {re.escape(q)}: question_id 4444"):
        VqaDataModule(**{**args, "val_questions": q, "val_annotations": a}).setup("validate")
    dup = {**args, "train_questions": [args["train_questions"][0]] * 2, "train_annotations": [args["train_annotations"][0]] * 2}
    with pytest.raises(ValueError, match="question_id 1000 is in both"):
        VqaDataModule(**dup).setup("fit")


def test_missing_images_and_bad_arguments(hand_made):
    root, args = hand_made
    dm = VqaDataModule(**{**args, "image_key": "{image_id}"})
    with pytest.raises(MissingImageError) as err:
        dm.setup("validate")
    msg = str(err.value)
    assert str(root / "f.h5") in msg and "'3' (question 3001)" in msg and "image_key" in msg and "COCO_val2014_000000000001" in msg
    with pytest.raises(ValueError, match=r"VQA image_key '\{img\}': unknown field \{img\}; .* using only \{image_id\}"):
        VqaDataModule(**{**args, "image_key": "{img}"})
    with pytest.raises(ValueError, match="paired lists"):
        VqaDataModule(**{**args, "train_annotations": args["train_annotations"][:1]})


# ---- the demo -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa_demo")
    return root, generate_demo(root, seed=1, feat_dim=16, n_train=300, n_dev=60, n_test=30, tasks=("vqa",))


def test_demo_files_have_the_public_schema_and_store_keys(demo):
    root, paths = demo
    assert Path(paths["vqa_train_questions"]).name == "v2_OpenEnded_mscoco_train2014_questions.json"
    assert Path(paths["vqa_dev_annotations"]).name == "v2_mscoco_val2014_annotations.json"
    assert Path(paths["vqa_test_questions"]).name == "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    questions = read_vqa_questions(paths["vqa_train_questions"])
    annotations = read_vqa_annotations(paths["vqa_train_annotations"])
    assert len(questions) == 300 and set(annotations) == {q.question_id for q in questions}
    per_image = Counter(q.image_id for q in questions)
    assert all(q.image_id >= 1_000_000 and q.question_id // 1000 == q.image_id for q in questions)
    assert len(questions) / len(per_image) >= 2.5  # several questions per image
    raw = json.loads(Path(paths["vqa_train_annotations"]).read_text())["annotations"][0]
    assert {"question_type", "answer_type", "multiple_choice_answer", "answers", "image_id", "question_id"} <= set(raw)
    assert {"answer", "answer_confidence", "answer_id"} <= set(raw["answers"][0])
    ans2label = read_ans2label(paths["vqa_ans2label"])
    assert set(ans2label) == {a.multiple_choice_answer for a in annotations.values()} >= {"0", "yes", "no", "metal"}
    dm = VqaDataModule([paths["vqa_train_questions"]], [paths["vqa_train_annotations"]], paths["vqa_dev_questions"],
                       paths["vqa_dev_annotations"], paths["vqa_ans2label"], features=paths["features"],
                       tokenizer=paths["tokenizer"],
                       test_questions=paths["vqa_test_questions"], test_annotations=paths["vqa_test_annotations"],
                       img_dim=16, batch_size=8)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    dev = read_vqa_annotations(paths["vqa_test_annotations"])
    for qid, target in zip(batch["ids"], batch["targets"]):
        expected = torch.zeros(len(ans2label))
        for label, score in soft_targets(dev[int(qid)].answers, ans2label).items():
            expected[label] = score
        assert torch.equal(target, expected)
    assert (batch["targets"].max(dim=1).values == 1.0).float().mean() > 0.8  # the truth usually has 4+ votes


def test_demo_answers_are_balanced_per_template_and_annotators_disagree(demo):
    root, paths = demo
    manifest = json.loads(Path(paths["manifest"]).read_text())["tasks"]["vqa"]
    for split, info in manifest["splits"].items():
        for template, counts in info["templates"].items():
            assert max(counts.values()) - min(counts.values()) <= 1, (split, template, counts)
            assert set(counts) == set(vqa_demo.template_answers(template, WorldConfig())) or sum(counts.values()) < 7
    answers = [a for ann in read_vqa_annotations(paths["vqa_train_annotations"]).values() for a in ann.answers]
    assert 0.1 < np.mean([a != prep_answer(a) for a in answers]) < 0.4  # surface variants the normalisation undoes
    scores = [max(soft_targets(ann.answers, {ann.multiple_choice_answer: 0}).values())
              for ann in read_vqa_annotations(paths["vqa_train_annotations"]).values()]
    assert 0.03 < np.mean(np.asarray(scores) < 1.0) < 0.3 or np.mean(scores) > 0.9


def test_demo_is_deterministic(tmp_path):
    a = generate_demo(tmp_path / "a", seed=4, feat_dim=8, n_train=60, n_dev=10, n_test=10, tasks=("vqa",))
    b = generate_demo(tmp_path / "b", seed=4, feat_dim=8, n_train=60, n_dev=10, n_test=10, tasks=("vqa",))
    for name in ("vqa_train_questions", "vqa_train_annotations", "vqa_test_annotations", "vqa_ans2label", "features"):
        assert filecmp.cmp(a[name], b[name], shallow=False), name


def _naive_bayes(train, test):
    """Multi-class Bernoulli naive Bayes on the question's words: the text-only baseline."""
    words = lambda text: set(re.findall(r"\w+", text.lower()))  # noqa: E731
    vocab = sorted(set().union(*(words(t) for t, _ in train)))
    index = {w: i for i, w in enumerate(vocab)}
    answers = sorted({a for _, a in train})

    def features(pairs):
        x = np.zeros((len(pairs), len(vocab)))
        for row, (text, _) in enumerate(pairs):
            x[row, [index[w] for w in words(text) if w in index]] = 1
        return x

    x, y = features(train), np.array([answers.index(a) for _, a in train])
    n = np.array([(y == k).sum() for k in range(len(answers))])
    p = (np.stack([x[y == k].sum(0) for k in range(len(answers))]) + 1) / (n[:, None] + 2)  # (answers, words)
    xt = features(test)
    scores = np.log(n)[None] + xt @ np.log(p).T + (1 - xt) @ np.log(1 - p).T
    return np.mean([answers[k] == a for k, (_, a) in zip(scores.argmax(1), test)])


def test_text_alone_does_not_give_the_answer():
    world, rng = WorldConfig(), np.random.default_rng(5)
    split = lambda name, n, first: vqa_demo.make_split(name, n, rng, world, first)  # noqa: E731
    q_tr, a_tr, _, _ = split("train", 1500, 1_000_000)
    q_dev, a_dev, _, _ = split("dev", 500, 2_000_000)
    pairs = lambda q, a: [(x["question"], y["multiple_choice_answer"]) for x, y in zip(q["questions"], a["annotations"])]  # noqa: E731
    train, dev = pairs(q_tr, a_tr), pairs(q_dev, a_dev)
    # chance within the template (the text does give the template): mean of 1 / #answers
    templates = {"How many": 7, "Is there": 2, "What color": 4, "What shape": 3, "made of": 2}
    chance = np.mean([1 / next(n for key, n in templates.items() if key in text) for text, _ in dev])
    assert _naive_bayes(train, dev) < chance + 0.05
