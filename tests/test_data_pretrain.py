"""Pre-training data (``data_modules.pretrain``) and the demo's pre-training corpus
(``data_modules.demo.pretrain``): UNITER's masking, negatives and mix-ratio scheduling to the batch
contract, the three caption formats, soft labels, and the files the demo writes."""
import filecmp
import json
import re
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from data_modules.demo import generate_demo
from data_modules.demo.pretrain import (ATTRIBUTES, Clause, attribute_values, caption_holds, caption_text,
                                        class_index, class_names, counting_clauses, dense_clauses, hard_negatives)
from data_modules.demo.world import MATERIALS, SIZES, ObjectSpec, Scene, SceneObject, WorldConfig
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError, RegionFeatureStore
from data_modules.pretrain import PretrainDataModule
from data_modules.pretraining.batches import IGNORE, mask_regions, mask_tokens
from data_modules.pretraining.stream import ObjectiveSchedule

MIX = {"mlm": 2, "itm": 2, "mrfr": 1, "mrckl": 1}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo world with the pre-training corpus (and NLVR2, to compare with a task store);
    the vocabulary padded with [unused…] rows as the demo model's is."""
    root = tmp_path_factory.mktemp("pretrain_demo")
    paths = generate_demo(root, seed=3, feat_dim=16, n_train=40, n_dev=8, n_test=4, tasks=("nlvr2", "pretrain"),
                          pretrain_scenes=160, pretrain_val=24, vocab_size=400)
    return paths


def make_module(demo, **kw):
    args = dict(train_files=[demo["pretrain_train"]], val_files=[demo["pretrain_val"]],
                features=demo["pretrain_features"], tokenizer=demo["tokenizer"], img_dim=16, batch_size=8,
                objectives=dict(MIX), seed=0)
    args.update(kw)
    return PretrainDataModule(**args)


@pytest.fixture(scope="module")
def dm(demo):
    module = make_module(demo, objectives={**MIX, "mrc": 1, "summary": 1, "bow": 1}, itm_hard_neg_prob=0.5)
    module.setup("fit")
    return module


def batches(dm, objective, n, split="train", seed=0):
    """``n`` batches of one objective over the split's captions, each row from its own seeded RNG."""
    maker = dm.batch_maker(split)
    size = len(maker.captions)
    out = []
    for b in range(n):
        idx = [(b * 8 + j) % size for j in range(8)]
        out.append(maker.build(objective, idx, [np.random.default_rng([seed, b, j]) for j in range(8)]))
    return out


# ------------------------------------------------------------------------------------------------- MLM

def test_mlm_selection_rate_and_80_10_10_split(dm):
    tok = dm.tokenizer
    special = dm.special_ids
    keep = np.array([special["cls"], special["sep"], special["pad"]])
    ordinary = dm.ordinary_token_ids
    words = torch.from_numpy(np.random.default_rng(0).choice(ordinary, size=60))
    row = torch.cat([torch.tensor([special["cls"]]), words, torch.tensor([special["sep"]])])
    rng = np.random.default_rng(1)
    selected = masked = randomised = kept = 0
    for _ in range(800):
        out, labels = mask_tokens(row, rng, 0.15, special["mask"], keep, ordinary)
        sel = labels != IGNORE
        assert labels[0] == IGNORE and labels[-1] == IGNORE and out[0] == row[0] and out[-1] == row[-1]
        assert torch.equal(labels[sel], row[sel]) and torch.equal(out[~sel], row[~sel])
        selected += int(sel.sum())
        masked += int((out[sel] == special["mask"]).sum())
        changed = sel & (out != special["mask"]) & (out != row)
        randomised += int(changed.sum())
        kept += int((sel & (out == row)).sum())
        assert set(out[changed].tolist()) <= set(ordinary.tolist())  # random replacements: ordinary tokens only
    assert abs(selected / (800 * 60) - 0.15) < 0.01
    assert abs(masked / selected - 0.8) < 0.02
    assert abs(randomised / selected - 0.1 * (1 - 1 / len(ordinary))) < 0.015
    assert abs(kept / selected - 0.1) < 0.015
    names = tok.convert_ids_to_tokens(ordinary.tolist())
    assert not any(n.startswith("[unused") for n in names) and not set(ordinary.tolist()) & set(tok.all_special_ids)
    assert len(ordinary) < len(tok) - 5  # the demo vocabulary is padded with [unused…] rows: left out


def test_mlm_batches_follow_the_contract(dm):
    special = dm.special_ids
    maker = dm.batch_maker("train")
    for b in batches(dm, "mlm", 30):
        assert b["objective"] == "mlm" and len(b["ids"]) == 8 and b["txt_labels"].shape == b["input_ids"].shape
        assert b["txt_labels"].dtype == torch.long
        for r, example in enumerate(b["ids"]):
            i = maker.captions.ids.index(example)
            original = maker.captions.tokens(i)
            n = len(original)
            labels, ids = b["txt_labels"][r], b["input_ids"][r]
            assert (labels[n:] == IGNORE).all() and (ids[n:] == special["pad"]).all()
            assert labels[0] == IGNORE and labels[n - 1] == IGNORE  # [CLS], [SEP]
            sel = labels[:n] != IGNORE
            assert sel.sum() >= 1 and torch.equal(labels[:n][sel], original[sel])
            assert torch.equal(ids[:n][~sel], original[~sel])
        assert b["img_feat"].shape[0] == 8 and "img_masks" not in b  # images unmasked


def test_a_row_with_nothing_selected_gets_its_first_word_piece_masked(dm):
    special = dm.special_ids
    keep = np.array([special["cls"], special["sep"], special["pad"]])
    row = torch.tensor([special["cls"], 50, 51, special["sep"]])
    out, labels = mask_tokens(row, np.random.default_rng(0), 1e-9, special["mask"], keep, dm.ordinary_token_ids)
    assert out.tolist() == [special["cls"], special["mask"], 51, special["sep"]]
    assert labels.tolist() == [IGNORE, 50, IGNORE, IGNORE]


