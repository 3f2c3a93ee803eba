"""VCR: reading the public JSON lines, object tokens, the 8-rows-per-question batches, the demo."""
import filecmp
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data_modules.demo import generate_demo
from data_modules.demo import vcr as vcr_demo
from data_modules.demo.world import DEFAULT_WORLD
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError, RegionFeatureStore
from data_modules.tokenization import load_tokenizer
from data_modules.vcr import (VcrDataModule, image_key_of, image_key_pattern, read_vcr, read_vcr_records,
                              truncate_longest_first)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "[", "]", "1", "Why", "is", "holding", "and",
         "cold", "He", "thirsty", "person", "cup", "gave", "it", "drinking"]
ID = {t: i for i, t in enumerate(VOCAB)}
OBJ = len(VOCAB)  # default object_token_offset: the tokenizer's size

GOOD = {"movie": "1054_Harry_Potter", "objects": ["person", "person", "cup"],
        "interesting_scores": [0], "answer_likelihood": "likely",
        "img_fn": "lsmdc_1054_Harry_Potter/1054_Harry_Potter_00.01.21.867@12.jpg",
        "metadata_fn": "lsmdc_1054_Harry_Potter/1054_Harry_Potter_00.01.21.867@12.json",
        "question_orig": "Why is 1 holding 3 ?", "question": ["Why", "is", [0], "holding", [2], "?"],
        "answer_choices": [["He", "is", "thirsty", "."], ["[1]", "gave", "it", "."],
                           [[0], "is", "cold", "."], [[0, 1], "is", "cold", "."]],
        "answer_label": 0,
        "rationale_choices": [[[0], "is", "drinking", "."], ["He", "is", "cold", "."],
                              [[2], "is", "cold", "."], ["it", "is", "cold", "."]],
        "rationale_label": 2, "annot_id": "val-7", "img_id": "val-3", "question_number": 0,
        "match_fold": "val-0", "match_index": 7}

Q = [ID["Why"], ID["is"], OBJ, ID["holding"], OBJ + 2, ID["?"]]
A = [[ID["He"], ID["is"], ID["thirsty"], ID["."]],
     [ID["["], ID["1"], ID["]"], ID["gave"], ID["it"], ID["."]],  # a literal "[1]" is a word
     [OBJ, ID["is"], ID["cold"], ID["."]],
     [OBJ, ID["and"], OBJ + 1, ID["is"], ID["cold"], ID["."]]]
R = [[OBJ, ID["is"], ID["drinking"], ID["."]], [ID["He"], ID["is"], ID["cold"], ID["."]],
     [OBJ + 2, ID["is"], ID["cold"], ID["."]], [ID["it"], ID["is"], ID["cold"], ID["."]]]


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    """A vocabulary, a store (val-3: 3 ground-truth + 1 detected region; val-4: 2 regions) and a val file."""
    root = tmp_path_factory.mktemp("vcr_hand")
    (root / "tok").mkdir()
    (root / "tok" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    rng = np.random.default_rng(0)
    with RegionFeatureWriter(root / "f.h5", 8) as writer:
        writer.add("val-3", rng.standard_normal((4, 8)), [[0, 0, 5, 5], [5, 0, 10, 5], [0, 5, 5, 10], [1, 1, 9, 9]], 10, 10)
        writer.add("val-4", rng.standard_normal((2, 8)), [[0, 0, 5, 5], [5, 5, 10, 10]], 10, 10)
    second = {**GOOD, "annot_id": "val-8", "img_id": "val-4", "objects": ["person"], "question": ["Why", "?"],
              "answer_choices": [["He", "."]] * 4, "rationale_choices": [[[0], "is", "cold"]] * 4,
              "answer_label": 3, "rationale_label": 1}
    (root / "val.jsonl").write_text(json.dumps(GOOD) + "\n\n" + json.dumps(second) + "\n")
    return root


def _hand_dm(hand, **overrides):
    args = dict(train_file=str(hand / "val.jsonl"), val_file=str(hand / "val.jsonl"), features=str(hand / "f.h5"),
                tokenizer=str(hand / "tok"), img_dim=8, batch_size=2)
    args.update(overrides)
    return VcrDataModule(**args)


def test_records_keep_mixed_tokens_and_optional_test_labels(tmp_path):
    path = tmp_path / "test.jsonl"
    unlabeled = {k: v for k, v in GOOD.items() if k not in ("answer_label", "rationale_label")}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**unlabeled, "annot_id": "test-1"}) + "\n")
    first, second = read_vcr_records(path, require_labels=False)
    assert first.question == ("Why", "is", (0,), "holding", (2,), "?")
    assert first.answer_choices[1][0] == "[1]" and first.answer_choices[3][0] == (0, 1)
    assert (first.answer_label, first.rationale_label, first.line) == (0, 2, 1)
    assert (second.annot_id, second.answer_label, second.rationale_label) == ("test-1", -1, -1)
    assert first.objects == ("person", "person", "cup") and first.movie == "1054_Harry_Potter"


