"""SNLI-VE: JSON-lines reading, one row per hypothesis, the demo's image-dependent labels."""
import filecmp
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.demo import generate_demo
from data_modules.demo.snli_ve import TEMPLATES, _ambiguous, attribute_hypothesis, relation_hypothesis, side_hypothesis
from data_modules.demo.world import ObjectSpec, Scene, SceneObject, WorldConfig
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError
from data_modules.snli_ve import LABELS, SnliVeDataModule, read_snli_ve

GOOD = {"Flickr30K_ID": "3416050480", "annotator_labels": ["neutral", "neutral", "entailment"],
        "captionID": "3416050480.jpg#4", "gold_label": "neutral", "pairID": "3416050480.jpg#4r1n",
        "sentence1": "A man rides a bike down a hill.", "sentence1_binary_parse": "( ... )",
        "sentence1_parse": "(ROOT ...)", "sentence2": "The man is late for work.",
        "sentence2_binary_parse": "( ... )", "sentence2_parse": "(ROOT ...)"}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "A", "The", "man", "is", "late", "dog", "sleeps", "red"]


def _write(path, recs):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return path


@pytest.mark.parametrize("line, expected", [
    ('{"pairID": "x", ', "not valid JSON"),
    (json.dumps([GOOD]), "expected an object with pairID"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "pairID"}), "pairID is missing; expected a non-empty string"),
    (json.dumps({**GOOD, "pairID": "p3", "gold_label": "-"}), "(pairID 'p3'): gold_label '-', expected one of "
                                                              "['contradiction', 'entailment', 'neutral']"),
    (json.dumps({**GOOD, "pairID": "p3", "gold_label": "Entailment"}), "(pairID 'p3'): gold_label 'Entailment'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "Flickr30K_ID"} | {"pairID": "p3"}),
     "(pairID 'p3'): image id is missing; expected a Flickr30k id string in Flickr30K_ID (or Flikr30kID)"),
    (json.dumps({**GOOD, "pairID": "p3", "Flickr30K_ID": ""}), "image id is Flickr30K_ID=''"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "sentence2"} | {"pairID": "p3"}),
     "(pairID 'p3'): sentence2 (the hypothesis) is missing; expected a string"),
    (json.dumps({**GOOD, "pairID": "p1"}), "(pairID 'p1'): pairID already used on line 1"),
])
def test_malformed_line_names_file_line_pair_and_expectation(tmp_path, line, expected):
    path = _write(tmp_path / "snli_ve_dev.jsonl", [{**GOOD, "pairID": "p1"}, "", {**GOOD, "pairID": "p2"}, line])
    with pytest.raises(ValueError) as err:
        read_snli_ve(path)
    msg = str(err.value)
    assert f"{path}, line 4" in msg and expected in msg, msg