# ------------------------------------------------------------------------------------------------- MRM

def test_region_mask_rate_and_at_least_one():
    rng = np.random.default_rng(0)
    masks = [mask_regions(40, rng, 0.15) for _ in range(500)]
    assert abs(np.mean(masks) - 0.15) < 0.01
    assert all(mask_regions(3, rng, 1e-9).sum() == 1 for _ in range(20))
    assert mask_regions(0, rng, 0.15).shape == (0,)


@pytest.mark.parametrize("objective", ["mrfr", "mrc", "mrckl"])
def test_masked_region_batches_line_up_with_their_targets(dm, objective):
    store = dm.store
    maker = dm.batch_maker("train")
    total = masked_total = 0
    for b in batches(dm, objective, 12):
        masks = b["img_masks"]
        assert masks.dtype == torch.bool and masks.shape == b["img_feat"].shape[:2]
        originals, softs = [], []
        for r, example in enumerate(b["ids"]):
            i = maker.captions.ids.index(example)
            feat, pos = store.get(maker.captions.image_key(i))
            n = len(feat)
            assert not masks[r, n:].any() and 1 <= masks[r, :n].sum()
            total += n
            masked_total += int(masks[r].sum())
            assert torch.equal(b["input_ids"][r, :b["txt_lens"][r]], maker.captions.tokens(i))  # text unmasked
            assert (b["img_feat"][r, :n][masks[r, :n]] == 0).all()
            assert torch.equal(b["img_feat"][r, :n][~masks[r, :n]], feat[~masks[r, :n]])
            assert torch.equal(b["img_pos_feat"][r, :n], pos)
            originals.append(feat[masks[r, :n]])
            softs.append(store.get_soft_labels(maker.captions.image_key(i))[masks[r, :n]])
        assert torch.equal(b["feat_targets"], torch.cat(originals))  # row-major order of img_masks
        tgt = b["img_mask_tgt"]
        assert tgt.dtype == torch.bool and tgt.shape == b["attn_masks"].shape and int(tgt.sum()) == len(b["feat_targets"])
        # each True position of the joint sequence gathers a masked region, in the same order
        lt = b["input_ids"].shape[1]
        gathered = [(r, int(b["gather_index"][r, p]) - lt) for r, p in torch.nonzero(tgt).tolist()]
        assert gathered == [tuple(x) for x in torch.nonzero(masks).tolist()]
        if objective == "mrfr":
            assert "label_targets" not in b
        else:
            assert b["label_targets"].dtype == torch.float32 and torch.equal(b["label_targets"], torch.cat(softs))
            assert b["label_targets"].shape[1] == len(dm.labels)
    assert 0.12 < masked_total / total < 0.35  # 0.15 plus the one forced on small images (~6 regions)


# ------------------------------------------------------------------------------------------------- ITM

def test_itm_negatives_are_other_images_or_hard_negative_captions(dm):
    store = dm.store
    maker = dm.batch_maker("train")
    caps = maker.captions
    kinds = Counter()
    for b in batches(dm, "itm", 60):
        assert b["targets"].dtype == torch.long and set(b["targets"].tolist()) <= {0, 1}
        assert "txt_labels" not in b and "img_masks" not in b
        for r, example in enumerate(b["ids"]):
            i = caps.ids.index(example)
            text = b["input_ids"][r, :b["txt_lens"][r]]
            own_feat = store.get(caps.image_key(i))[0]
            nb = b["num_bbs"][r]
            same_image = nb == len(own_feat) and torch.equal(b["img_feat"][r, :nb], own_feat)
            own_text = torch.equal(text, caps.tokens(i))
            if b["targets"][r] == 1:
                assert same_image and own_text
                kinds["match"] += 1
            elif own_text:
                assert not same_image  # a random other image
                kinds["other image"] += 1
            else:
                assert same_image and any(torch.equal(text, caps.negative(i, k)) for k in range(caps.num_negatives(i)))
                kinds["hard negative"] += 1
    n = sum(kinds.values())
    assert abs((kinds["other image"] + kinds["hard negative"]) / n - 0.5) < 0.07
    assert abs(kinds["hard negative"] / (n - kinds["match"]) - 0.5) < 0.1  # itm_hard_neg_prob 0.5


def test_itm_without_hard_negatives_uses_other_images_only(demo):
    module = make_module(demo, objectives={"itm": 1})
    module.setup("fit")
    assert module.rows.itm_hard_neg_prob == 0.0
    caps = module.datasets["train"]
    for b in batches(module, "itm", 20):
        for r, example in enumerate(b["ids"]):
            assert torch.equal(b["input_ids"][r, :b["txt_lens"][r]], caps.tokens(caps.ids.index(example)))


# --------------------------------------------------------------------------------------- demo extras

def test_summary_and_bag_of_words_targets(dm):
    store, maker = dm.store, dm.batch_maker("train")
    for b in batches(dm, "summary", 4):
        assert b["presence"].shape == (8, len(dm.labels)) and b["counts"].dtype == torch.long
        for r, example in enumerate(b["ids"]):
            top = store.get_soft_labels(maker.captions.image_key(maker.captions.ids.index(example))).argmax(1)
            assert set(torch.nonzero(b["presence"][r]).flatten().tolist()) == set(top[top != 0].tolist())
            assert b["counts"][r] == min(int((top != 0).sum()), dm.rows.max_count)
    ordinary = set(dm.ordinary_token_ids.tolist())
    for b in batches(dm, "bow", 4):
        assert b["bow_targets"].shape == (8, len(dm.tokenizer)) and b["bow_targets"].dtype == torch.float32
        for r in range(8):
            words = set(b["input_ids"][r, :b["txt_lens"][r]].tolist()) & ordinary
            assert set(torch.nonzero(b["bow_targets"][r]).flatten().tolist()) == words