def _without(*fields):
    return {k: v for k, v in GOOD.items() if k not in fields}


@pytest.mark.parametrize("line, expected", [
    ('{"annot_id": "val-9", "question": [', "not valid JSON"),
    (json.dumps([GOOD]), "expected an object"),
    (json.dumps(_without("img_id")), "field 'img_id' is missing; expected a non-empty string"),
    (json.dumps({**GOOD, "objects": "person"}), "field 'objects' is str 'person'; expected a list of class names"),
    (json.dumps(_without("question")), "field 'question' is missing"),
    (json.dumps({**GOOD, "question": "Why is he cold?"}), "question is str"),
    (json.dumps({**GOOD, "answer_choices": GOOD["answer_choices"][:3]}), "expected a list of 4 mixed-token lists"),
    (json.dumps({**GOOD, "answer_choices": [*GOOD["answer_choices"][:3], ["He", {"id": 1}]]}),
     "answer_choices[3] token 1 is dict"),
    (json.dumps({**GOOD, "question": ["Why", []]}), "question token 1 is list []"),
    (json.dumps({**GOOD, "question": ["Why", [True]]}), "question token 1 is list [True]"),
    (json.dumps({**GOOD, "rationale_choices": [*GOOD["rationale_choices"][:3], [[3], "is"]]}),
     "rationale_choices[3] token 0 mentions object 3, but the line has 3 objects (valid indices 0..2)"),
    (json.dumps({**GOOD, "question": ["Why", [-1]]}), "mentions object -1"),
    (json.dumps({**GOOD, "answer_label": 4}), "field 'answer_label' is int 4; expected an int 0..3"),
    (json.dumps({**GOOD, "rationale_label": True}), "field 'rationale_label' is bool True"),
    (json.dumps({**GOOD, "answer_label": "0"}), "field 'answer_label' is str '0'"),
    (json.dumps(_without("answer_label", "rationale_label")), "field 'answer_label' is missing; expected an int 0..3 "
                                                             "(train and val lines need labels"),
])
def test_malformed_line_names_file_line_id_and_expectation(tmp_path, line, expected):
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps({**GOOD, "annot_id": "val-1"}) + "\n\n" + json.dumps({**GOOD, "annot_id": "val-2"})
                    + "\n" + line + "\n")
    with pytest.raises(ValueError) as err:
        read_vcr_records(path)
    msg = str(err.value)
    assert f"{path}, line 4" in msg and expected in msg, msg
    if line.startswith("{") and '"annot_id": "val-7"' in line:
        assert "annot_id 'val-7'" in msg


