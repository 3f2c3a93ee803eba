"""The demo world: deterministic, balanced, and not answerable from the text alone."""
import filecmp
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_modules.demo import generate_demo, main
from data_modules.demo.nlvr2 import DEFAULT_TEMPLATES, TEMPLATES, make_split
from data_modules.demo.vocab import build_vocab, pad_vocab
from data_modules.tokenization import encode_uniter_batch, load_tokenizer


def _root(demo_world) -> Path:
    """The demo folder, whether the fixture gives ``generate_demo``'s dict or the folder itself."""
    return Path(demo_world["root"] if isinstance(demo_world, dict) else demo_world)


def records(path):
    return [json.loads(line) for line in open(path)]


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    a = generate_demo(tmp_path / "a", seed=5, feat_dim=16, n_train=40, n_dev=8, n_test=8)
    b = generate_demo(tmp_path / "b", seed=5, feat_dim=16, n_train=40, n_dev=8, n_test=8)
    c = generate_demo(tmp_path / "c", seed=6, feat_dim=16, n_train=40, n_dev=8, n_test=8)
    assert open(a["nlvr2_train"]).read() == open(b["nlvr2_train"]).read() != open(c["nlvr2_train"]).read()
    with h5py.File(a["features"]) as fa, h5py.File(b["features"]) as fb, h5py.File(c["features"]) as fc:
        assert np.array_equal(fa["features"][:], fb["features"][:])
        assert fa["features"].shape != fc["features"].shape or not np.array_equal(fa["features"][:], fc["features"][:])


def test_labels_are_balanced_per_template_and_schema_is_nlvr2(demo_world):
    recs = records(_root(demo_world) / "nlvr2/train.json")
    per_template = defaultdict(list)
    for r in recs:
        assert set(r) >= {"identifier", "sentence", "label", "left_url", "right_url", "synset", "query",
                          "writer", "validation", "directory"}
        assert r["label"] in ("True", "False") and r["identifier"].count("-") == 3
        per_template[r["synset"]].append(r["label"] == "True")
    assert set(per_template) == set(DEFAULT_TEMPLATES) == {"both"}  # the harder ones behind --nlvr2-templates
    for labels in per_template.values():
        assert abs(np.mean(labels) - 0.5) <= 0.05
    assert "extra_validations" in records(_root(demo_world) / "nlvr2/dev.json")[0]


def test_every_template_can_be_asked_for_and_each_is_balanced_and_true_of_its_images():
    records, scenes, stats = make_split("train", 400, np.random.default_rng(3), templates=tuple(TEMPLATES))
    assert set(stats) == {"count", "compare", "both", "spatial"} == {r["synset"] for r in records}
    for template, counts in stats.items():
        assert counts["true"] == counts["examples"] // 2 and counts["examples"] > 60, (template, counts)
    assert len(scenes) == 2 * len(records)


def test_text_alone_does_not_give_the_label(demo_world):
    """Every wording is drawn before its label, so per word the True rate stays near 50%."""
    recs = records(_root(demo_world) / "nlvr2/train.json")
    by_word = defaultdict(list)
    for r in recs:
        for w in set(r["sentence"].rstrip(".").split()):
            by_word[w].append(r["label"] == "True")
    frequent = {w: np.mean(v) for w, v in by_word.items() if len(v) >= 40}
    assert frequent and all(0.3 <= rate <= 0.7 for rate in frequent.values()), frequent


def test_manifest_and_model_checkpoint(demo_world):
    manifest = json.loads((_root(demo_world) / "manifest.json").read_text())
    assert manifest["tasks"]["nlvr2"]["splits"]["train"]["examples"] == 240
    assert manifest["vocab_size"] == len((_root(demo_world) / "tokenizer/vocab.txt").read_text().split())
    assert (_root(demo_world) / ".complete").exists()
    model = _root(demo_world) / "uniter-tiny.pt"
    if model.exists():  # written by `lightning-vl demo`, not by generate_demo itself
        import torch

        sd = torch.load(model, weights_only=True)
        assert all(k.startswith("uniter.") for k in sd)


def test_same_seed_gives_byte_identical_files(tmp_path):
    sizes = dict(feat_dim=16, n_train=24, n_dev=8, n_test=8)
    a = generate_demo(tmp_path / "a", seed=2, **sizes)
    b = generate_demo(tmp_path / "b", seed=2, **sizes)
    for name in ("nlvr2_train", "nlvr2_dev", "nlvr2_test", "features", "manifest"):
        assert filecmp.cmp(a[name], b[name], shallow=False), name
    assert filecmp.cmp(Path(a["tokenizer"]) / "vocab.txt", Path(b["tokenizer"]) / "vocab.txt", shallow=False)
    assert (tmp_path / "a" / ".complete").exists() and json.loads((tmp_path / "a" / ".complete").read_text())