# -------------------------------------------------------------------------------------- scheduling

def test_mix_ratios_give_the_step_frequencies_and_are_seeded():
    names, ratios = ("mlm", "mrfr", "mrckl", "itm"), (2.0, 1.0, 1.0, 2.0)
    schedule = ObjectiveSchedule(names, ratios, seed=0)
    steps = schedule.steps(0, 30000)
    freq = np.bincount(steps, minlength=4) / len(steps)
    np.testing.assert_allclose(freq, np.array(ratios) / 6, atol=0.01)
    assert np.array_equal(ObjectiveSchedule(names, ratios, seed=0).steps(5000, 9000), steps[5000:9000])
    assert not np.array_equal(ObjectiveSchedule(names, ratios, seed=1).steps(0, 500), steps[:500])
    assert [schedule.of_step(s) for s in (0, 4095, 4096, 8191)] == [names[steps[s]] for s in (0, 4095, 4096, 8191)]
    counts = schedule.micro_batches_before(2 * 9000 + 1, accumulate=2)
    expected = np.bincount(steps[:9000], minlength=4) * 2
    expected[steps[9000]] += 1
    assert np.array_equal(counts, expected)


def objectives_and_ids(loader):
    return [(b["objective"], tuple(b["ids"])) for b in loader]


def test_accumulated_micro_batches_share_the_steps_objective(dm):
    stream = dm.train_stream(accumulate=3, max_steps=40)
    assert len(stream) == 120
    seen = objectives_and_ids(stream)
    assert len(seen) == 120
    for g, (objective, _) in enumerate(seen):
        assert objective == stream.schedule.of_step(g // 3)
    assert len({objective for objective, _ in seen}) >= 5 and {o for o, _ in seen} <= set(dm.active_objectives)
    # a fit resumed at step 30 goes on with the same micro-batches
    assert objectives_and_ids(dm.train_stream(accumulate=3, max_steps=40, global_step=30)) == seen[90:]


def test_two_ranks_share_the_schedule_and_split_each_objectives_stream(dm):
    ranks = [objectives_and_ids(dm.train_stream(accumulate=2, rank=r, world_size=2, max_steps=30)) for r in (0, 1)]
    assert [o for o, _ in ranks[0]] == [o for o, _ in ranks[1]]
    captions = len(dm.datasets["train"])
    per_objective = {}
    for (o, ids0), (_, ids1) in zip(*ranks):
        assert not set(ids0) & set(ids1)
        per_objective.setdefault(o, []).append(ids0 + ids1)
    for o, groups in per_objective.items():  # both ranks together walk the objective's shuffled stream
        flat = [i for g in groups for i in g][:captions]
        assert len(set(flat)) == len(flat), o
    single = objectives_and_ids(dm.train_stream(accumulate=2, max_steps=30))
    assert [o for o, _ in single] == [o for o, _ in ranks[0]]  # the schedule does not depend on the world size


def test_the_sequence_is_the_same_with_0_and_2_workers(dm):
    def run(workers):
        stream = dm.train_stream(accumulate=2, max_steps=7)
        out = []
        for b in DataLoader(stream, batch_size=None, num_workers=workers):
            out.append((b["objective"], b["ids"], b["input_ids"], b.get("txt_labels"), b.get("img_masks"),
                        b.get("targets")))
        return out

    plain, workers = run(0), run(2)
    assert len(plain) == len(workers) == 14
    for a, b in zip(plain, workers):
        assert a[:2] == b[:2]
        for x, y in zip(a[2:], b[2:]):
            assert (x is None and y is None) or torch.equal(x, y)


def test_epochs_continue_the_streams_when_max_steps_is_unknown(dm):
    stream = dm.train_stream(accumulate=2)
    captions = len(dm.datasets["train"])
    assert len(stream) == captions // dm.batch_size // 2 * 2
    first, second = objectives_and_ids(stream), objectives_and_ids(stream)
    assert len(first) == len(second) == len(stream) and first != second
    both = objectives_and_ids(dm.train_stream(accumulate=2, max_steps=len(stream)))  # = 2 epochs of micro-batches
    assert both == first + second


class Recorder(pl.LightningModule):
    """Records what Lightning feeds it: the objective and ids of every training and validation batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_seen, self.val_seen = [], []

    def training_step(self, batch, batch_idx):
        self.train_seen.append((batch["objective"], tuple(batch["ids"])))
        return (self.w * batch["input_ids"].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.val_seen.append((batch["objective"], tuple(batch["ids"])))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_lightning_fit_sees_the_stream_with_accumulation(demo, workers):
    module = make_module(demo, num_workers=workers, eval_batch_size=16)
    model = Recorder()
    trainer = pl.Trainer(max_steps=5, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, val_check_interval=10, check_val_every_n_epoch=None)
    trainer.fit(model, datamodule=module)
    expected = objectives_and_ids(module.train_stream(accumulate=2, max_steps=5))
    assert model.train_seen == expected and len(expected) == 10 and trainer.global_step == 5
    for g in range(0, 10, 2):
        assert expected[g][0] == expected[g + 1][0]
    # validation: each objective in turn over the 24 val captions (batches of 16)
    assert [o for o, _ in model.val_seen] == ["mlm"] * 2 + ["mrfr"] * 2 + ["mrckl"] * 2 + ["itm"] * 2


def test_validation_is_deterministic_and_seeded_per_example(demo):
    a, b = make_module(demo, eval_batch_size=8), make_module(demo, eval_batch_size=5)
    a.setup("fit"), b.setup("fit")
    first, again, other = list(a.val_dataloader()), list(a.val_dataloader()), list(b.val_dataloader())
    assert [x["objective"] for x in first][::3] == ["mlm", "mrfr", "mrckl", "itm"]
    for x, y in zip(first, again):
        assert x["ids"] == y["ids"] and torch.equal(x["input_ids"], y["input_ids"])
    labels = {}
    for batch in first:
        if batch["objective"] == "mlm":
            labels.update({i: batch["txt_labels"][r, :batch["txt_lens"][r]] for r, i in enumerate(batch["ids"])})
    for batch in other:  # the same example, in another batch, is masked the same way
        if batch["objective"] == "mlm":
            for r, i in enumerate(batch["ids"]):
                assert torch.equal(batch["txt_labels"][r, :batch["txt_lens"][r]], labels[i])
    capped = make_module(demo, val_examples=5)
    capped.setup("validate")
    assert len(capped.datasets["val"]) == 5


# ----------------------------------------------------------------------------------- caption formats

@pytest.fixture()
def small_store(tmp_path):
    """Images 1..4 under the keys the format tests use."""
    rng = np.random.default_rng(0)
    path = tmp_path / "store.h5"
    with RegionFeatureWriter(path, 16) as w:
        for key in ("1", "2", "3", "4", "COCO_train2014_000000000001", "COCO_train2014_000000000002", "vg_7"):
            w.add(key, rng.standard_normal((3, 16)), [[0, 0, 5, 5], [1, 1, 8, 8], [2, 2, 9, 6]], 10, 10)
    return path


def write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


COCO = {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg"},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg"}],
        "annotations": [{"image_id": 1, "id": 10, "caption": "A red cube."},
                        {"image_id": 2, "id": 11, "caption": "A blue sphere.", "negatives": ["A green sphere."]},
                        {"image_id": 1, "id": 12, "caption": "Two cubes."}]}
KARPATHY = {"images": [
    {"filename": "COCO_train2014_000000000001.jpg", "imgid": 0, "cocoid": 1, "split": "train",
     "sentences": [{"raw": "A red cube.", "sentid": 0}, {"raw": "A cube.", "sentid": 1}]},
    {"filename": "COCO_train2014_000000000002.jpg", "imgid": 1, "cocoid": 2, "split": "restval",
     "sentences": [{"raw": "A sphere.", "sentid": 2}]},
    {"filename": "COCO_val2014_000000000003.jpg", "imgid": 2, "cocoid": 3, "split": "val",
     "sentences": [{"raw": "A cone.", "sentid": 3}]}]}


def test_each_caption_format_is_read(tmp_path, small_store, demo):
    coco = write(tmp_path / "captions_train2014.json", COCO)
    karpathy = write(tmp_path / "dataset_coco.json", KARPATHY)
    lines = [{"image_id": "vg_7", "caption": "A cone.", "negatives": ["A cube.", "A sphere."], "id": "r1"},
             {"image_id": 4, "caption": "A cube."}]
    jsonl = write(tmp_path / "vg.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    common = dict(features=str(small_store), tokenizer=demo["tokenizer"], img_dim=16, batch_size=2,
                  objectives={"mlm": 1, "itm": 1, "mrfr": 1})  # the store has no soft labels
    module = PretrainDataModule(train_files=[coco], val_files=[{"path": jsonl, "image_key": "{image_id}"}], **common)
    module.setup("fit")
    train = module.datasets["train"]
    assert train.ids == ["10", "11", "12"] and [train.image_key(i) for i in range(3)] == ["1", "2", "1"]
    assert train.num_negatives(1) == 1 and train.num_negatives(0) == 0
    tok = module.tokenizer
    assert tok.decode(train.negative(1, 0)[1:-1]) == tok.decode(tok("A green sphere.", add_special_tokens=False)["input_ids"])
    val = module.datasets["val"]
    assert val.ids == ["r1", "line2"] and val.images == ["vg_7", "4"] and val.num_negatives(0) == 2
    stems = PretrainDataModule(train_files=[coco], image_key="{stem}", **common)
    stems.setup("fit")
    assert stems.datasets["train"].images == ["COCO_train2014_000000000001", "COCO_train2014_000000000002"]
    # Karpathy: splits pick images; val_split reads the train files again; {image_id} is the cocoid
    kp = PretrainDataModule(train_files=[karpathy], train_split=["train", "restval"], val_split="val",
                            **{**common, "objectives": {"mlm": 1}})
    kp.setup("fit")
    assert kp.datasets["train"].ids == ["0", "1", "2"] and kp.datasets["train"].images == ["1", "2"]
    assert kp.datasets["val"].ids == ["3"] and kp.datasets["val"].images == ["3"]
    # the module's splits pick the Karpathy file's images; other formats give all their captions
    mixed = PretrainDataModule(train_files=[karpathy, jsonl], train_split=["train", "restval"], val_split="val",
                               **{**common, "objectives": {"mlm": 1}})
    mixed.setup("fit")
    assert mixed.datasets["train"].ids == ["dataset_coco:0", "dataset_coco:1", "dataset_coco:2", "vg:r1", "vg:line2"]
    assert mixed.datasets["val"].ids == ["dataset_coco:3"]  # not the VG captions again
    # several files in a split: ids carry the file's stem
    both = PretrainDataModule(train_files=[coco, jsonl], **common)
    both.setup("fit")
    assert both.datasets["train"].ids[0] == "captions_train2014:10" and both.datasets["train"].ids[-1] == "vg:line2"
    assert "vg:r1" in both.datasets["train"].ids


@pytest.mark.parametrize("fmt, content, message", [
    ("coco", {**COCO, "annotations": [COCO["annotations"][0], {"image_id": 1, "id": 7}]},
     r"captions\.json, annotations\[1\] \(id 7\): field 'caption' is missing; expected a non-empty string"),
    ("coco", {**COCO, "annotations": [{"image_id": 9, "id": 7, "caption": "x"}]},
     r"annotations\[0\] \(id 7\): image_id 9 is not one of the file's images"),
    ("karpathy", {"images": [{**KARPATHY["images"][0], "sentences": [{"raw": "A cube."}]}]},
     r"captions\.json, images\[0\] \(filename 'COCO_train2014_000000000001\.jpg'\), sentences\[0\]: field 'sentid' "
     r"is missing; expected an integer or a non-empty string"),
    ("jsonl", '{"image_id": 1, "caption": "ok"}\n{"image_id": 2, "caption": "x", "negatives": "y"}\n',
     r"captions\.json, line 2: negatives is 'y'; expected a list of non-empty caption strings"),
    ("jsonl", '{"image_id": 1, "caption": "ok"}\n{"image_id": 2}\n',
     r"captions\.json, line 2: field 'caption' is missing"),
    ("jsonl", '{"image_id": 1, "caption": "ok", "id": 5}\n{"image_id": 2, "caption": "x", "id": 5}\n',
     r"line 2 \(id 5\): example id '5' is also used by .*line 1"),
    ("auto", {"data": []}, r"captions\.json: cannot tell the caption format: an object with keys \['data'\]"),
])
def test_a_malformed_record_is_named(tmp_path, small_store, demo, fmt, content, message):
    path = write(tmp_path / "captions.json", content)
    module = PretrainDataModule(train_files=[{"path": path, "format": fmt}], features=str(small_store),
                                tokenizer=demo["tokenizer"], img_dim=16, objectives={"mlm": 1})
    with pytest.raises(ValueError, match=message):
        module.setup("fit")


def test_option_and_store_errors_name_what_is_wrong(tmp_path, small_store, demo):
    coco = write(tmp_path / "captions.json", COCO)
    karpathy = write(tmp_path / "dataset_coco.json", KARPATHY)
    common = dict(features=str(small_store), tokenizer=demo["tokenizer"], img_dim=16, objectives={"mlm": 1})
    with pytest.raises(ValueError, match=r"image_key '\{cocoid\}' uses \{cocoid\}, which coco captions do not have"):
        PretrainDataModule(train_files=[coco], image_key="{cocoid}", **common).setup("fit")
    with pytest.raises(ValueError, match=r"no image has split 'test'; the file's splits are \['restval', 'train', 'val'\]"):
        PretrainDataModule(train_files=[karpathy], train_split="test", **common).setup("fit")
    with pytest.raises(ValueError, match="splits select images of Karpathy files and this is read as coco"):
        PretrainDataModule(train_files=[{"path": coco, "split": "train"}], **common).setup("fit")
    with pytest.raises(ValueError, match=r"no val captions: val_split picks images of Karpathy files"):
        PretrainDataModule(train_files=[coco], val_split="val", **common).setup("fit")
    with pytest.raises(MissingImageError, match=r"store\.h5: 1 images used by .*c2\.json \(train\) are not in the "
                                                r"region-feature store: '9' \(.*annotations\[0\] \(id 1\)\)"):
        bad = write(tmp_path / "c2.json", {"annotations": [{"image_id": 9, "id": 1, "caption": "A cube."}]})
        PretrainDataModule(train_files=[bad], **common).setup("fit")
    with pytest.raises(ValueError, match=r"objectives mrckl learn from the regions' soft labels, but the region-feature "
                                         r"store .*store\.h5 has none"):
        PretrainDataModule(train_files=[coco], **{**common, "objectives": MIX}).setup("fit")
    assert PretrainDataModule(train_files=[coco], **common).labels is None
    with pytest.raises(ValueError, match="unknown objective 'mim'"):
        PretrainDataModule(train_files=[coco], **{**common, "objectives": {"mim": 1}})
    with pytest.raises(ValueError, match="every mix ratio is 0"):
        PretrainDataModule(train_files=[coco], **{**common, "objectives": {"mlm": 0}})
    with pytest.raises(ValueError, match=r"train_files\[0\]: format 'tsv', expected one of"):
        PretrainDataModule(train_files=[{"path": coco, "format": "tsv"}], **common)
    with pytest.raises(ValueError, match=r"train_files\[0\] image_key '\{img\}': unknown field \{img\}"):
        PretrainDataModule(train_files=[{"path": coco, "image_key": "{img}"}], **common)
    one = write(tmp_path / "one.json", {**COCO, "annotations": COCO["annotations"][:1]})
    with pytest.raises(ValueError, match="image-text matching pairs captions with other images, but the split has 1 image"):
        PretrainDataModule(train_files=[one], **{**common, "objectives": {"itm": 1}}).setup("fit")


def test_labels_are_the_stores_region_classes(dm, demo):
    assert dm.labels == RegionFeatureStore(demo["pretrain_features"]).soft_label_names
    assert dm.labels[0] == "background" and dm.labels[1] == "small red metal cube" and len(dm.labels) == 49
    assert dm.tokenizer_size == 400 and dm.special_ids["mask"] == dm.tokenizer.mask_token_id


def test_text_only_batches_carry_no_image(demo):
    module = make_module(demo, text_only=True, features=None, objectives={"mlm": 1})
    module.setup("fit")
    assert module.labels is None
    b = next(iter(module.train_stream(max_steps=1)))
    assert b["img_feat"] is None and b["img_pos_feat"] is None and b["gather_index"] is None
    assert b["num_bbs"] == [0] * 8 and b["attn_masks"].shape == b["input_ids"].shape
    assert b["attn_masks"].sum(1).tolist() == b["txt_lens"] and (b["txt_labels"] != IGNORE).any(1).all()
    with pytest.raises(ValueError, match="only mlm can be trained; objectives .* has itm"):
        make_module(demo, text_only=True, objectives={"mlm": 1, "itm": 1})
    with pytest.raises(ValueError, match="give exactly one of features .* and images .*got features=None, images=None"):
        make_module(demo, features=None)


# ------------------------------------------------------------------------------------ demo corpus

def records(path):
    return [json.loads(line) for line in open(path)]


ATTRIBUTE_WORD = {v: a for a, vs in attribute_values(WorldConfig(num_colors=5, num_shapes=4)).items() for v in vs}


def attribute_of(word: str):
    word = word.rstrip(".,")
    return ATTRIBUTE_WORD.get(word) or (ATTRIBUTE_WORD.get(word[:-1]) if word.endswith("s") else None)


def one_attribute_word_apart(caption: str, negative: str) -> bool:
    a, b = caption.split(), negative.split()
    diff = [(x, y) for x, y in zip(a, b) if x != y]
    return len(a) == len(b) and len(diff) == 1 and attribute_of(diff[0][0]) is not None and \
        attribute_of(diff[0][0]) == attribute_of(diff[0][1])


def test_the_demo_writes_the_pretraining_corpus_with_soft_labels(demo):
    train, val = records(demo["pretrain_train"]), records(demo["pretrain_val"])
    assert len(train) == 160 and len(val) == 24
    assert all(set(r) == {"id", "image_id", "caption", "negatives"} and 1 <= len(r["negatives"]) <= 2 for r in train)
    assert all(one_attribute_word_apart(r["caption"], n) for r in train + val for n in r["negatives"])
    store = RegionFeatureStore(demo["pretrain_features"])
    assert set(store.ids) == {r["image_id"] for r in train + val} and store.soft_label_dim == 49
    assert store.soft_label_names == class_names(WorldConfig(num_colors=4, num_shapes=3))
    manifest = json.loads(Path(demo["manifest"]).read_text())
    entry = manifest["tasks"]["pretrain"]
    assert entry["files"] == {"train": "pretrain/captions_train.jsonl", "val": "pretrain/captions_val.jsonl",
                              "features": "pretrain/features.h5"}
    assert entry["images"] == 184 and entry["soft_label_dim"] == 49 and entry["caption_style"] == "dense"
    assert 0.75 < entry["splits"]["train"]["detector_accuracy"] < 0.97  # mostly right, not always
    # never a task image: other keys, other feature rows
    task = RegionFeatureStore(demo["features"])
    assert not set(task.ids) & set(store.ids)
    with h5py.File(demo["features"]) as f, h5py.File(demo["pretrain_features"]) as g:
        task_rows = {row.tobytes() for row in f["features"][:]}
        assert not any(row.tobytes() in task_rows for row in g["features"][:])
    tok = PretrainDataModule(train_files=[demo["pretrain_train"]], features=demo["pretrain_features"],
                             tokenizer=demo["tokenizer"], img_dim=16).tokenizer
    texts = [t for r in train for t in (r["caption"], *r["negatives"])]
    assert all(tok.unk_token_id not in row for row in tok(texts, add_special_tokens=False)["input_ids"])


def test_soft_labels_peak_at_the_true_class_and_confuse_near_classes(demo):
    """The demo detector: clutter is background, an object mostly its class; wrong arg-maxes share 3
    of the 4 attributes with the right one."""
    from data_modules.demo.pretrain import class_attributes, detector_soft_labels
    from data_modules.demo.world import make_scene

    world = WorldConfig()
    rng = np.random.default_rng(0)
    right = near = far = background = clutter = 0
    attrs = class_attributes(world)
    for k in range(300):
        scene = make_scene(rng, f"s{k}", world=world)
        source = np.concatenate([np.arange(len(scene.objects)), [-1] * len(scene.clutter)])
        soft = detector_soft_labels(scene, source, world, rng)
        assert soft.shape == (len(source), 49) and np.allclose(soft.sum(1), 1, atol=1e-5) and (soft >= 0).all()
        for s, i in zip(soft, source):
            top = int(s.argmax())
            if i < 0:
                clutter += 1
                background += top == 0
                continue
            truth = class_index(scene.objects[i], world)
            if top == truth:
                right += 1
            elif top > 0 and (attrs[top - 1] == attrs[truth - 1]).sum() == 3:
                near += 1
            else:
                far += 1
    objects = right + near + far
    assert 0.8 < right / objects < 0.95 and far / objects < 0.01 and background / clutter > 0.99


def test_the_corpus_is_deterministic_and_its_options(tmp_path):
    kw = dict(feat_dim=8, n_train=6, n_dev=2, n_test=2, tasks=("pretrain",))
    a, b = generate_demo(tmp_path / "a", seed=2, **kw), generate_demo(tmp_path / "b", seed=2, **kw)
    for name in ("pretrain_train", "pretrain_val", "pretrain_features", "manifest"):
        assert filecmp.cmp(a[name], b[name], shallow=False), name
    assert len(records(a["pretrain_train"])) == 6 and len(records(a["pretrain_val"])) == 2  # n_train / n_dev
    c = generate_demo(tmp_path / "c", seed=3, **kw)
    assert records(c["pretrain_train"]) != records(a["pretrain_train"])
    counting = generate_demo(tmp_path / "d", seed=2, caption_style="counting", pretrain_scenes=60, pretrain_val=3, **kw)
    recs = records(counting["pretrain_train"])
    assert len(recs) == 60 and json.loads(Path(counting["manifest"]).read_text())["tasks"]["pretrain"]["caption_style"] == "counting"
    text = " ".join(r["caption"] for r in recs)
    assert re.search(r"\b(two|three|four|five|six) \w+", text) and re.search(r"\b(left|right) of\b", text)
    assert all(one_attribute_word_apart(r["caption"], n) for r in recs for n in r["negatives"])
    vocab = (Path(counting["tokenizer"]) / "vocab.txt").read_text().split()
    assert {"left", "right", "of", "two"} <= set(vocab)
    none = generate_demo(tmp_path / "e", pretrain_scenes=0, **kw)
    assert "pretrain_train" not in none and not (tmp_path / "e" / "pretrain").exists()
    with pytest.raises(ValueError, match="caption_style 'poetic': expected one of dense, counting"):
        generate_demo(tmp_path / "f", caption_style="poetic", **kw)


def scene_of(*objects):
    objs = tuple(SceneObject(color=c, shape=s, size=z, material=m, box=(x, 10, x + 20, 30))
                 for x, (z, c, m, s) in zip(range(0, 400, 60), objects))
    return Scene("t", 480, 360, objs)


def test_captions_are_true_and_hard_negatives_false():
    scene = scene_of(("small", "red", "metal", "cube"), ("large", "red", "rubber", "cube"),
                     ("large", "blue", "metal", "sphere"))
    world = WorldConfig()
    rng = np.random.default_rng(0)
    dense = dense_clauses(scene, rng)
    text = caption_text(dense)
    assert caption_holds(dense, scene) and text.count(", ") + text.count(" and ") == 2 and text.endswith(".")
    assert text.startswith("a ") and all(w in text for w in ("small red metal cube", "large blue metal sphere"))
    two = Clause("count", (ObjectSpec(color="red", shape="cube"),), 2)
    assert two.text() == "two red cubes" and two.holds(scene)
    assert Clause("count", (ObjectSpec(color="green"),), 0).text() == "no green objects"
    left = Clause("relation", (ObjectSpec(shape="cube"), ObjectSpec(color="blue")), side="left")
    assert left.text() == "a cube left of a blue object" and left.holds(scene)
    assert not Clause("relation", (ObjectSpec(shape="cube"), ObjectSpec(color="blue")), side="right").holds(scene)
    for _ in range(50):
        clauses = counting_clauses(scene, rng, world)
        assert caption_holds(clauses, scene)
        for neg in hard_negatives(clauses, scene, rng, world, 2):
            assert one_attribute_word_apart(caption_text(clauses), neg)
    # only false variants are negatives: "no yellow objects" is as true as "no green objects"
    negs = hard_negatives([Clause("count", (ObjectSpec(color="green"),), 0)], scene, rng, world, 5)
    assert sorted(negs) == ["no blue objects.", "no red objects."]
    negs = hard_negatives([Clause("count", (ObjectSpec(color="red", shape="cube"),), 2)], scene, rng, world, 10)
    assert "two red cubes." not in negs and "two blue cubes." in negs and "two red spheres." in negs
    assert SIZES == ("small", "large") and MATERIALS == ("metal", "rubber") and ATTRIBUTES[0] == "size"


def test_validation_batches_are_split_across_ranks_by_lightnings_sampler(dm):
    """Under DDP Lightning gives the val loader a DistributedSampler; with batch_size=None each rank
    then gets whole batches (every batch one objective), together all of them."""
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    loader = dm.val_dataloader()
    everything = [(b["objective"], tuple(b["ids"])) for b in loader]
    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        shards.append([(b["objective"], tuple(b["ids"])) for b in _update_dataloader(loader, sampler)])
    assert set(shards[0]) | set(shards[1]) == set(everything) and len(shards[0]) == len(shards[1])
    assert all(len(ids) == len(set(ids)) for _, ids in shards[0])


def test_lightning_vl_data_links_and_checks_the_caption_files(demo, tmp_path, monkeypatch):
    """``lightning-vl data --task pretrain``: file entries given as {path: ...} are linked and read too."""
    import shutil

    import yaml

    from data_modules.prepare import prepare_task

    src = tmp_path / "downloads"
    src.mkdir()
    for name in ("pretrain_train", "pretrain_val"):
        shutil.copy(demo[name], src)
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"model": {"task": "pretrain"}, "data": {
        "class_path": "data_modules.pretrain.PretrainDataModule",
        "init_args": {"train_files": [{"path": "data/pretrain/captions_train.jsonl", "format": "jsonl"}],
                      "val_files": ["data/pretrain/captions_val.jsonl"], "features": demo["pretrain_features"],
                      "tokenizer": demo["tokenizer"], "img_dim": 16}}}))
    monkeypatch.chdir(tmp_path)
    report = prepare_task("pretrain", src, config)
    assert sorted(report["linked"]) == ["data/pretrain/captions_train.jsonl", "data/pretrain/captions_val.jsonl"]
    assert report["checks"] == {"train": {"examples": 160}, "val": {"examples": 24}}


# --------------------------------------------------------------------------------- mix: row

ROW_MIX = {"mlm": 2, "itm": 2, "mrfr": 1, "mrckl": 1, "summary": 1, "bow": 1}


def small_pretrain_model(dm, **head_options):
    """A seeded small pre-training model for the ``demo`` fixture's vocabulary and features."""
    from lightning_vl.training.module import VLModule
    from lightning_vl.model.uniter import UniterConfig

    cfg = UniterConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, img_dim=16, max_position_embeddings=64)
    torch.manual_seed(0)
    return VLModule(task="pretrain", uniter=cfg, labels=dm.labels, head="uniter+summaries", head_options=head_options)