def test_label_pairs_duplicates_and_empty_files(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(_without("rationale_label")) + "\n")
    with pytest.raises(ValueError, match=r"line 1 \(annot_id 'val-7'\): has answer_label but not the other"):
        read_vcr_records(path, require_labels=False)
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(ValueError, match="line 2: annot_id 'val-7' already used on line 1"):
        read_vcr_records(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="holds no VCR examples"):
        read_vcr_records(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        read_vcr_records(tmp_path / "missing.jsonl")


def test_object_mentions_become_object_tokens_joined_by_and(hand):
    tok = load_tokenizer(hand / "tok")
    ex = read_vcr(hand / "val.jsonl", tok)[0]
    assert ex.part(0) == Q and [ex.part(1 + i) for i in range(4)] == A and [ex.part(5 + j) for j in range(4)] == R
    assert (ex.annot_id, ex.image, ex.num_objects, ex.answer_label, ex.rationale_label) == ("val-7", "val-3", 3, 0, 2)
    # an explicit offset (UNITER: 28996) moves every object token
    assert read_vcr(hand / "val.jsonl", tok, object_token_offset=100)[0].part(0)[2] == 100
    # objects past num_object_tokens fall back to their class name's word-pieces
    ex = read_vcr(hand / "val.jsonl", tok, num_object_tokens=2)[0]
    assert ex.part(0) == [ID["Why"], ID["is"], OBJ, ID["holding"], ID["cup"], ID["?"]]
    with pytest.raises(ValueError, match=f"object_token_offset 5 is below the size of tokenizer {hand / 'tok' / 'vocab.txt'} "
                                         rf"\({len(VOCAB)} tokens, ids 0..{len(VOCAB) - 1}\)"):
        read_vcr(hand / "val.jsonl", tok, object_token_offset=5)


def test_datamodule_refuses_an_offset_overlapping_the_tokenizer_at_setup(hand):
    dm = _hand_dm(hand)
    assert dm.object_token_ids == range(len(VOCAB), len(VOCAB) + 81) and dm.tokenizer_size == len(VOCAB)
    assert _hand_dm(hand, object_token_offset=100, num_object_tokens=3).object_token_ids == range(100, 103)
    dm = _hand_dm(hand, object_token_offset=len(VOCAB) - 1)
    with pytest.raises(ValueError) as err:
        dm.setup("validate")
    msg = str(err.value)
    assert f"object_token_offset {len(VOCAB) - 1} is below the size of tokenizer {hand / 'tok' / 'vocab.txt'}" in msg
    assert f"({len(VOCAB)} tokens" in msg and f"expected object_token_offset >= {len(VOCAB)}" in msg
    assert "val" not in dm.datasets


def test_image_key_fields_and_bad_patterns():
    rec = read_vcr_records.__globals__["_parse_record"](GOOD, "x", True, 1)
    assert image_key_of(rec) == "val-3"
    assert image_key_of(rec, "vcr_gt_{img_fn_stem}.npz") == "vcr_gt_lsmdc_1054_Harry_Potter/1054_Harry_Potter_00.01.21.867@12.npz"
    assert image_key_of(rec, "{movie}|{img_fn}") == "1054_Harry_Potter|" + GOOD["img_fn"]
    assert image_key_pattern("{img_id}").used == ("img_id",)
    for bad in ("{annot_id}", "{0}", "", "{img_id", "vcr"):
        with pytest.raises(ValueError, match="VCR image_key"):
            image_key_pattern(bad)
    with pytest.raises(ValueError, match=r"VCR image_key '\{annot_id\}': unknown field \{annot_id\}; expected .* "
                                         r"only \{img_id\}, \{img_fn\}, \{img_fn_stem\}, \{movie\}"):
        VcrDataModule("a.jsonl", "b.jsonl", features="f.h5", tokenizer="tok", image_key="{annot_id}")


def test_truncation_removes_from_the_longest_part_first():
    assert truncate_longest_first([[1, 2], [3, 4, 5, 6], [7, 8, 9]], 6) == [[1, 2], [3, 4], [7, 8]]
    assert truncate_longest_first([[1, 2], [3, 4]], 3) == [[1, 2], [3]]  # tie: the later part
    assert truncate_longest_first([[1], [2, 3]], 10) == [[1], [2, 3]]
    assert truncate_longest_first([[1, 2, 3], [4, 5]], 0) == [[], []]


def test_eight_rows_types_targets_and_regions(hand):
    dm = _hand_dm(hand)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    store = RegionFeatureStore(hand / "f.h5")
    cls, sep = ID["[CLS]"], ID["[SEP]"]
    assert batch["ids"] == ["val-7", "val-8"] and dm.labels is None
    assert batch["targets"].dtype == torch.long and batch["targets"].tolist() == [[0, 2], [3, 1]]
    assert batch["input_ids"].shape[0] == 16 and batch["txt_type_ids"].shape == batch["input_ids"].shape
    for i in range(4):  # Q→A
        ids = [cls, *Q, sep, *A[i], sep]
        assert batch["input_ids"][i, :len(ids)].tolist() == ids and batch["txt_lens"][i] == len(ids)
        assert batch["txt_type_ids"][i, :len(ids)].tolist() == [0] * (len(Q) + 1) + [2] * (len(A[i]) + 2)
    for j in range(4):  # QA→R with the ground-truth answer 0
        ids = [cls, *Q, sep, *A[0], sep, *R[j], sep]
        assert batch["input_ids"][4 + j, :len(ids)].tolist() == ids and batch["txt_lens"][4 + j] == len(ids)
        assert batch["txt_type_ids"][4 + j, :len(ids)].tolist() == \
            [0] * (len(Q) + 1) + [2] * (len(A[0]) + 1) + [3] * (len(R[j]) + 2)
    assert batch["input_ids"][0, len(Q) + len(A[0]) + 3:].eq(0).all()
    # the second example conditions its rationale rows on its own gt answer (3)
    assert batch["input_ids"][12, :6].tolist() == [cls, ID["Why"], ID["?"], sep, ID["He"], ID["."]]
    for row in range(16):
        image = "val-3" if row < 8 else "val-4"
        feat, pos = store.get(image)
        assert batch["num_bbs"][row] == len(feat)
        assert torch.equal(batch["img_feat"][row, :len(feat)], feat)
        assert torch.equal(batch["img_pos_feat"][row, :len(feat)], pos)
        assert batch["img_type_ids"][row, :len(feat)].eq(1).all() and batch["img_type_ids"][row, len(feat):].eq(0).all()


def test_max_txt_len_bounds_every_row(hand):
    dm = _hand_dm(hand, max_txt_len=9)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert max(batch["txt_lens"]) <= 9 + 4
    # Q→A row 1: q 6 + a 6 pieces cut to 9, longest first (a tie cuts the later part) → 5 + 4
    ids = batch["input_ids"][1, :batch["txt_lens"][1]].tolist()
    assert ids == [ID["[CLS]"], *Q[:5], ID["[SEP]"], *A[1][:4], ID["[SEP]"]]
    types = batch["txt_type_ids"][5, :batch["txt_lens"][5]].tolist()  # q 6, a_gt 4, r 4 → 3, 3, 3
    assert types == [0] * 4 + [2] * 4 + [3] * 5


def test_test_split_without_labels_predicts_with_minus_one(hand, tmp_path):
    unlabeled = {k: v for k, v in GOOD.items() if k not in ("answer_label", "rationale_label")}
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(unlabeled) + "\n")
    dm = _hand_dm(hand, test_file=str(path), val_file=str(path))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["targets"].tolist() == [[-1, -1]]
    assert batch["input_ids"][4, :len(Q) + len(A[0]) + 3].tolist() == [ID["[CLS]"], *Q, ID["[SEP]"], *A[0], ID["[SEP]"]]
    with pytest.raises(ValueError, match="line 1 .*'answer_label' is missing"):
        dm.setup("validate")  # val needs labels


