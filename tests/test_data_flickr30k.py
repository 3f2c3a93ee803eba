"""Flickr30k retrieval: Karpathy-file reading, training groups, full-evaluation pairs, the demo."""
import dataclasses
import copy
import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.demo import generate_demo
from data_modules.demo.flickr30k import MIN_OBJECTS, FIRST_IMAGE, make_captions, retrieval_stats
from data_modules.demo.world import WorldConfig, make_scene
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError, RegionFeatureStore
from data_modules.flickr30k import (EpochIndexSampler, Flickr30kDataModule, KarpathyImage, read_karpathy,
                                    select_split, store_key)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "dog", "cat", "runs", "sits", "red", "ball"]


def karpathy(splits=("train", "train", "train", "val", "val", "test")) -> dict:
    """A small Karpathy file: image n has captions 'a dog runs .'-style texts, 2 per image."""
    images, sentid = [], 0
    words = ["dog", "cat", "red", "ball"]
    for n, split in enumerate(splits):
        sents = []
        for k in range(2):
            raw = f"a {words[n % 4]} {'runs' if k else 'sits'} ."
            sents.append({"raw": raw, "tokens": raw.rstrip(" .").split(), "imgid": n, "sentid": sentid})
            sentid += 1
        images.append({"filename": f"{1000 + n}.jpg", "imgid": n, "split": split,
                       "sentids": [s["sentid"] for s in sents], "sentences": sents})
    return {"images": images, "dataset": "flickr30k"}


@pytest.fixture
def hand_made(tmp_path):
    """A Karpathy file, a store whose image n has n + 1 regions filled with the value n, a vocab."""
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    data = karpathy()
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    with RegionFeatureWriter(tmp_path / "f.h5", 4) as writer:
        for n in range(len(data["images"])):
            writer.add(str(1000 + n), np.full((n + 1, 4), float(n)), [[0, 0, 5, 5]] * (n + 1), 10, 10)
    return tmp_path


def _dm(root, **overrides):
    args = dict(karpathy_file=str(root / "dataset_flickr30k.json"), features=str(root / "f.h5"),
                tokenizer=str(root / "tok"), img_dim=4, batch_size=2, eval_batch_size=5, neg_seed=7)
    args.update(overrides)
    return Flickr30kDataModule(**args)


def test_reads_karpathy_schema_and_selects_splits(hand_made):
    images = read_karpathy(hand_made / "dataset_flickr30k.json")
    assert [im.split for im in images] == ["train"] * 3 + ["val"] * 2 + ["test"]
    assert images[4] == KarpathyImage("1004.jpg", 4, "val", (8, 9), ("a dog sits .", "a dog runs ."), 4)
    assert [im.imgid for im in select_split(images, "val")] == [3, 4]
    assert [im.imgid for im in select_split(images, "train", max_images=2)] == [0, 1]
    with pytest.raises(ValueError, match=r"no image has split 'restval'; the file's splits are \['test', 'train', 'val'\]"):
        select_split(images, "restval", "dataset_flickr30k.json")
    im = images[0]
    assert store_key(im) == "1000" and store_key(im, "{filename}") == "1000.jpg"
    assert store_key(im, "flickr_{imgid}") == "flickr_0"


def _break(data, how):
    im = data["images"][1]
    if how == "no sentences":
        im["sentences"], im["sentids"] = [], []
    elif how == "dup sentid":
        im["sentences"][1]["sentid"] = 0
        im["sentids"] = [2, 0]
    elif how == "dup imgid":
        im["imgid"] = 0
        for s in im["sentences"]:
            s["imgid"] = 0
    elif how == "sentids":
        im["sentids"] = [2, 99]
    elif how == "sentence imgid":
        im["sentences"][0]["imgid"] = 5
    elif how == "filename":
        del im["filename"]
    elif how == "imgid type":
        im["imgid"] = "1"
    return data