def test_labels_are_exactly_balanced_per_template_and_split(demo_world):
    manifest = json.loads((_root(demo_world) / "manifest.json").read_text())
    for split, info in manifest["tasks"]["nlvr2"]["splits"].items():
        assert set(info["templates"]) == set(DEFAULT_TEMPLATES)
        for template, counts in info["templates"].items():
            assert counts["true"] == counts["examples"] // 2, (split, template, counts)
        shortfall = info["examples"] / 2 - info["true_rate"] * info["examples"]  # odd template counts round down
        assert -1e-9 <= shortfall <= len(DEFAULT_TEMPLATES) / 2 and info["images"] == 2 * info["examples"]


def test_every_image_of_every_statement_is_in_the_store(demo_world):
    root = _root(demo_world)
    with h5py.File(root / "features.h5") as f:
        stored = set(f["img_ids"].asstr()[:])
        feat_dim = int(f.attrs["feat_dim"])
        assert f["features"].shape[1] == feat_dim == json.loads((root / "manifest.json").read_text())["feat_dim"]
    for split in ("train", "dev", "test"):
        for r in records(root / f"nlvr2/{split}.json"):
            stem = r["identifier"].rsplit("-", 1)[0]
            assert {f"{stem}-img0", f"{stem}-img1"} <= stored and r["identifier"].startswith(split + "-")


def test_vocabulary_is_real_wordpiece_and_covers_the_text(demo_world):
    root = _root(demo_world)
    vocab = (root / "tokenizer/vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(vocab)) == len(vocab)
    assert "cube" in vocab and "cubes" not in vocab and "##s" in vocab
    tok = load_tokenizer(root / "tokenizer")
    assert tok.convert_ids_to_tokens(tok("cubes spheres", add_special_tokens=False)["input_ids"]) == \
        ["cube", "##s", "sphere", "##s"]
    sentences = [r["sentence"] for r in records(root / "nlvr2/train.json")]
    ids = encode_uniter_batch(tok, sentences, 60)
    assert all(tok.unk_token_id not in row for row in ids)
    assert max(map(len, ids)) <= 40  # the demo config's max_txt_len (40) truncates nothing


def _text_only_accuracy(train, test):
    """A bag-of-words naive Bayes trained on the sentences alone."""
    words = lambda text: set(re.findall(r"\w+", text.lower()))  # noqa: E731
    counts = {True: Counter(), False: Counter()}
    prior = Counter()
    for r in train:
        label = r["label"] == "True"
        prior[label] += 1
        counts[label].update(words(r["sentence"]))
    vocab = set(counts[True]) | set(counts[False])

    def score(text, label):
        total = prior[label] + 2
        return math.log(prior[label]) + sum(
            math.log((counts[label][w] + 1) / total) if w in words(text) else math.log(1 - (counts[label][w] + 1) / total)
            for w in vocab)

    return np.mean([(score(r["sentence"], True) > score(r["sentence"], False)) == (r["label"] == "True") for r in test])


def test_text_alone_cannot_predict_the_label():
    rng = np.random.default_rng(11)
    train, _, _ = make_split("train", 1200, rng)
    dev, _, _ = make_split("dev", 600, rng)
    assert _text_only_accuracy(train, dev) < 0.58


def test_cli_main_and_unknown_task(tmp_path, capsys):
    paths = main(["--out", str(tmp_path / "w"), "--seed", "1", "--feat-dim", "8",
                  "--n-train", "8", "--n-dev", "4", "--n-test", "4"])
    assert (tmp_path / "w" / ".complete").exists() and Path(paths["features"]).exists()
    assert "demo world written" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'pretraining'.*not generated"):
        generate_demo(tmp_path / "v", tasks=("pretraining",))


def test_world_knobs_restrict_palette_objects_and_templates(tmp_path):
    from data_modules.demo.world import WorldConfig, make_scene

    world = WorldConfig(num_colors=2, num_shapes=1, min_objects=3, max_objects=3)
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, f"s{i}", world=world) for i in range(50)]
    assert {o.color for s in scenes for o in s.objects} == {"red", "green"}
    assert {o.shape for s in scenes for o in s.objects} == {"cube"} and {len(s.objects) for s in scenes} == {3}
    with pytest.raises(ValueError, match="num_colors must be in 1..5"):
        WorldConfig(num_colors=9)
    paths = generate_demo(tmp_path / "easy", feat_dim=8, n_train=20, n_dev=4, n_test=4, num_colors=2, num_shapes=2,
                          nlvr2_templates=("count", "both"))
    assert {r["synset"] for r in records(paths["nlvr2_train"])} == {"count", "both"}
    manifest = json.loads(Path(paths["manifest"]).read_text())
    assert manifest["world"]["num_colors"] == 2 and set(manifest["tasks"]["nlvr2"]["splits"]["train"]["templates"]) == {"count", "both"}
    default = generate_demo(tmp_path / "default", feat_dim=8, n_train=20, n_dev=4, n_test=4, num_colors=2, num_shapes=2,
                            tasks=("nlvr2",))
    every = generate_demo(tmp_path / "every", feat_dim=8, n_train=20, n_dev=4, n_test=4, num_colors=2, num_shapes=2,
                          tasks=("nlvr2",), nlvr2_templates=tuple(TEMPLATES))
    assert {r["synset"] for r in records(default["nlvr2_train"])} == {"both"}
    assert not filecmp.cmp(default["nlvr2_train"], every["nlvr2_train"], shallow=False)
    # the templates change the NLVR2 files only: the vocabulary (and so θ_0) is the same
    vocab = [(Path(w["tokenizer"]) / "vocab.txt").read_text() for w in (default, every)]
    assert vocab[0] == vocab[1] and "\nexactly\n" in vocab[0] and "\nfewer\n" in vocab[0]
    with pytest.raises(ValueError, match="subset of"):
        make_split("train", 4, rng, templates=("riddle",))
    flat = WorldConfig(num_colors=1, num_shapes=1, min_objects=2, max_objects=2)  # every count is 2
    with pytest.raises(ValueError, match="too small for the 'compare' template"):
        make_split("train", 4, rng, world=flat, templates=("compare",), max_tries=50)