def test_row_mix_batches_join_every_objective_and_score_as_the_separate_batches(demo):
    """``mix: row``: each micro-batch holds every objective's rows (split by ratio), and the joint
    forward pass gives the sum of the losses of the same rows run as single-objective batches."""
    from data_modules.pretraining.batches import row_counts

    dm = make_module(demo, objectives=ROW_MIX, mix="row", batch_size=16, itm_hard_neg_prob=0.5)
    dm.setup("fit")
    stream = dm.train_stream(max_steps=4)
    assert stream.row_mix == row_counts(16, [ROW_MIX[o] for o in stream.schedule.names]) and sum(stream.row_mix) == 16
    joint_batches = list(stream)
    assert len(joint_batches) == 4 and all(b["objective"] == "joint" for b in joint_batches)
    first = joint_batches[0]
    parts = stream.joint_parts(0)
    assert set(first["parts"]) == set(ROW_MIX)
    assert first["ids"] == [i for p in parts.values() for i in p["ids"]]
    assert joint_batches[1]["ids"] != first["ids"]  # the streams move on

    model = small_pretrain_model(dm).eval()
    with torch.no_grad():
        joint = model.training_loss(first)
        separate = [model.training_loss(p) for p in parts.values()]
    assert torch.isfinite(joint)
    assert torch.allclose(joint, sum(separate), atol=1e-4, rtol=1e-4), (joint, separate)