def test_missing_images_and_too_few_regions_fail_at_setup(hand, tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps({**GOOD, "img_id": "val-99"}) + "\n")
    with pytest.raises(MissingImageError) as err:
        _hand_dm(hand, val_file=str(path)).setup("validate")
    msg = str(err.value)
    assert str(hand / "f.h5") in msg and "'val-99'" in msg and "annot_id val-7" in msg and str(path) in msg
    with pytest.raises(MissingImageError, match="image_key"):
        _hand_dm(hand, image_key="vcr_gt_{img_id}.npz").setup("validate")
    path.write_text(json.dumps({**GOOD, "img_id": "val-4"}) + "\n")  # 2 regions, 3 objects
    with pytest.raises(ValueError) as err:
        _hand_dm(hand, val_file=str(path)).setup("validate")
    msg = str(err.value)
    assert "image 'val-4' has 2 regions" in msg and f"{path}, line 1 (annot_id val-7) lists 3 objects" in msg
    with pytest.raises(ValueError, match=r"'val-3' has 2 regions \(max_boxes=2\)"):
        _hand_dm(hand, max_boxes=2).setup("validate")
    with pytest.raises(ValueError, match="num_object_tokens >= 0"):
        _hand_dm(hand, num_object_tokens=-1)


# ---- the demo generator ------------------------------------------------------------------------
DEMO_VOCAB_SIZE = 512  # configs/model/uniter-tiny.yaml's vocab_size


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("vcr_demo")
    paths = generate_demo(root / "a", seed=4, feat_dim=16, n_train=48, n_dev=16, n_test=8, tasks=("vcr",),
                          vocab_size=DEMO_VOCAB_SIZE)
    return root, paths


