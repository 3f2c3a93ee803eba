"""NLVR2 reading, tokenisation and the paired two-rows-per-example batches."""
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import data_modules.tokenization as tokenization
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError, RegionFeatureStore
from data_modules.nlvr2 import Nlvr2DataModule, image_keys, read_nlvr2_records
from data_modules.tokenization import encode_uniter_batch, load_tokenizer

GOOD = {"identifier": "dev-850-0-0", "sentence": "The left image contains exactly two dogs.", "label": "False",
        "left_url": "https://example.invalid/a.jpg", "synset": "dog", "writer": "61", "validation": {"61": "False"}}


def world_paths(demo_world) -> dict:
    """The demo world's files, whether the fixture gives ``generate_demo``'s dict or the folder."""
    root = Path(demo_world["root"] if isinstance(demo_world, dict) else demo_world)
    manifest = json.loads((root / "manifest.json").read_text())
    return {"root": root, "features": str(root / "features.h5"), "tokenizer": str(root / "tokenizer"),
            "feat_dim": manifest["feat_dim"], "n_train": manifest["tasks"]["nlvr2"]["splits"]["train"]["examples"],
            **{f"nlvr2_{s}": str(root / "nlvr2" / f"{s}.json") for s in ("train", "dev", "test")}}


def _datamodule(demo_world, **overrides):
    world = world_paths(demo_world)
    args = dict(train_file=world["nlvr2_train"], val_file=world["nlvr2_dev"], test_file=world["nlvr2_test"],
                features=world["features"], tokenizer=world["tokenizer"], img_dim=world["feat_dim"], batch_size=4,
                eval_batch_size=6, max_txt_len=40)
    args.update(overrides)
    return Nlvr2DataModule(**args)


def test_image_keys_from_identifier():
    assert image_keys("dev-850-0-0") == ("dev-850-0-img0", "dev-850-0-img1")
    assert image_keys("train-10171-0-3", "nlvr2_{stem}-img{side}.npz") == (
        "nlvr2_train-10171-0-img0.npz", "nlvr2_train-10171-0-img1.npz")


@pytest.mark.parametrize("line, expected", [
    ('{"identifier": "dev-1-0-0", "sentence": "x", ', "not valid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "sentence"}), "field 'sentence' is missing"),
    (json.dumps({**GOOD, "label": True}), "field 'label' is bool True"),
    (json.dumps({**GOOD, "label": "true"}), "label 'true', expected \"True\" or \"False\""),
    (json.dumps({**GOOD, "identifier": "dev-850"}), "not split-set-pair-sentence"),
    (json.dumps([GOOD]), "expected an object"),
])
def test_malformed_line_names_file_line_and_expectation(tmp_path, line, expected):
    path = tmp_path / "dev.json"
    good2 = {**GOOD, "identifier": "dev-850-1-0", "label": "True"}
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(good2) + "\n" + line + "\n")
    with pytest.raises(ValueError) as err:
        read_nlvr2_records(path)
    msg = str(err.value)
    assert f"{path}, line 4" in msg and expected in msg
    if "identifier" in line and "dev-850-0-0" in line and "label" in expected:
        assert "identifier 'dev-850-0-0'" in msg


def test_records_parse_labels_and_ignore_other_fields(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "identifier": "dev-850-1-0", "label": "True"}) + "\n")
    records = read_nlvr2_records(path)
    assert [(r.identifier, r.label, r.line) for r in records] == [("dev-850-0-0", 0, 1), ("dev-850-1-0", 1, 2)]
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(ValueError, match="line 2: identifier 'dev-850-0-0' already used on line 1"):
        read_nlvr2_records(path)


def test_encode_uniter_is_per_word_wordpiece_with_cls_sep(demo_world):
    tok = load_tokenizer(world_paths(demo_world)["tokenizer"])
    texts = ["There are more cubes in the left image than in the right image.",
             "  Both   images contain a large red cube.  ", "", "Zebras xyz!"]
    for text in texts:
        per_word = [i for w in text.split() for i in tok.convert_tokens_to_ids(tok.tokenize(w))]
        assert encode_uniter_batch(tok, [text], 60) == [[tok.cls_token_id, *per_word, tok.sep_token_id]]
    one_by_one = [encode_uniter_batch(tok, [t], 60)[0] for t in texts]
    assert encode_uniter_batch(tok, texts, 3) == [[tok.cls_token_id, *ids[1:-1][:3], tok.sep_token_id] for ids in one_by_one]
    assert tok.convert_ids_to_tokens(encode_uniter_batch(tok, ["red cubes."], 60)[0]) == ["[CLS]", "red", "cube", "##s",
                                                                                       ".", "[SEP]"]


