"""The demo θ0's pre-training: corpus, batches (MLM / ITM rows), a run that learns, the saved file."""
import json

import numpy as np
import pytest
import torch

from data_modules.demo.pretraining import (ATTRIBUTES, change_one_attribute, dense_caption, make_corpus,
                                           position_features)
from data_modules.demo.world import FeatureRenderer, SceneObject, WorldConfig
from data_modules.tokenization import load_tokenizer
from lightning_vl.pretraining import IGNORE, DemoPretraining, PretrainingBatches, pretrain
from lightning_vl.uniter import UniterConfig

WORLD = WorldConfig()
TINY = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, type_vocab_size=2, img_dim=128)


def _obj(color="red", shape="cube", size="small", material="metal"):
    return SceneObject(color=color, shape=shape, size=size, material=material, box=(0, 0, 10, 10))


def test_dense_caption_names_every_attribute_in_order():
    objs = [_obj(), _obj("blue", "sphere", "large", "rubber")]
    assert dense_caption(objs) == "a small red metal cube and a large blue rubber sphere."
    assert dense_caption(objs[:1]) == "a small red metal cube."
    three = dense_caption([objs[0], objs[1], _obj("green")])
    assert three == "a small red metal cube, a large blue rubber sphere and a small green metal cube."


def test_change_one_attribute_changes_exactly_one():
    rng = np.random.default_rng(0)
    objs = [_obj(), _obj("blue", "sphere", "large", "rubber")]
    for _ in range(50):
        changed = change_one_attribute(objs, rng, WORLD)
        diffs = [(i, a) for i, (o, c) in enumerate(zip(objs, changed)) for a in ATTRIBUTES if getattr(o, a) != getattr(c, a)]
        assert len(diffs) == 1


def test_position_features_are_uniter_layout():
    pos = position_features(np.array([[10.0, 20.0, 60.0, 120.0]]), 100, 200)
    np.testing.assert_allclose(pos[0], [0.1, 0.1, 0.6, 0.6, 0.5, 0.5, 0.25], rtol=1e-6)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(64, seed=5, world=WORLD, renderer=FeatureRenderer(128, 5, noise=WORLD.noise))


@pytest.fixture(scope="module")
def tokenizer(demo_all):
    return load_tokenizer(demo_all / "tokenizer")


def test_corpus_targets_match_scenes(corpus):
    assert len(corpus) == 64
    for k in (0, 7, 63):
        scene = corpus.scenes[k]
        feat, pos = corpus.features[k]
        assert feat.shape == (len(scene.objects) + len(scene.clutter), 128) and pos.shape[1] == 7
        assert int(corpus.counts[k]) == len(scene.objects)
        present = {(a, getattr(o, a)) for o in scene.objects for a in ATTRIBUTES}
        assert {n for n, p in zip(corpus.attribute_names, corpus.presence[k].tolist()) if p} == present
    with pytest.raises(ValueError, match="at least 2"):
        make_corpus(1, seed=5, world=WORLD, renderer=FeatureRenderer(128, 5))


def test_batches_mask_attribute_words_in_mlm_rows_only(corpus, tokenizer):
    batches = PretrainingBatches(corpus, tokenizer, vocab_size=512, batch_size=16, steps=3, seed=1)
    a, b = list(batches), list(PretrainingBatches(corpus, tokenizer, vocab_size=512, batch_size=16, steps=3, seed=1))
    assert len(a) == 3 and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))  # seeded
    attribute_ids = set(tokenizer.convert_tokens_to_ids([v for _, v in corpus.attribute_names]))
    for batch in a:
        labels, ids = batch["mlm_labels"], batch["input_ids"]
        masked = labels != IGNORE
        assert masked[:8].any(dim=1).all() and not masked[8:].any()  # >= 1 per MLM row, none in ITM rows
        assert (ids[masked] == tokenizer.mask_token_id).all()
        assert set(labels[masked].tolist()) <= attribute_ids
        assert (batch["itm_labels"][:8] == IGNORE).all() and set(batch["itm_labels"][8:].tolist()) <= {0, 1}
        # the bag of words holds the unmasked text, without [CLS]/[SEP]/[PAD]
        restored = torch.where(masked, labels, ids)
        for row in range(16):
            words = set(restored[row].tolist()) - {0, tokenizer.cls_token_id, tokenizer.sep_token_id}
            assert set(batch["bow"][row].nonzero().flatten().tolist()) == words


def test_mismatched_captions_are_false_of_their_image(corpus, tokenizer):
    batches = PretrainingBatches(corpus, tokenizer, vocab_size=512, batch_size=64, steps=1, seed=2)
    batch = next(iter(batches))
    captions = {k: dense_caption(s.objects) for k, s in enumerate(corpus.scenes)}
    negatives = (batch["itm_labels"] == 0).nonzero().flatten().tolist()
    positives = (batch["itm_labels"] == 1).nonzero().flatten().tolist()
    assert negatives and positives
    for row in positives + negatives:
        text = tokenizer.decode(batch["input_ids"][row], skip_special_tokens=True)
        # the row's image: the corpus scene whose features were used
        k = next(k for k, (f, _) in enumerate(corpus.features)
                 if f.shape[0] == int(batch["num_bbs"][row]) and torch.equal(f, batch["img_feat"][row, : f.shape[0]]))
        words = sorted(text.replace(",", " ").replace(".", " ").split())
        truth = sorted(captions[k].replace(",", " ").replace(".", " ").split())
        assert (words == truth) == (row in positives), (row, text, captions[k])


def test_a_short_pretraining_learns_and_saves_uniter_layout(corpus, tokenizer):
    torch.manual_seed(0)
    model = DemoPretraining(UniterConfig(**TINY), num_attributes=len(corpus.attribute_names),
                            max_count=WORLD.max_objects, lr=3e-3, warmup_steps=5)
    batches = PretrainingBatches(corpus, tokenizer, vocab_size=512, batch_size=32, steps=60, seed=0)
    first = next(iter(batches))
    with torch.no_grad():
        model.eval()
        before = float(sum(model.losses(first)[0].values()))
    final = pretrain(model, batches, progress=False)
    with torch.no_grad():
        model.eval()
        after = float(sum(model.losses(first)[0].values()))
    assert after < 0.6 * before, (before, after, final)
    state = model.uniter_state_dict()
    assert {k for k in state if not k.startswith("uniter.")} == {"itm_output.weight", "itm_output.bias"}
    assert state["itm_output.weight"].shape == (2, 32)


def test_demo_model_is_pretrained_and_retrieval_starts_from_its_itm_head(demo_all):
    from lightning_vl.module import VLModule

    record = json.loads((demo_all / "pretraining.json").read_text())
    assert record["steps"] == 4 and set(record["final"]) >= {"mlm_loss", "itm_loss", "bow_loss", "image_loss"}
    state = torch.load(demo_all / "uniter-tiny.pt", weights_only=True)
    model = VLModule(task="flickr30k-ir", uniter=UniterConfig(vocab_size=512, hidden_size=64, num_hidden_layers=4,
                                                               num_attention_heads=4, intermediate_size=256,
                                                               max_position_embeddings=128, img_dim=128),
                     init=str(demo_all / "uniter-tiny.pt"))
    assert torch.equal(model.head.rank_output.weight, state["itm_output.weight"][1:2])
    assert torch.equal(model.uniter.encoder.layer[0].attention.self.query.weight,
                       state["uniter.encoder.layer.0.attention.self.query.weight"])