def test_demo_is_deterministic_and_in_vcr_schema(demo):
    root, paths = demo
    again = generate_demo(root / "b", seed=4, feat_dim=16, n_train=48, n_dev=16, n_test=8, tasks=("vcr",))
    other = generate_demo(root / "c", seed=5, feat_dim=16, n_train=48, n_dev=16, n_test=8, tasks=("vcr",))
    for name in ("vcr_train", "vcr_dev", "vcr_test", "features"):
        assert filecmp.cmp(paths[name], again[name], shallow=False), name
    assert Path(paths["vcr_train"]).read_text() != Path(other["vcr_train"]).read_text()
    assert [Path(paths[f"vcr_{s}"]).name for s in ("train", "dev", "test")] == ["train.jsonl", "val.jsonl", "test.jsonl"]
    records = [json.loads(line) for line in open(paths["vcr_train"])]
    assert len(records) == 48 and len({r["annot_id"] for r in records}) == 48
    for r in records:
        assert set(r) >= {"objects", "img_fn", "metadata_fn", "question", "answer_choices", "answer_label",
                          "rationale_choices", "rationale_label", "annot_id", "img_id", "question_number", "movie",
                          "question_orig", "answer_orig", "rationale_orig", "match_fold"}
        assert r["img_id"].startswith("vcr-train-") and r["annot_id"].startswith("train-")
        assert r["img_fn"].startswith(r["movie"] + "/") and r["movie"].startswith("demo_vcr_train_")
        assert any(isinstance(t, list) for t in r["question"])
    assert read_vcr_records(paths["vcr_train"])  # our own reader accepts it


def test_demo_metadata_and_store_hold_objects_first_in_order(demo):
    root, paths = demo
    store = RegionFeatureStore(paths["features"])
    for r in [json.loads(line) for line in open(paths["vcr_dev"])]:
        meta = json.loads((Path(paths["vcr_images"]) / r["metadata_fn"]).read_text())
        assert meta["names"] == r["objects"] and len(meta["boxes"]) == len(r["objects"]) == len(meta["segms"])
        assert all(len(b) == 5 for b in meta["boxes"])
        _, pos = store.get(r["img_id"])
        assert store.num_boxes(r["img_id"]) > len(r["objects"])  # plus 1-3 "detected" clutter regions
        assert store.image_size(r["img_id"]) == (meta["width"], meta["height"])
        pixel = pos[:len(r["objects"]), :4].numpy() * ([meta["width"], meta["height"]] * 2)
        assert np.allclose(pixel, np.asarray(meta["boxes"])[:, :4], atol=0.05)
        centers = pixel[:, 0] + pixel[:, 2]
        assert (np.diff(centers) > 0).all()  # objects are listed left to right
    with h5py.File(paths["features"]) as f:
        assert all(k.startswith("vcr-") for k in f["img_ids"].asstr()[:])


def test_demo_datamodule_batches(demo):
    root, paths = demo
    dm = VcrDataModule(paths["vcr_train"], paths["vcr_dev"], features=paths["features"], tokenizer=paths["tokenizer"],
                       test_file=paths["vcr_test"], img_dim=16, batch_size=4, eval_batch_size=16, max_txt_len=60)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 32 and batch["targets"].shape == (4, 2) and len(batch["ids"]) == 4
    assert batch["input_ids"].max() < len(dm.tokenizer) + max(len(r.objects) for r in read_vcr_records(paths["vcr_train"]))
    assert batch["input_ids"].ge(len(dm.tokenizer)).any()  # object tokens are there
    val = next(iter(dm.val_dataloader()))
    assert max(val["txt_lens"]) < 60 and val["targets"].shape == (16, 2)