def test_tokenizer_size_is_checked_against_vocab_file(demo_world, tmp_path, monkeypatch):
    vocab = Path(world_paths(demo_world)["tokenizer"]) / "vocab.txt"
    tok = load_tokenizer(vocab.parent)
    assert len(tok) == len(vocab.read_text().splitlines())
    assert tok.uniter_special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "bert-base-cased")):
        load_tokenizer(tmp_path / "bert-base-cased")
    # transformers 5 ignores vocab_file= and gives a 5-token tokenizer: the check must catch it.
    real = tokenization._bert_tokenizer_class()
    monkeypatch.setattr(tokenization, "_bert_tokenizer_class",
                        lambda: lambda vocab, do_lower_case: real(vocab_file=vocab, do_lower_case=do_lower_case))
    with pytest.raises(ValueError, match=f"{vocab} has 5 tokens but the file lists {len(tok)}"):
        load_tokenizer(vocab.parent)
    monkeypatch.undo()
    bad = tmp_path / "dup"
    bad.mkdir()
    (bad / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncube\ncube\n")
    with pytest.raises(ValueError, match="'cube' listed twice"):
        load_tokenizer(bad)


def test_paired_rows_left_type1_right_type2(demo_world):
    world = world_paths(demo_world)
    dm = _datamodule(demo_world)
    dm.setup("fit")
    store = RegionFeatureStore(world["features"])
    labels = {json.loads(line)["identifier"]: json.loads(line)["label"] for line in open(world["nlvr2_dev"])}
    batch = next(iter(dm.val_dataloader()))
    assert len(batch["ids"]) == 6 and batch["input_ids"].shape[0] == 12 and batch["targets"].shape == (6,)
    assert batch["targets"].dtype == torch.long
    for k, ident in enumerate(batch["ids"]):
        assert batch["targets"][k].item() == (labels[ident] == "True")
        assert torch.equal(batch["input_ids"][2 * k], batch["input_ids"][2 * k + 1])
        for side, row in ((0, 2 * k), (1, 2 * k + 1)):
            feat, pos = store.get(image_keys(ident)[side])
            n = len(feat)
            assert batch["num_bbs"][row] == n
            assert torch.equal(batch["img_feat"][row, :n], feat) and torch.equal(batch["img_pos_feat"][row, :n], pos)
            assert batch["img_type_ids"][row, :n].eq(side + 1).all() and batch["img_type_ids"][row, n:].eq(0).all()
    ids = batch["input_ids"][0, : batch["txt_lens"][0]].tolist()
    assert ids[0] == dm.special_ids["cls"] and ids[-1] == dm.special_ids["sep"]


def test_missing_images_fail_at_setup_naming_store_image_and_example(demo_world, tmp_path):
    world = world_paths(demo_world)
    dev = Path(world["nlvr2_dev"]).read_text().splitlines()
    extra = {**json.loads(dev[0]), "identifier": "dev-9999-7-0"}
    path = tmp_path / "dev.json"
    path.write_text("\n".join(dev + [json.dumps(extra)]) + "\n")
    dm = _datamodule(demo_world, val_file=str(path))
    with pytest.raises(MissingImageError) as err:
        dm.setup("validate")
    msg = str(err.value)
    assert world["features"] in msg and "'dev-9999-7-img0'" in msg and "dev-9999-7-0" in msg and str(path) in msg
    dm = _datamodule(demo_world, image_key="nlvr2_{stem}-img{side}.npz")
    with pytest.raises(MissingImageError, match="image_key"):
        dm.setup("validate")


def test_feature_dimension_mismatch_fails_at_setup(demo_world):
    world = world_paths(demo_world)
    dm = _datamodule(demo_world, img_dim=2048)
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert world["features"] in msg and f"{world['feat_dim']}-d" in msg and "img_dim=2048" in msg


def test_loaders_seeded_shuffle_drop_last_and_workers(demo_world):
    def epoch_ids(seed):
        pl.seed_everything(seed, verbose=False)
        dm = _datamodule(demo_world)
        dm.setup("fit")
        return [i for b in dm.train_dataloader() for i in b["ids"]]

    first, again, other = epoch_ids(3), epoch_ids(3), epoch_ids(4)
    assert first == again and first != other
    assert len(first) == (world_paths(demo_world)["n_train"] // 4) * 4 and len(set(first)) == len(first)
    dm = _datamodule(demo_world, num_workers=2, batch_size=7)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.drop_last and not val.drop_last and train.persistent_workers and val.batch_size == 6
    assert dm.labels == ["False", "True"] and len(dm.tokenizer) > 5
    with pytest.raises(RuntimeError, match="test split is not loaded"):
        dm.test_dataloader()


def test_max_boxes_truncates_regions(demo_world):
    dm = _datamodule(demo_world, max_boxes=3)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert max(batch["num_bbs"]) <= 3 and batch["img_feat"].shape[1] <= 3


def test_datamodule_from_a_hand_made_store(tmp_path):
    """Independent of the demo generator: a two-example file, a store, a vocab."""
    vocab = tmp_path / "tok"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "two", "dog", "##s"]) + "\n")
    rng = np.random.default_rng(0)
    with RegionFeatureWriter(tmp_path / "f.h5", 8) as writer:
        for stem in ("test1-0-0", "test1-0-1"):
            for side in (0, 1):
                writer.add(f"{stem}-img{side}", rng.standard_normal((2 + side, 8)), [[0, 0, 5, 5]] * (2 + side), 10, 10)
    data = tmp_path / "test1.json"
    data.write_text("\n".join(json.dumps({**GOOD, "identifier": f"test1-0-{p}-0", "sentence": "two dogs.",
                                          "label": "True" if p else "False"}) for p in (0, 1)) + "\n")
    dm = Nlvr2DataModule(train_file=str(data), val_file=str(data), features=str(tmp_path / "f.h5"),
                         tokenizer=str(vocab), img_dim=8, batch_size=2)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"][0].tolist() == [2, 6, 7, 8, 5, 3]
    assert batch["targets"].tolist() == [0, 1] and batch["num_bbs"] == [2, 3, 2, 3]
