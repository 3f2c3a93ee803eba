"""GQA balanced: file reading and validation, one-hot targets, vocabulary, the demo."""
import filecmp
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.answers import build_gqa_vocabulary, read_ans2label, write_ans2label
from data_modules.demo import generate_demo
from data_modules.demo import gqa as gqa_demo
from data_modules.demo.world import WorldConfig
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError
from data_modules.gqa import GqaDataModule, read_gqa_questions

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", "What", "is", "on", "the", "wall", "color"]


def _record(question, image_id, answer=None, **extra):
    rec = {"question": question, "imageId": image_id, "fullAnswer": f"It is {answer}.", "isBalanced": True,
           "groups": {"global": None, "local": "14-wall_on,s"}, "entailed": [], "equivalent": [],
           "types": {"structural": "query", "semantic": "rel", "detailed": "relS"},
           "semantic": [{"operation": "select", "argument": "wall (722332)", "dependencies": []}],
           "semanticStr": "select: wall (722332)", "annotations": {"question": {}, "answer": {}, "fullAnswer": {}}, **extra}
    if answer is not None:
        rec["answer"] = answer
    return rec


@pytest.fixture
def hand_made(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    rng = np.random.default_rng(0)
    with RegionFeatureWriter(tmp_path / "f.h5", 8) as writer:
        for image_id, n in (("2375429", 2), ("2375430", 3), ("n161313", 1)):
            writer.add(f"gqa_{image_id}", rng.standard_normal((n, 8)), [[0, 0, 5, 5]] * n, 10, 10)
    files = {}
    for split, records in {
        "train": {"07333408": _record("What is on the wall?", "2375429", "pipe"),
                  "07333409": _record("What color is the wall?", "2375430", " white ")},
        "val": {"1": _record("What color is the wall?", "2375430", "white"),
                "2": _record("What is on the wall?", "2375429", "clock")},  # not in the vocabulary
        "testdev": {"201": _record("What is on the wall?", "n161313", "pipe"), "202": _record("What is on the wall?", "2375429")},
    }.items():
        files[split] = tmp_path / f"{split}_balanced_questions.json"
        files[split].write_text(json.dumps(records))
    write_ans2label(tmp_path / "ans2label.json", build_gqa_vocabulary([files["train"]]))
    args = dict(train_file=str(files["train"]), val_file=str(files["val"]), test_file=str(files["testdev"]),
                ans2label=str(tmp_path / "ans2label.json"), features=str(tmp_path / "f.h5"), tokenizer=str(tok),
                img_dim=8, batch_size=2, image_key="gqa_{image_id}")
    return tmp_path, args


def test_vocabulary_is_sorted_stripped_answers_and_needs_answers(hand_made):
    root, args = hand_made
    assert read_ans2label(args["ans2label"]) == {"pipe": 0, "white": 1}
    assert build_gqa_vocabulary([args["train_file"], args["val_file"]]) == ["clock", "pipe", "white"]
    with pytest.raises(ValueError, match=r"testdev_balanced_questions.json: question '202' has answer None"):
        build_gqa_vocabulary([args["test_file"]])


def test_one_hot_targets_and_out_of_vocabulary_answers(hand_made, caplog):
    root, args = hand_made
    dm = GqaDataModule(**args)
    assert dm.labels == ["pipe", "white"]  # available before setup
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert dm.out_of_vocabulary == {"train": 0, "val": 1} and "1 of 2 answers are not in the 2-answer vocabulary" in caplog.text
    batch = next(iter(dm.val_dataloader()))
    assert batch["ids"] == ["1", "2"] and batch["targets"].dtype == torch.float32
    assert batch["targets"].tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert batch["num_bbs"] == [3, 2] and batch["input_ids"][0, : batch["txt_lens"][0]].tolist() == [2, 6, 11, 7, 9, 10, 5, 3]
    train = dm.datasets["train"].collate([dm.datasets["train"][i] for i in range(2)])
    assert train["ids"] == ["07333408", "07333409"] and train["targets"].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # " white " stripped
    dm.setup("test")  # testdev: a record without an answer gets an all-zero row
    batch = next(iter(dm.test_dataloader()))
    assert batch["ids"] == ["201", "202"] and batch["targets"].tolist() == [[1.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("content, expected", [
    ('[{"question": "x"}]', "a JSON list, expected an object keyed by question id"),
    ('{"5": {"question": "What?", "imageId": 2375429, "answer": "pipe"}}',
     "question '5': field 'imageId' is int 2375429; expected a non-empty string (imageId is a string"),
    ('{"5": {"imageId": "1", "answer": "pipe"}}', "question '5': field 'question' is missing"),
    ('{"5": {"question": "What?", "imageId": "1"}}', "question '5': field 'answer' is missing"),
    ('{"5": {"question": "What?", "imageId": "1", "answer": 3}}', "field 'answer' is int 3"),
    ('{"5": "What?"}', "question '5': a JSON str"),
    ('{}', "holds no questions"),
    ('{"5": ', "not valid JSON"),
])
def test_malformed_files_name_file_question_and_expectation(tmp_path, content, expected):
    path = tmp_path / "val_balanced_questions.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(expected)):
        read_gqa_questions(path)


def test_several_train_files_are_one_split_with_disjoint_ids(hand_made):
    """LXMERT's GQA recipe trains on train + val balanced (configs/lxmert/gqa.yaml)."""
    root, args = hand_made
    dm = GqaDataModule(**{**args, "train_file": [args["train_file"], args["val_file"]]})
    assert dm.split_files()["train"] == f"{args['train_file']} + {args['val_file']}"
    dm.setup("fit")
    train = dm.datasets["train"]
    assert [train[i]["id"] for i in range(len(train))] == ["07333408", "07333409", "1", "2"]
    assert dm.out_of_vocabulary["train"] == 1  # val's "clock" is not in the 2-answer vocabulary
    with pytest.raises(ValueError, match="is in both"):
        GqaDataModule(**{**args, "train_file": [args["train_file"], args["train_file"]]}).setup("fit")


def test_missing_images_and_bad_image_key(hand_made):
    root, args = hand_made
    with pytest.raises(MissingImageError) as err:
        GqaDataModule(**{**args, "image_key": "{image_id}"}).setup("validate")
    msg = str(err.value)
    assert str(root / "f.h5") in msg and "'2375430' (question 1)" in msg and "'gqa_2375429'" in msg
    with pytest.raises(ValueError, match=r"GQA image_key '\{imageId\}': unknown field \{imageId\}; .* only \{image_id\}"):
        GqaDataModule(**{**args, "image_key": "{imageId}"})
    with pytest.raises(ValueError, match=r"'\{image_id:012d\}': cannot format image_id='2375429'"):
        GqaDataModule(**{**args, "image_key": "{image_id:012d}"})  # GQA's ids are strings


# ---- the demo -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("gqa_demo")
    return root, generate_demo(root, seed=2, feat_dim=16, n_train=240, n_dev=60, n_test=36, tasks=("gqa",))


def test_demo_files_have_the_public_schema(demo):
    root, paths = demo
    assert {Path(paths[f"gqa_{s}"]).name for s in ("train", "dev", "test")} == {
        "train_balanced_questions.json", "val_balanced_questions.json", "testdev_balanced_questions.json"}
    records = json.loads(Path(paths["gqa_train"]).read_text())
    assert len(records) == 240
    fields = {"question", "imageId", "answer", "fullAnswer", "isBalanced", "groups", "entailed", "equivalent", "types",
              "semantic", "semanticStr", "annotations"}
    per_image = Counter(r["imageId"] for r in records.values())
    assert len(records) / len(per_image) >= 2.5
    for qid, r in records.items():
        assert set(r) == fields and isinstance(r["imageId"], str) and int(r["imageId"]) >= 2_000_000
        assert qid.startswith(r["imageId"]) and set(r["types"]) == {"structural", "semantic", "detailed"}
        assert all(set(step) == {"operation", "argument", "dependencies"} for step in r["semantic"])
        assert all(d < i for i, step in enumerate(r["semantic"]) for d in step["dependencies"])
        assert r["semantic"][0]["operation"] == "select" and r["answer"] in r["fullAnswer"].lower()
    vocab = read_ans2label(paths["gqa_ans2label"])
    assert list(vocab) == sorted(vocab) and set(vocab) == {r["answer"] for r in records.values()} | {
        r["answer"] for r in json.loads(Path(paths["gqa_dev"]).read_text()).values()}
    dm = GqaDataModule(paths["gqa_train"], paths["gqa_dev"], paths["gqa_ans2label"], features=paths["features"],
                       tokenizer=paths["tokenizer"],
                       test_file=paths["gqa_test"], img_dim=16, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    dev = json.loads(Path(paths["gqa_dev"]).read_text())
    assert [dm.labels[i] for i in batch["targets"].argmax(1)] == [dev[q]["answer"] for q in batch["ids"]]
    assert batch["targets"].sum(1).eq(1).all()


def test_demo_answers_are_balanced_and_deterministic(demo, tmp_path):
    root, paths = demo
    manifest = json.loads(Path(paths["manifest"]).read_text())["tasks"]["gqa"]
    for split, info in manifest["splits"].items():
        assert set(info["templates"]) == set(gqa_demo.TEMPLATES)
        for template, counts in info["templates"].items():
            assert max(counts.values()) - min(counts.values()) <= 1, (split, template, counts)
    a = generate_demo(tmp_path / "a", seed=3, feat_dim=8, n_train=40, n_dev=8, n_test=8, tasks=("gqa",))
    b = generate_demo(tmp_path / "b", seed=3, feat_dim=8, n_train=40, n_dev=8, n_test=8, tasks=("gqa",))
    for name in ("gqa_train", "gqa_test", "gqa_ans2label", "features"):
        assert filecmp.cmp(a[name], b[name], shallow=False), name


def test_every_description_denotes_one_object():
    """The presuppositions hold: re-solving each question on its scene gives the recorded answer."""
    rng = np.random.default_rng(8)
    jobs = gqa_demo.balanced_jobs(120, rng, WorldConfig(), gqa_demo.TEMPLATES, gqa_demo.template_answers)
    for scene, asked in gqa_demo.pack_images(jobs, rng, WorldConfig(), (str(i) for i in range(2_000_000, 2_001_000))):
        for q, answer in asked:
            assert q.solve(scene) == answer, q.text


def test_text_alone_does_not_give_the_answer():
    from tests.test_data_vqa import _naive_bayes

    world, rng = WorldConfig(), np.random.default_rng(6)
    train, _, _ = gqa_demo.make_split("train", 1500, rng, world, 2_000_000)
    dev, _, _ = gqa_demo.make_split("dev", 500, rng, world, 3_000_000)
    pairs = lambda records: [(r["question"], r["answer"]) for r in records.values()]  # noqa: E731
    by_template = {"What color": 4, "What is the": 3, "left or to the right": 2, "What shape": 3, "Is there": 2, "same color": 2}
    chance = np.mean([1 / next(n for key, n in by_template.items() if key in q) for q, _ in pairs(dev)])
    assert _naive_bayes(pairs(train), pairs(dev)) < chance + 0.05