@pytest.mark.parametrize("how, expected", [
    ("no sentences", "images[1] (filename '1001.jpg'): the image has no sentences; expected its captions"),
    ("dup sentid", "images[1] (filename '1001.jpg'), sentences[1]: sentid 0 already used by images[0]"),
    ("dup imgid", "images[1] (filename '1001.jpg'): imgid 0 already used by images[0]"),
    ("sentids", "images[1] (filename '1001.jpg'): sentids [2, 99] disagree with the sentences' sentids [2, 3]"),
    ("sentence imgid", "images[1] (filename '1001.jpg'), sentences[0]: imgid 5, expected the image's imgid 1"),
    ("filename", "images[1]: field 'filename' is missing; expected str"),
    ("imgid type", "images[1] (filename '1001.jpg'): field 'imgid' is str '1'; expected int"),
])
def test_malformed_file_names_file_image_and_expectation(tmp_path, how, expected):
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(_break(karpathy(), how)))
    with pytest.raises(ValueError) as err:
        read_karpathy(path)
    assert str(err.value).startswith(f"{path}, ") and expected in str(err.value)


def test_not_karpathy_json_is_refused(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: not valid JSON"):
        read_karpathy(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a JSON object with an \"images\" list"):
        read_karpathy(path)
    with pytest.raises(FileNotFoundError, match="dataset_flickr30k.json"):
        read_karpathy(tmp_path / "missing.json")


def test_training_groups_positive_negative_image_negative_caption(hand_made):
    dm = _dm(hand_made)
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train) == 6 and dm.labels is None
    batch = train.collate([train[(0, 0)], train[(3, 0)]])  # captions 0 (image 0) and 3 (image 1)
    assert batch["input_ids"].shape[0] == 6 and batch["group_size"] == 3
    assert batch["targets"].dtype == torch.long and batch["targets"].tolist() == [0, 0]
    assert batch["ids"] == ["0", "3"]
    tok = dm.tokenizer
    text = [tok.convert_ids_to_tokens(batch["input_ids"][r, : batch["txt_lens"][r]].tolist()) for r in range(6)]
    image = [int(batch["img_feat"][r, 0, 0]) for r in range(6)]  # the store's value n = image n
    assert batch["num_bbs"] == [image[r] + 1 for r in range(6)]
    for k, (caption, own) in enumerate([(0, 0), (3, 1)]):
        pos, neg_img, neg_txt = 3 * k, 3 * k + 1, 3 * k + 2
        assert text[pos] == text[neg_img] == ["[CLS]", *karpathy()["images"][own]["sentences"][caption % 2]["raw"].split(), "[SEP]"]
        assert image[pos] == image[neg_txt] == own and image[neg_img] != own and image[neg_img] < 3
        assert text[neg_txt] != text[pos] and text[neg_txt][1:3] != text[pos][1:3]  # another image's caption
    assert torch.equal(batch["img_feat"][0, :1], torch.zeros(1, 4))


def test_negatives_are_seeded_by_seed_epoch_index_and_never_the_positive(hand_made):
    dm = _dm(hand_made)
    dm.setup("fit")
    train = dm.datasets["train"]
    draws = {(epoch, i): train.negatives(i, epoch) for epoch in range(30) for i in range(len(train))}
    for (epoch, i), (neg_img, neg_txt) in draws.items():
        own = int(train.data.txt2img[i])
        assert neg_img != own and int(train.data.txt2img[neg_txt]) != own
    assert len({draws[(e, 0)] for e in range(30)}) > 1  # a new draw every epoch
    assert {n for (_, i), (n, _) in draws.items() if i == 0} == {1, 2}  # every other image
    other = _dm(hand_made, neg_seed=7)
    other.setup("fit")
    assert all(other.datasets["train"].negatives(i, e) == d for (e, i), d in draws.items())
    third = _dm(hand_made, neg_seed=8)
    third.setup("fit")
    assert any(third.datasets["train"].negatives(i, e) != d for (e, i), d in draws.items())