def test_vocabulary_is_padded_to_the_model_vocab_size(tmp_path):
    """With vocab_size (the demo model's model.uniter.vocab_size) the tokenizer has exactly that
    many tokens: the real ones in the same ids, then [unused0], [unused1], ..."""
    sizes = dict(feat_dim=8, n_train=8, n_dev=4, n_test=4, tasks=("nlvr2",))
    plain = generate_demo(tmp_path / "plain", **sizes)
    padded = generate_demo(tmp_path / "padded", vocab_size=512, **sizes)
    real = (Path(plain["tokenizer"]) / "vocab.txt").read_text().splitlines()
    vocab = (Path(padded["tokenizer"]) / "vocab.txt").read_text().splitlines()
    assert len(real) < 512 and len(vocab) == 512 and vocab[:len(real)] == real
    assert vocab[len(real):] == [f"[unused{i}]" for i in range(512 - len(real))]
    assert len(load_tokenizer(padded["tokenizer"])) == 512
    manifest = json.loads(Path(padded["manifest"]).read_text())
    assert manifest["vocab_size"] == 512 and manifest["vocab_unused"] == 512 - len(real)
    assert json.loads(Path(plain["manifest"]).read_text())["vocab_unused"] == 0
    assert filecmp.cmp(plain["nlvr2_train"], padded["nlvr2_train"], shallow=False)  # only the vocabulary changes
    exact = generate_demo(tmp_path / "exact", vocab_size=len(real), **sizes)
    assert (Path(exact["tokenizer"]) / "vocab.txt").read_text().splitlines() == real
    with pytest.raises(ValueError, match=rf"has {len(real)} real tokens, more than the requested vocab_size {len(real) - 1}"):
        generate_demo(tmp_path / "small", vocab_size=len(real) - 1, **sizes)
    with pytest.raises(ValueError, match="vocab_size must be a positive int or None, got 0"):
        generate_demo(tmp_path / "zero", vocab_size=0, **sizes)


def test_vocab_padding_skips_names_already_taken_and_the_cli_option(tmp_path):
    assert pad_vocab(["[PAD]", "[unused0]", "x"], 5) == ["[PAD]", "[unused0]", "x", "[unused1]", "[unused2]"]
    assert build_vocab(["a cube"], None) == build_vocab(["a cube"])
    assert len(build_vocab(["a cube"], 300)) == 300
    paths = main(["--out", str(tmp_path / "w"), "--feat-dim", "8", "--n-train", "4", "--n-dev", "2", "--n-test", "2",
                  "--tasks", "nlvr2", "--vocab-size", "400"])
    assert len(load_tokenizer(paths["tokenizer"])) == 400