def test_demo_object_tokens_are_the_rows_the_model_appends(demo):
    """The demo vocabulary is padded to the demo model's vocab_size, so object tokens start at it:
    they are UNITER's 81 appended rows, not unused word rows."""
    root, paths = demo
    dm = VcrDataModule(paths["vcr_train"], paths["vcr_dev"], features=paths["features"], tokenizer=paths["tokenizer"],
                       img_dim=16, batch_size=4, max_txt_len=60)
    assert dm.tokenizer_size == DEMO_VOCAB_SIZE and dm.object_token_ids == range(DEMO_VOCAB_SIZE, DEMO_VOCAB_SIZE + 81)
    real = sum(not t.startswith("[unused") for t in (Path(paths["tokenizer"]) / "vocab.txt").read_text().splitlines())
    examples = read_vcr(paths["vcr_train"], dm.tokenizer)
    pieces = np.concatenate([ex.pieces for ex in examples])
    objects = pieces[pieces >= real]
    assert len(objects) and objects.min() >= DEMO_VOCAB_SIZE and objects.max() < DEMO_VOCAB_SIZE + 81
    assert not ((pieces >= real) & (pieces < DEMO_VOCAB_SIZE)).any()  # no [unused] word row is used


def test_demo_answers_are_right_for_the_scene_and_labels_balanced():
    rng = np.random.default_rng(0)
    records, scenes, stats = vcr_demo.make_split("dev", 400, rng, DEFAULT_WORLD)
    by_id = {s.image_id: s for s in scenes}
    attrs = ("size", "color", "material", "shape")
    for r in records:
        objs = by_id[r["img_id"]].objects
        assert r["objects"] == [o.shape for o in objs]
        for field in ("answer", "rationale"):
            choices, label = r[f"{field}_choices"], r[f"{field}_label"]
            assert len({json.dumps(c) for c in choices}) == 4

            def true_of(choice):  # every "[i] ... <attribute values>" clause holds for object i
                ok, idx = True, None
                for t in choice:
                    if isinstance(t, list):
                        idx = t[0]
                    elif idx is not None and any(t in vcr_demo._values(DEFAULT_WORLD, a) or t in ("small", "large")
                                                 for a in attrs):
                        ok &= t in {getattr(objs[idx], a) for a in attrs}
                return ok

            assert [true_of(c) for c in choices] == [k == label for k in range(4)], (field, r)
    for template, s in stats.items():
        assert s["questions"] == 100
        assert s["answer_label"] == [25] * 4 and s["rationale_label"] == [25] * 4, template


def _features(tokens, prefix):
    words = [t if isinstance(t, str) else "#" + "&".join(map(str, t)) for t in tokens]
    return {f"{prefix}:{w}" for w in words}


def _text_only_accuracy(train, test, part):
    """Naive Bayes on the text a row shows (candidate words, their pairs with the question's /
    given answer's words, the choice index), trained to tell right from wrong candidates."""
    def rows(r):
        context = r["question"] + (r["answer_choices"][r["answer_label"]] if part == "rationale" else [])
        ctx = _features(context, "c")
        for k, choice in enumerate(r[f"{part}_choices"]):
            cand = _features(choice, "x")
            yield k, cand | {f"{a}|{b}" for a in ctx for b in cand} | {f"pos{k}"}

    counts = {True: Counter(), False: Counter()}
    totals = Counter()
    for r in train:
        for k, feats in rows(r):
            right = k == r[f"{part}_label"]
            counts[right].update(feats)
            totals[right] += 1

    def score(feats):
        return sum(math.log((counts[True][f] + 1) / (totals[True] + 2)) - math.log((counts[False][f] + 1) / (totals[False] + 2))
                   for f in feats)

    hits = [max(rows(r), key=lambda kf: score(kf[1]))[0] == r[f"{part}_label"] for r in test]
    return float(np.mean(hits))


def test_text_alone_is_near_chance_for_answers_and_rationales():
    rng = np.random.default_rng(1)
    train, _, _ = vcr_demo.make_split("train", 2000, rng, DEFAULT_WORLD)
    test, _, _ = vcr_demo.make_split("test", 800, rng, DEFAULT_WORLD)
    for part in ("answer", "rationale"):
        assert _text_only_accuracy(train, test, part) < 0.31, part
    # the baseline does find text cues when there are some: always put the right answer first
    leaky = [{**r, "answer_choices": [r["answer_choices"][r["answer_label"]]] * 1 +
              [c for k, c in enumerate(r["answer_choices"]) if k != r["answer_label"]], "answer_label": 0}
             for r in train[:400]]
    assert _text_only_accuracy(leaky, leaky[:200], "answer") > 0.9