def test_neg_seed_defaults_to_the_run_seed(hand_made, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    dm = _dm(hand_made, neg_seed=None)
    dm.setup("fit")
    assert dm.datasets["train"].neg_seed == 11


def test_train_loader_yields_epoch_indexed_groups_reproducibly(hand_made):
    dm = _dm(hand_made)
    dm.setup("fit")

    def run(seed):
        torch.manual_seed(seed)
        loader = dm.train_dataloader()
        return [[b["ids"] for b in loader] for _ in range(2)]

    first, again = run(1), run(1)
    assert first == again and len(first[0]) == 3 and all(len(ids) == 2 for ids in first[0])
    assert sorted(i for ids in first[0] for i in ids) == ["0", "1", "2", "3", "4", "5"]
    sampler = EpochIndexSampler(4, shuffle=False)
    assert list(sampler) == [(0, 0), (1, 0), (2, 0), (3, 0)] and list(sampler)[0] == (0, 1)
    sampler.set_epoch(5)
    assert next(iter(sampler)) == (0, 5) and len(sampler) == 4
    loader = dm.train_dataloader()
    assert loader.drop_last and loader.batch_size == 2


def test_full_evaluation_pairs_every_caption_with_every_image(hand_made):
    dm = _dm(hand_made)
    dm.setup("validate")
    val = dm.datasets["val"]
    assert (val.num_texts, val.num_images, len(val)) == (4, 2, 8)
    batches = list(dm.val_dataloader())
    assert [len(b["ids"]) for b in batches] == [5, 3]
    txt = torch.cat([b["txt_index"] for b in batches])
    img = torch.cat([b["img_index"] for b in batches])
    targets = torch.cat([b["targets"] for b in batches])
    assert txt.dtype == img.dtype == targets.dtype == torch.long
    assert txt.tolist() == [0, 1, 2, 3] * 2 and img.tolist() == [0] * 4 + [1] * 4  # image-major
    assert targets.tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert all(b["num_texts"] == 4 and b["num_images"] == 2 for b in batches)
    assert batches[0]["ids"][:2] == ["txt0-img0", "txt1-img0"]
    first = batches[0]
    assert [int(first["img_feat"][r, 0, 0]) for r in range(5)] == [3, 3, 3, 3, 4]  # val = images 3, 4
    assert val.data.sentids == [6, 7, 8, 9] and val.data.image_keys == ["1003", "1004"]
    assert "group_size" not in first


def test_eval_reads_each_image_once_per_run_of_rows(hand_made, monkeypatch):
    dm = _dm(hand_made)
    dm.setup("validate")
    val = dm.datasets["val"]
    reads = []
    real_get = RegionFeatureStore.get
    monkeypatch.setattr(RegionFeatureStore, "get",
                        lambda self, key, example=None: reads.append(key) or real_get(self, key, example=example))
    list(dm.val_dataloader())
    assert reads == ["1003", "1004"]


def test_max_eval_images_limits_validation_not_test(hand_made, tmp_path):
    data = karpathy(splits=("train", "train", "val", "val", "val", "test"))
    root = hand_made
    (root / "dataset_flickr30k.json").write_text(json.dumps(data))
    dm = _dm(root, max_eval_images=2)
    dm.setup("validate")
    dm.setup("test")
    assert (dm.datasets["val"].num_images, dm.datasets["val"].num_texts) == (2, 4)
    assert (dm.datasets["test"].num_images, dm.datasets["test"].num_texts) == (1, 2)
    with pytest.raises(ValueError, match="max_eval_images must be positive"):
        _dm(root, max_eval_images=0)


def test_split_names_and_missing_images(hand_made):
    dm = _dm(hand_made, val_split="restval")
    with pytest.raises(ValueError, match="no image has split 'restval'"):
        dm.setup("validate")
    dm = _dm(hand_made, test_split=None)
    assert dm.split_files()["test"] is None
    with pytest.raises(RuntimeError, match="no test file configured"):
        dm.test_dataloader()
    dm = _dm(hand_made, image_key="flickr_{stem}.jpg")
    with pytest.raises(MissingImageError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "3 images used by" in msg and "'flickr_1000.jpg' (images[0], '1000.jpg')" in msg and "image_key" in msg
    assert str(hand_made / "f.h5") in msg and "split 'train'" in msg
    dm = _dm(hand_made, image_key="{stem:.2}")  # "1000", "1001", ... -> "10"
    with pytest.raises(ValueError, match="both map to the store key '10'"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="Flickr30k image_key 'x': uses no field"):
        _dm(hand_made, image_key="x")
    with pytest.raises(ValueError, match="only {stem}, {filename}, {imgid}"):
        _dm(hand_made, image_key="{name}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("flickr_demo")
    paths = generate_demo(root / "a", seed=4, feat_dim=16, n_train=30, n_dev=6, n_test=4, tasks=("flickr30k",))
    return root, paths


def test_demo_is_karpathy_schema_with_five_true_distinct_captions(demo):
    root, paths = demo
    data = json.loads(Path(paths["flickr30k_karpathy"]).read_text())
    assert data["dataset"] == "flickr30k" and len(data["images"]) == 40
    assert [im["split"] for im in data["images"]] == ["train"] * 30 + ["val"] * 6 + ["test"] * 4
    sentid = 0
    store = RegionFeatureStore(paths["features"])
    for n, im in enumerate(data["images"]):
        assert set(im) == {"filename", "imgid", "split", "sentids", "sentences"}
        assert im["filename"] == f"{FIRST_IMAGE + n}.jpg" and im["imgid"] == n and str(FIRST_IMAGE + n) in store
        assert im["sentids"] == list(range(sentid, sentid + 5))
        sentid += 5
        raws = [s["raw"] for s in im["sentences"]]
        assert len(set(raws)) == 5
        for s in im["sentences"]:
            assert s["imgid"] == n and s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
    assert len(read_karpathy(paths["flickr30k_karpathy"])) == 40
    manifest = json.loads(Path(paths["manifest"]).read_text())["tasks"]["flickr30k"]
    assert manifest["splits"]["dev"]["captions"] == 30 and "oracle_ir_r1" in manifest["splits"]["test"]


def test_demo_is_deterministic(demo, tmp_path):
    root, paths = demo
    again = generate_demo(tmp_path / "b", seed=4, feat_dim=16, n_train=30, n_dev=6, n_test=4, tasks=("flickr30k",))
    other = generate_demo(tmp_path / "c", seed=5, feat_dim=16, n_train=30, n_dev=6, n_test=4, tasks=("flickr30k",))
    assert filecmp.cmp(paths["flickr30k_karpathy"], again["flickr30k_karpathy"], shallow=False)
    assert filecmp.cmp(paths["features"], again["features"], shallow=False)
    assert Path(paths["flickr30k_karpathy"]).read_text() != Path(other["flickr30k_karpathy"]).read_text()


def test_captions_are_true_and_specific_enough_to_learn_retrieval():
    """Captions hold for their own scene; on a 100-image split most pin their image down (an
    oracle knowing the scenes gets IR R@1 well above the study's 0.30 target), yet some fit several
    images (R@1 is bounded below 1, and the model must bind every attribute to get there)."""
    rng = np.random.default_rng(0)
    world = dataclasses.replace(WorldConfig(), min_objects=MIN_OBJECTS)
    scenes = [make_scene(rng, str(i), world=world) for i in range(100)]
    captions = [make_captions(s, rng) for s in scenes]
    assert all(c.holds(s) for s, caps in zip(scenes, captions) for c in caps)
    stats = retrieval_stats(scenes, captions)
    assert 1.2 <= stats["images_per_caption_mean"] <= 4, stats
    assert 0.6 <= stats["oracle_ir_r1"] <= 0.95 and 0.4 <= stats["oracle_tr_r1"] <= 0.95, stats
    assert all(len(s.objects) >= MIN_OBJECTS for s in scenes)


def test_datamodule_on_the_demo(demo):
    root, paths = demo
    dm = Flickr30kDataModule(karpathy_file=paths["flickr30k_karpathy"], features=paths["features"],
                             tokenizer=paths["tokenizer"], img_dim=16, batch_size=4, eval_batch_size=60,
                             max_eval_images=4, neg_seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 12 and batch["img_feat"].shape[-1] == 16
    assert dm.tokenizer.unk_token_id not in batch["input_ids"].tolist()
    val = list(dm.val_dataloader())
    assert sum(len(b["ids"]) for b in val) == 20 * 4 and val[0]["num_texts"] == 20
    assert int(sum(b["targets"].sum() for b in val)) == 20