def test_mlm_words_limit_what_mlm_selects(demo):
    words = list(SIZES) + list(MATERIALS)
    dm = make_module(demo, objectives={"mlm": 1}, mlm_words=words, mlm_prob=0.5)
    dm.setup("fit")
    allowed = set(dm.tokenizer.convert_tokens_to_ids(words))
    picked = []
    for batch in batches(dm, "mlm", 6):
        labels = batch["txt_labels"]
        picked += labels[labels != IGNORE].tolist()
    assert picked and set(picked) <= allowed
    assert len(set(picked)) > 2  # several of the words, not one


def test_row_mix_and_mlm_words_errors(demo):
    with pytest.raises(ValueError, match="mix 'sometimes'"):
        make_module(demo, mix="sometimes")
    with pytest.raises(ValueError, match="text_only"):
        make_module(demo, mix="row", text_only=True, objectives={"mlm": 1})
    with pytest.raises(ValueError, match="mlm_words must be a non-empty list"):
        make_module(demo, mlm_words="red")
    dm = make_module(demo, mlm_words=["red", "zyzzyva"])
    with pytest.raises(ValueError, match=r"\['zyzzyva'\] are not word-pieces of the tokenizer"):
        dm.setup("fit")
        dm.batch_maker("train")


def test_every_row_objectives_train_on_every_row_of_the_joint_batch(demo):
    """``every_row: [bow, summary]``: no rows of their own; their targets are those of every row's
    own text (before masking) and image, and the joint loss is the own parts' losses plus bow and
    summary on all rows' pooled outputs."""
    from lightning_vl.tasks.pretraining import objective_loss

    dm = make_module(demo, objectives=ROW_MIX, mix="row", batch_size=16, every_row=["bow", "summary"])
    dm.setup("fit")
    stream = dm.train_stream(max_steps=2)
    names = stream.schedule.names
    assert [c for o, c in zip(names, stream.row_mix) if o in ("bow", "summary")] == [0, 0]
    assert sum(stream.row_mix) == 16
    batch = next(iter(stream))
    parts = stream.joint_parts(0)
    assert set(parts) == {"mlm", "itm", "mrfr", "mrckl"}
    assert batch["parts"]["bow"]["rows"].tolist() == list(range(16))
    # bag of words of the text each row shows, MLM rows before masking
    ids = batch["input_ids"].clone()
    mlm_rows = batch["parts"]["mlm"]["rows"]
    labels = batch["parts"]["mlm"]["txt_labels"]
    ids[mlm_rows] = torch.where(labels != IGNORE, labels, ids[mlm_rows])
    ordinary = set(dm.ordinary_token_ids.tolist())
    for r in range(16):
        expected = {int(t) for t in ids[r] if int(t) in ordinary}
        assert set(torch.nonzero(batch["parts"]["bow"]["bow_targets"][r]).flatten().tolist()) == expected
    assert batch["parts"]["summary"]["counts"].tolist() == [n for p in parts.values() for n in p["counts"].tolist()]

    model = small_pretrain_model(dm).eval()
    with torch.no_grad():
        joint = model.training_loss(batch)
        own, pooled = 0.0, []
        for p in parts.values():
            own = own + model.training_loss(p)
            seq = model.uniter(p["input_ids"], p["position_ids"], p["img_feat"], p["img_pos_feat"], p["attn_masks"],
                               p["gather_index"], img_masks=p.get("img_masks"))
            pooled.append(model.uniter.pooler(seq))
        pooled = torch.cat(pooled)
        bow = objective_loss({"objective": "bow", "logits": model.head.bow_output(pooled),
                              "targets": torch.cat([p["bow_targets"] for p in parts.values()])})
        summary = objective_loss({"objective": "summary", "logits": model.head.summary_output(pooled),
                                  "presence": torch.cat([p["presence"] for p in parts.values()]),
                                  "counts": torch.cat([p["counts"] for p in parts.values()]).clamp(max=8)})
    assert torch.allclose(joint, own + bow + summary, atol=1e-4, rtol=1e-4), (joint, own, bow, summary)
    with pytest.raises(ValueError, match="needs mix 'row'"):
        make_module(demo, objectives=ROW_MIX, every_row=["bow"])
    with pytest.raises(ValueError, match="every_row: 'mlm' must be one of bow, summary"):
        make_module(demo, objectives=ROW_MIX, mix="row", every_row=["mlm"])