def test_reads_both_image_id_spellings_and_uses_the_hypothesis(tmp_path):
    misspelt = {k: v for k, v in GOOD.items() if k != "Flickr30K_ID"} | {"Flikr30kID": "55", "pairID": "b",
                                                                          "gold_label": "contradiction"}
    numeric = {**GOOD, "Flickr30K_ID": 77, "pairID": "c", "gold_label": "entailment"}
    path = _write(tmp_path / "snli_ve_train.jsonl", [GOOD, misspelt, numeric])
    examples = read_snli_ve(path)
    assert [(e.pair_id, e.flickr_id, e.label, e.line) for e in examples] == [
        ("3416050480.jpg#4r1n", "3416050480", 2, 1), ("b", "55", 0, 2), ("c", "77", 1, 3)]
    assert examples[0].hypothesis == "The man is late for work."
    with pytest.raises(ValueError, match="holds no SNLI-VE pairs"):
        read_snli_ve(_write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(FileNotFoundError, match="snli_ve_<split>.jsonl"):
        read_snli_ve(tmp_path / "nope.jsonl")


@pytest.fixture
def hand_made(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    recs = [{**GOOD, "Flickr30K_ID": "10", "pairID": "10.jpg#0r1e", "gold_label": "entailment",
             "sentence2": "A dog sleeps."},
            {**GOOD, "Flickr30K_ID": "11", "pairID": "11.jpg#0r1c", "gold_label": "contradiction",
             "sentence2": "The man is red."},
            {**GOOD, "Flickr30K_ID": "10", "pairID": "10.jpg#0r1n", "gold_label": "neutral"}]
    _write(tmp_path / "dev.jsonl", recs)
    with RegionFeatureWriter(tmp_path / "f.h5", 4) as writer:
        writer.add("10", np.full((2, 4), 1.0), [[0, 0, 5, 5]] * 2, 10, 10)
        writer.add("11", np.full((3, 4), 2.0), [[0, 0, 5, 5]] * 3, 10, 10)
    return tmp_path


def _dm(root, **overrides):
    args = dict(train_file=str(root / "dev.jsonl"), val_file=str(root / "dev.jsonl"), features=str(root / "f.h5"),
                tokenizer=str(root / "tok"), img_dim=4, batch_size=3)
    args.update(overrides)
    return SnliVeDataModule(**args)


def test_one_row_per_hypothesis_with_uniter_label_order(hand_made):
    dm = _dm(hand_made)
    assert dm.labels == ["contradiction", "entailment", "neutral"] == list(LABELS)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["ids"] == ["10.jpg#0r1e", "11.jpg#0r1c", "10.jpg#0r1n"]
    assert batch["targets"].dtype == torch.long and batch["targets"].tolist() == [1, 0, 2]
    assert batch["input_ids"][0, :5].tolist() == [2, 6, 11, 12, 5] and batch["txt_lens"][0] == 6  # [CLS] A dog sleeps . [SEP]
    assert batch["input_ids"][2].tolist() == [2, 7, 8, 9, 10, 1, 1, 5, 3]  # sentence2, not the premise
    assert batch["num_bbs"] == [2, 3, 2] and batch["img_feat"].shape == (3, 3, 4)
    assert batch["img_feat"][1].eq(2.0).all() and batch["img_feat"][0, :2].eq(1.0).all()
    assert batch["img_feat"][0, 2].eq(0).all() and "img_type_ids" not in batch


def test_image_key_mapping_and_missing_images(hand_made):
    dm = _dm(hand_made, image_key="flickr_{flickr_id}")
    with pytest.raises(MissingImageError) as err:
        dm.setup("validate")
    msg = str(err.value)
    assert str(hand_made / "f.h5") in msg and "2 images used by" in msg and str(hand_made / "dev.jsonl") in msg
    assert "'flickr_10' (line 1, pairID 10.jpg#0r1e)" in msg and "image_key" in msg
    with pytest.raises(ValueError, match="SNLI-VE image_key '{stem}': unknown field {stem}; .*only {flickr_id}"):
        _dm(hand_made, image_key="{stem}")


# ---- the demo ------------------------------------------------------------------------------------
def _scene(*objects, width=600):
    return Scene("s", width, 400, tuple(SceneObject(c, s, z, "metal", (x, 10, x + 50, 60)) for c, s, z, x in objects))


def test_hypothesis_labels_follow_the_unique_referent():
    rng = np.random.default_rng(0)
    world = WorldConfig()
    hyp = next(h for h in (attribute_hypothesis(rng, world) for _ in range(500)) if h.text == "The cube is red.")
    assert hyp.label(_scene(("red", "cube", "small", 10), ("blue", "sphere", "small", 100))) == "entailment"
    assert hyp.label(_scene(("green", "cube", "small", 10))) == "contradiction"
    assert hyp.label(_scene(("red", "sphere", "small", 10))) == "neutral"  # no cube
    two_cubes = _scene(("red", "cube", "small", 10), ("red", "cube", "large", 300))
    assert hyp.label(two_cubes) == "neutral" and _ambiguous(two_cubes, hyp)  # which cube? (left out of the demo)
    assert not _ambiguous(_scene(("red", "cube", "small", 10)), hyp)
    rel = next(h for h in (relation_hypothesis(rng, world) for _ in range(2000))
               if h.text == "The red cube is left of the blue sphere.")
    assert rel.label(_scene(("red", "cube", "small", 10), ("blue", "sphere", "small", 300))) == "entailment"
    assert rel.label(_scene(("red", "cube", "small", 300), ("blue", "sphere", "small", 10))) == "contradiction"
    assert rel.label(_scene(("red", "cube", "small", 300), ("blue", "cube", "small", 10))) == "neutral"
    side = next(h for h in (side_hypothesis(rng, world) for _ in range(500))
                if h.text == "The sphere is on the right side of the image.")
    assert side.label(_scene(("red", "sphere", "small", 400))) == "entailment"
    assert side.label(_scene(("red", "sphere", "small", 100))) == "contradiction"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("snli_demo")
    return generate_demo(root / "a", seed=2, feat_dim=16, n_train=900, n_dev=300, n_test=30, tasks=("snli-ve",))


def _records(path):
    return [json.loads(line) for line in open(path)]


def test_demo_schema_ids_and_exact_balance(demo):
    manifest = json.loads(Path(demo["manifest"]).read_text())["tasks"]["snli-ve"]["splits"]
    ids = []
    for split in ("train", "dev", "test"):
        recs = _records(demo[f"snli-ve_{split}"])
        assert Path(demo[f"snli-ve_{split}"]).name == f"snli_ve_{split}.jsonl"
        for r in recs:
            assert set(r) == set(GOOD)
            assert r["pairID"] == f"{r['captionID']}r1{r['gold_label'][0]}" and r["captionID"].startswith(r["Flickr30K_ID"])
            assert Counter(r["annotator_labels"]).most_common(1)[0][0] == r["gold_label"]
            ids.append(int(r["Flickr30K_ID"]))
        for template, counts in manifest[split]["labels"].items():
            assert max(counts.values()) - min(counts.values()) <= 1, (split, template, counts)
        assert len(read_snli_ve(demo[f"snli-ve_{split}"])) == len(recs)
    assert min(ids) == 4_000_000 and len(set(ids)) == len(ids) and max(ids) < 5_000_000
    assert set(manifest["train"]["labels"]) == set(TEMPLATES)


def test_demo_is_deterministic(demo, tmp_path):
    again = generate_demo(tmp_path / "b", seed=2, feat_dim=16, n_train=900, n_dev=300, n_test=30, tasks=("snli-ve",))
    for name in ("snli-ve_train", "snli-ve_dev", "features"):
        assert filecmp.cmp(demo[name], again[name], shallow=False), name


def test_text_alone_is_near_chance(demo):
    """Naive Bayes on the hypothesis' words (train) scores near 1/3 on dev, and no frequent word
    has a skewed label distribution: the image decides."""
    train, dev = _records(demo["snli-ve_train"]), _records(demo["snli-ve_dev"])
    labels = ("entailment", "neutral", "contradiction")
    counts = defaultdict(lambda: np.ones(3))
    prior = np.zeros(3)
    for r in train:
        y = labels.index(r["gold_label"])
        prior[y] += 1
        for w in set(r["sentence2"].rstrip(".").split()):
            counts[w][y] += 1
    totals = prior + 2
    correct = 0
    for r in dev:
        score = np.log(prior / prior.sum()) + sum(np.log(counts[w] / totals) for w in set(r["sentence2"].rstrip(".").split())
                                                  if w in counts)
        correct += labels[int(np.argmax(score))] == r["gold_label"]
    assert correct / len(dev) < 0.42, correct / len(dev)
    for w, c in counts.items():
        if c.sum() - 3 >= 100:
            assert (c / c.sum()).max() < 0.45, (w, c)
    # and the exact sentence is no better: majority label of the same hypothesis in train
    by_text = defaultdict(Counter)
    for r in train:
        by_text[r["sentence2"]][r["gold_label"]] += 1
    seen = [r for r in dev if r["sentence2"] in by_text]
    hits = sum(by_text[r["sentence2"]].most_common(1)[0][0] == r["gold_label"] for r in seen)
    assert len(seen) > 50 and hits / len(seen) < 0.45


def test_datamodule_on_the_demo(demo):
    dm = SnliVeDataModule(train_file=demo["snli-ve_train"], val_file=demo["snli-ve_dev"], test_file=demo["snli-ve_test"],
                          features=demo["features"], tokenizer=demo["tokenizer"], img_dim=16, batch_size=8,
                          eval_batch_size=50)
    dm.setup("fit")
    dm.setup("test")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["targets"].shape == (8,)
    assert dm.tokenizer.unk_token_id not in batch["input_ids"].tolist()
    assert sum(len(b["ids"]) for b in dm.test_dataloader()) == 30