def test_summary_over_the_words_of_class_names(demo):
    """``summary_targets: words``: an image's summary is which word-pieces of its regions' class
    names occur (a bag of attributes); the loss scores only word-pieces some class name has, and
    a head sized for the other targets is refused by name."""
    dm = make_module(demo, objectives={"summary": 1}, summary_targets="words")
    dm.setup("fit")
    words = dm.class_words()
    names = dm.labels
    tok = dm.tokenizer
    assert not words[0].any() and words.shape == (len(names), len(tok))
    (batch,) = batches(dm, "summary", 1)
    soft = [dm.store.get_soft_labels(dm.datasets["train"].image_key(i)) for i in range(8)]
    for r, s in enumerate(soft):
        top = s.argmax(dim=1)
        expected = {w for c in top[top != 0].tolist() for w in tok.convert_tokens_to_ids(tok.tokenize(names[c]))}
        assert set(torch.nonzero(batch["presence"][r]).flatten().tolist()) == expected
    assert batch["presence_mask"][0].sum() == len({w for row in words for w in np.nonzero(row)[0]})
    model = small_pretrain_model(dm, summary_targets="words")
    assert torch.isfinite(model.training_loss(batch))
    classes_head = small_pretrain_model(dm)
    with pytest.raises(ValueError, match="summary_targets must match"):
        classes_head.training_loss(batch)
    with pytest.raises(ValueError, match="summary_targets 'sometimes'"):
        make_module(demo, summary_targets="sometimes")
